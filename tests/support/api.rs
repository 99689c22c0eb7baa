//! Helpers of the API end-to-end tests: an `snp-vmm --api-socket` process
//! with its event file, `snp-remote` and `curl` runs, and an event reader
//! that tails the file instead of re-reading it on every poll.

use std::cell::RefCell;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use api_server::client::{ApiClient, ApiResponse};
use serde_json::Value;

use super::{ChildGuard, poll, snp_vmm, workspace_bin};

/// How long any one wait of these tests may take before it fails.
pub const DEADLINE_SECS: u64 = 20;

/// The JSON-lines event file, read incrementally: each refresh reads only
/// what was appended and parses complete lines. Every line must be a
/// well-formed event (`timestamp` with `secs` and `nanos`, `source`,
/// `event`, `properties` object), or the refresh panics.
pub struct EventLog {
    path: PathBuf,
    state: RefCell<Tail>,
}

#[derive(Default)]
struct Tail {
    offset: u64,
    partial: Vec<u8>,
    events: Vec<Value>,
}

fn check_event(line: &str) -> Value {
    let event: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad event line {line:?}: {e}"));
    let ts = &event["timestamp"];
    assert!(ts["secs"].is_u64(), "timestamp.secs in {line}");
    assert!(
        ts["nanos"].as_u64().is_some_and(|n| n < 1_000_000_000),
        "timestamp.nanos in {line}"
    );
    assert!(event["source"].is_string(), "source in {line}");
    assert!(event["event"].is_string(), "event in {line}");
    assert!(event["properties"].is_object(), "properties in {line}");
    event
}

