//! Helpers shared by the benchmarks: clocks, per-thread CPU time, order
//! statistics, environment knobs, the quick mode, table printing, and
//! [`record`], the one way every bench writes its figures into
//! `target/bench/results.json` (schema in docs/performance.md), and the raw
//! system-call floor ([`floor`]). Each bench uses a subset.

#![allow(dead_code)]

pub mod floor;

use std::time::Duration;

/// `CLOCK_MONOTONIC` in nanoseconds. The clock is system-wide, so values
/// taken in two processes can be subtracted.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time (user + system) consumed so far by the calling thread, in
/// nanoseconds: `CLOCK_THREAD_CPUTIME_ID`, the scheduler's exact runtime
/// (the same accounting `getrusage(RUSAGE_THREAD)` reports, without its
/// microsecond rounding).
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let ret = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(ret, 0, "clock_gettime({clock}) failed");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Voluntary context switches of the calling thread so far
/// (`getrusage(RUSAGE_THREAD).ru_nvcsw`): each one is the thread going to
/// sleep, so a polling loop shows one per poll.
pub fn thread_voluntary_switches() -> u64 {
    // SAFETY: all-zero is a valid `rusage`; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable for the duration of the call.
    let ret = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(ret, 0, "getrusage(RUSAGE_THREAD) failed");
    usage.ru_nvcsw as u64
}

/// A positive integer from the environment, or `default` when unset.
/// Exits with a message when it is set but not a valid number.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("{name}={text:?} is not a non-negative integer ({e})");
                std::process::exit(2);
            }
        },
    }
}

/// Whether this is a real benchmark run: `cargo bench` passes `--bench`
/// to a `harness = false` target, `cargo test --benches` does not. Under
/// `cargo test` the benches run as smoke tests with tiny samples.
pub fn is_bench_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Quick mode: `BENCH_QUICK=1` (set by `scripts/bench.sh --quick`) or a
/// smoke run under `cargo test`. Every bench then takes a few seconds,
/// enough to show it still works, not to measure.
pub fn is_quick() -> bool {
    !is_bench_run() || std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// `full` under `cargo bench`, `smoke` in quick mode (see [`is_quick`]).
pub fn by_mode(full: usize, smoke: usize) -> usize {
    if is_quick() { smoke } else { full }
}

/// Order statistics of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile `p` (0..=100) of an ascending sample.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `values` (any order).
pub fn summarize(values: &[f64]) -> Summary {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = if sorted.is_empty() {
        f64::NAN
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    Summary {
        n: sorted.len(),
        min: sorted.first().copied().unwrap_or(f64::NAN),
        median: percentile(&sorted, 50.0),
        p90: percentile(&sorted, 90.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or(f64::NAN),
        mean,
    }
}

/// Prints a table with a header row and right-aligned columns (the first
/// column left-aligned), as GitHub-flavoured Markdown so it can be pasted
/// into docs as is.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::from("|");
        for (i, width) in widths.iter().enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            if i == 0 {
                out.push_str(&format!(" {cell:<width$} |"));
            } else {
                out.push_str(&format!(" {cell:>width$} |"));
            }
        }
        out
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    println!("{}", line(&header));
    let mut rule = String::from("|");
    for (i, width) in widths.iter().enumerate() {
        if i == 0 {
            rule.push_str(&format!(" {} |", "-".repeat(*width)));
        } else {
            rule.push_str(&format!(" {}: |", "-".repeat(width.saturating_sub(1))));
        }
    }
    println!("{rule}");
    for row in rows {
        println!("{}", line(row));
    }
}

/// Formats with `digits` decimals.
pub fn f(value: f64, digits: usize) -> String {
    format!("{value:.digits$}")
}

/// Formats a ratio as `12.3x`.
pub fn ratio(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}x")
    } else if value >= 10.0 {
        format!("{value:.1}x")
    } else {
        format!("{value:.2}x")
    }
}

/// Prints the context every bench starts with: date, CPUs, kernel.
pub fn print_context(bench: &str) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    println!("# {bench}: {cpus} CPUs, kernel {kernel}, unix time {now}");
    if is_bench_run() && is_quick() {
        println!("# quick mode (BENCH_QUICK=1): small samples, figures indicative only");
    }
    if !is_bench_run() {
        println!("# smoke run (not started by `cargo bench`): tiny samples, figures meaningless");
    }
}

/// A small xorshift generator for jitter; not for anything that matters.
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the monotonic clock.
    pub fn new() -> Jitter {
        Jitter(mono_ns() | 1)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % bound.max(1)
    }
}

// ------------------------------------------------------------ results.json

/// Where [`record`] writes: `BENCH_RESULTS`, or `target/bench/results.json`
/// under the workspace.
pub fn results_path() -> std::path::PathBuf {
    match std::env::var_os("BENCH_RESULTS") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/results.json"),
    }
}

/// A figure another one is compared with: its name and its median.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub figure: String,
    pub p50: f64,
}

/// A reference or floor figure named `figure` with median `p50`.
pub fn baseline(figure: &str, p50: f64) -> Option<Baseline> {
    Some(Baseline {
        figure: figure.to_owned(),
        p50,
    })
}

/// One figure for results.json.
#[derive(Debug, Clone)]
pub struct Figure<'a> {
    pub bench: &'a str,
    pub figure: &'a str,
    pub params: serde_json::Value,
    pub unit: &'a str,
    pub values: Summary,
    pub reference: Option<Baseline>,
    pub floor: Option<Baseline>,
    /// Raw samples for distribution plots (kept only up to 5,000).
    pub samples: Option<&'a [f64]>,
}