impl EventLog {
    /// A reader of `path` (which may not exist yet).
    pub fn new(path: PathBuf) -> EventLog {
        EventLog {
            path,
            state: RefCell::new(Tail::default()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn refresh(&self) {
        let mut tail = self.state.borrow_mut();
        let Ok(mut file) = fs::File::open(&self.path) else {
            return;
        };
        file.seek(SeekFrom::Start(tail.offset)).unwrap();
        let mut new = Vec::new();
        file.read_to_end(&mut new).unwrap();
        tail.offset += new.len() as u64;
        tail.partial.extend_from_slice(&new);
        let Some(end) = tail.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = tail.partial.drain(..=end).collect();
        let text = String::from_utf8(complete).expect("events are UTF-8");
        for line in text.lines() {
            let event = check_event(line);
            tail.events.push(event);
        }
    }

    /// Runs `f` on every event written so far, in file order.
    pub fn with<T>(&self, f: impl FnOnce(&[Value]) -> T) -> T {
        self.refresh();
        f(&self.state.borrow().events)
    }

    /// Events so far.
    pub fn len(&self) -> usize {
        self.with(<[Value]>::len)
    }

    /// Events named `event`, from index `from` of the whole stream on.
    pub fn named_from(&self, from: usize, event: &str) -> Vec<Value> {
        self.with(|all| {
            all.iter()
                .skip(from)
                .filter(|e| e["event"] == event)
                .cloned()
                .collect()
        })
    }

    /// Events named `event`.
    pub fn named(&self, event: &str) -> Vec<Value> {
        self.named_from(0, event)
    }

    /// Polls until `f` on the events returns `Some`, at most
    /// [`DEADLINE_SECS`].
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut(&[Value]) -> Option<T>) -> T {
        poll(DEADLINE_SECS, what, || self.with(&mut f))
    }

    /// Waits until `n` events named `event` exist after index `from`, and
    /// returns them.
    pub fn wait_named_from(&self, from: usize, event: &str, n: usize) -> Vec<Value> {
        self.wait(&format!("{n} '{event}' events after #{from}"), |all| {
            let found: Vec<Value> = all
                .iter()
                .skip(from)
                .filter(|e| e["event"] == event)
                .cloned()
                .collect();
            (found.len() >= n).then_some(found)
        })
    }
}

/// What a finished `snp-remote` or `curl` run printed.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `snp-remote --api-socket SOCKET ARGS...`, run in `cwd` if given.
pub fn snp_remote(socket: &Path, cwd: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(workspace_bin("snp-remote"));
    cmd.arg("--api-socket").arg(socket).args(args);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::null()).output().unwrap().into()
}

/// An answer read by `curl -D headers -o body`.
#[derive(Debug)]
pub struct CurlAnswer {
    /// HTTP status of the final response.
    pub status: u16,
    /// The final response's headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl CurlAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// `curl --unix-socket SOCKET ARGS... http://localhost/api/v1/ENDPOINT`,
/// with a 10 s limit; `dir` holds the header and body files.
pub fn curl(socket: &Path, dir: &Path, endpoint: &str, args: &[&str]) -> CurlAnswer {
    let headers = dir.join("curl.headers");
    let body = dir.join("curl.body");
    let run: Run = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(socket)
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(format!("http://localhost/api/v1/{endpoint}"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl, which scripts/setup.sh installs: {e}"))
        .into();
    assert_eq!(run.code, 0, "curl failed: {run:?}");
    let header_text = fs::read_to_string(&headers).unwrap();
    // With `Expect: 100-continue` there are several header blocks: the
    // last one is the answer.
    let last = header_text
        .split("\r\n\r\n")
        .filter(|block| block.starts_with("HTTP/"))
        .last()
        .unwrap_or_default();
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    CurlAnswer {
        status: run.stdout.trim().parse().unwrap(),
        headers,
        body: fs::read(&body).unwrap(),
    }
}

/// A running `snp-vmm --api-socket DIR/api.sock --event-monitor
/// path=DIR/events.jsonl`, its stdout and stderr in DIR (a pipe nobody
/// reads could fill and stall it). Killed when dropped.
pub struct ApiVmm {
    /// The API socket.
    pub socket: PathBuf,
    /// The event file.
    pub events: EventLog,
    /// The process.
    pub child: ChildGuard,
    /// `kvm`, `mock` or `mock-snp`.
    pub hypervisor: &'static str,
    dir: PathBuf,
}

impl ApiVmm {
    /// Starts `snp-vmm` on `hypervisor` with the VM options `vm_args`
    /// (none: no VM at start) and waits until `snp-remote ping` succeeds.
    pub fn start(dir: &Path, hypervisor: &'static str, vm_args: &[String]) -> ApiVmm {
        let stdout = fs::File::create(dir.join("vmm.stdout")).unwrap();
        ApiVmm::start_with_stdout(dir, hypervisor, vm_args, stdout.into())
    }

    /// [`ApiVmm::start`] with the process's stdout going to `stdout`.
    pub fn start_with_stdout(
        dir: &Path,
        hypervisor: &'static str,
        vm_args: &[String],
        stdout: Stdio,
    ) -> ApiVmm {
        let socket = dir.join("api.sock");
        let events = dir.join("events.jsonl");
        let child = snp_vmm()
            .arg("--api-socket")
            .arg(&socket)
            .arg("--event-monitor")
            .arg(format!("path={}", events.display()))
            .args(["--hypervisor", hypervisor])
            .args(vm_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(fs::File::create(dir.join("vmm.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut vmm = ApiVmm {
            socket,
            events: EventLog::new(events),
            child: ChildGuard(child),
            hypervisor,
            dir: dir.to_owned(),
        };
        let started = Instant::now();
        let ping = poll(DEADLINE_SECS, "snp-remote ping to succeed", || {
            if let Some(status) = vmm.child.0.try_wait().unwrap() {
                panic!("snp-vmm exited with {status}: {}", vmm.stderr());
            }
            let run = snp_remote(&vmm.socket, None, &["--json", "ping"]);
            (run.code == 0).then_some(run.stdout)
        });
        let ping: Value = serde_json::from_str(&ping).unwrap();
        assert_eq!(ping["pid"], vmm.child.0.id(), "{ping}");
        // The mock backend simulating an SNP host is still the mock.
        let backend = hypervisor.strip_suffix("-snp").unwrap_or(hypervisor);
        assert_eq!(ping["hypervisor"], backend, "{ping}");
        // The API answers before the command line's VM exists (its start-up
        // wait for the certs file can be interrupted over the API too): wait
        // for the VM itself when one was asked for.
        if !vm_args.is_empty() {
            poll(DEADLINE_SECS, "the command line's VM to exist", || {
                if let Some(status) = vmm.child.0.try_wait().unwrap() {
                    panic!("snp-vmm exited with {status}: {}", vmm.stderr());
                }
                (snp_remote(&vmm.socket, None, &["--json", "info"]).code == 0).then_some(())
            });
        }
        eprintln!(
            "snp-vmm on {hypervisor} answered ping after {:?}",
            started.elapsed()
        );
        vmm
    }

    /// What snp-vmm wrote on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("vmm.stderr")).unwrap_or_default()
    }

    /// `snp-remote --api-socket SOCKET ARGS...`.
    pub fn remote(&self, args: &[&str]) -> Run {
        snp_remote(&self.socket, None, args)
    }

    /// `snp-remote ...` run in `cwd`.
    pub fn remote_in(&self, cwd: &Path, args: &[&str]) -> Run {
        snp_remote(&self.socket, Some(cwd), args)
    }

    /// `snp-remote --json ARGS...`, which must succeed; its JSON answer.
    pub fn remote_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = self.remote(&all);
        assert_eq!(run.code, 0, "snp-remote {args:?}: {run:?}");
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
    }

    /// A client with a 10 s limit per call.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.socket)
            .unwrap()
            .with_timeout(Duration::from_secs(10))
    }

    /// Sends raw bytes: `METHOD /api/v1/ENDPOINT` with `body`.
    pub fn raw(&self, method: &str, endpoint: &str, body: Option<&[u8]>) -> ApiResponse {
        self.client()
            .raw_request(
                method,
                &format!("/api/v1/{endpoint}"),
                body.map(<[u8]>::to_vec),
            )
            .unwrap()
    }

    /// `curl` against this VMM.
    pub fn curl(&self, endpoint: &str, args: &[&str]) -> CurlAnswer {
        curl(&self.socket, &self.dir, endpoint, args)
    }
}

/// The `--snp` and `--payload` options of a guest that keeps asking for
/// certificates every 5 ms, served `certs` with `snp_extra` added
/// (`,certs-timeout=0`, ...).
pub fn looping_guest(certs: &Path, snp_extra: &str) -> Vec<String> {
    vec![
        "--snp".into(),
        format!("certs-file={},doorbell=on{snp_extra}", certs.display()),
        "--payload".into(),
        "attest,requests=100000,interval-ms=5".into(),
    ]
}

/// The longest any one wait may take.
pub const DEADLINE: u64 = DEADLINE_SECS;

/// The checksum a guest reports for `table`.
pub fn checksum(table: &[u8]) -> u64 {
    u64::from(test_guests::attest::expected_report_for(table).unwrap().2)
}

/// Writes `table(fill)` to `dir/name`; returns the path and the bytes.
pub fn certs_file(dir: &Path, name: &str, fill: u8) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let bytes = super::table(fill);
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

pub fn props(e: &Value) -> &Value {
    &e["properties"]
}

pub fn str_of(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Index of the first event matching `f`.
pub fn position(all: &[Value], f: impl Fn(&Value) -> bool) -> Option<usize> {
    all.iter().position(f)
}