impl<'a> Figure<'a> {
    /// A figure without reference, floor or samples.
    pub fn new(
        bench: &'a str,
        figure: &'a str,
        params: serde_json::Value,
        unit: &'a str,
        values: Summary,
    ) -> Figure<'a> {
        Figure {
            bench,
            figure,
            params,
            unit,
            values,
            reference: None,
            floor: None,
            samples: None,
        }
    }

    /// With this reference.
    pub fn reference(mut self, r: Option<Baseline>) -> Self {
        self.reference = r;
        self
    }

    /// With this floor.
    pub fn floor(mut self, f: Option<Baseline>) -> Self {
        self.floor = f;
        self
    }

    /// With the raw samples.
    pub fn samples(mut self, s: &'a [f64]) -> Self {
        self.samples = Some(s);
        self
    }
}

fn num(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The `machine` object: CPUs, kernel, date (UTC), git commit, rustc.
pub fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    serde_json::json!({
        "cpus": cpus,
        "kernel": kernel,
        "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "git_commit": command_line("git", &["rev-parse", "--short=12", "HEAD"]),
        "rustc": command_line(&rustc, &["--version"]),
        "quick": is_quick(),
    })
}

/// Appends `fig` to results.json (creating it with schema 1 and the
/// machine when it is missing or unreadable). Only under `cargo bench`:
/// smoke runs under `cargo test` write nothing. A figure with the same
/// bench, figure and params replaces the earlier one.
pub fn record(fig: Figure<'_>) {
    if !is_bench_run() {
        return;
    }
    let path = results_path();
    let mut doc: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|d: &serde_json::Value| d["schema"] == 1)
        .unwrap_or_else(|| serde_json::json!({"schema": 1, "machine": machine(), "benches": []}));
    let v = &fig.values;
    let base = |b: &Option<Baseline>| match b {
        Some(b) => serde_json::json!({"figure": b.figure, "p50": num(b.p50)}),
        None => serde_json::Value::Null,
    };
    let ratio = |b: &Option<Baseline>| match b {
        Some(b) if b.p50 > 0.0 => num(v.median / b.p50),
        _ => serde_json::Value::Null,
    };
    let mut entry = serde_json::json!({
        "bench": fig.bench,
        "figure": fig.figure,
        "params": fig.params,
        "unit": fig.unit,
        "values": {"p50": num(v.median), "p90": num(v.p90), "p99": num(v.p99),
                   "max": num(v.max), "min": num(v.min), "mean": num(v.mean), "n": v.n},
        "reference": base(&fig.reference),
        "floor": base(&fig.floor),
        "ratio_to_reference": ratio(&fig.reference),
        "ratio_to_floor": ratio(&fig.floor),
    });
    if let Some(s) = fig.samples {
        let kept: Vec<serde_json::Value> = s.iter().take(5000).map(|x| num(*x)).collect();
        entry["samples"] = serde_json::Value::Array(kept);
    }
    let benches = doc["benches"].as_array_mut().expect("benches array");
    benches.retain(|b| {
        !(b["bench"] == entry["bench"]
            && b["figure"] == entry["figure"]
            && b["params"] == entry["params"])
    });
    benches.push(entry);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("results dir");
    }
    let text = serde_json::to_vec_pretty(&doc).expect("encode results");
    std::fs::write(&path, text).expect("write results.json");
}

// ------------------------------------------------------------ snp-vmm

/// A running `snp-vmm` (killed and reaped on drop) and its API socket.
pub struct VmmProcess {
    pub child: std::process::Child,
    pub socket: std::path::PathBuf,
}

impl VmmProcess {
    /// Starts `snp-vmm --hypervisor mock --api-socket DIR/api.sock` with
    /// `extra` arguments and waits (up to 10 s) until it answers
    /// `GET vmm.ping`.
    pub fn start(dir: &std::path::Path, extra: &[&str]) -> VmmProcess {
        let socket = dir.join("api.sock");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_snp-vmm"))
            .args(["--hypervisor", "mock", "--api-socket"])
            .arg(&socket)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start snp-vmm");
        let client = api_server::ApiClient::new(&socket).expect("client");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while client.ping().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "snp-vmm never answered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        VmmProcess { child, socket }
    }

    /// `/proc/PID/status` fields in kB or counts: VmRSS, VmHWM, Threads;
    /// and the number of open descriptors.
    pub fn status(&self) -> ProcStatus {
        proc_status(self.child.id())
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `/proc/PID/status` and `/proc/PID/fd` say about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStatus {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

/// Reads [`ProcStatus`] of `pid`.
pub fn proc_status(pid: u32) -> ProcStatus {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    ProcStatus {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
    }
}

/// A minimal HTTP/1.1 responder on a Unix socket, one thread, one
/// request per connection, a fixed `{}` answer: the floor for an API
/// round trip (no routing, no JSON, no VMM). Runs until the process ends.
pub fn start_floor_responder(socket: &std::path::Path) {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind floor socket");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            // Read the head, then Content-Length bytes of body.
            let mut need: Option<usize> = None;
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if need.is_none()
                    && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    need = Some(end + 4 + len);
                }
                if need.is_some_and(|n| buf.len() >= n) {
                    break;
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            );
        }
    });
}
