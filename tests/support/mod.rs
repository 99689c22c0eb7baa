//! Shared helpers of the end-to-end tests: real binaries, real files, real
//! locks held by a second process, and the event stream.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod help;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use snp_certs::{CertKind, TableBuilder};

/// Checks that `/dev/kvm` opens read-write, for a `kvm_*` test: where it
/// does not, `scripts/test.sh` leaves those tests out (the runner reports
/// them skipped), so getting here without it is a failure, never a pass.
pub fn require_kvm() {
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e})"
        );
    }
}

/// A valid three-entry table whose certificate bytes are all `fill`.
pub fn table(fill: u8) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, len) in [
        (CertKind::Vcek, 1361),
        (CertKind::Ask, 1677),
        (CertKind::Ark, 1639),
    ] {
        let mut data = vec![fill; len];
        data[0] = 0x30;
        b.add(kind, data).unwrap();
    }
    b.build().unwrap()
}

/// Writes `bytes` to `path` via a temporary file renamed over it.
pub fn replace_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// The `snp-vmm` binary.
pub fn snp_vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snp-vmm"))
}

/// The KVM backend, for a `kvm_*` test: checks `/dev/kvm` first
/// ([`require_kvm`]), so a test that reaches the VMM runs on real vCPUs.
/// A test both backends can run is two tests, `kvm_NAME` on this and
/// `mock_NAME` on `"mock"`, so the runner's summary shows the KVM run as
/// skipped where `/dev/kvm` is not usable, never a mock run in its place.
pub fn kvm() -> &'static str {
    require_kvm();
    "kvm"
}

/// [`snp_vmm_attest`] on the backend `hypervisor`.
pub fn snp_vmm_attest_on(
    hypervisor: &str,
    certs: &Path,
    snp: &str,
    payload: &str,
    events: &Events,
) -> Command {
    let mut cmd = snp_vmm();
    let snp = if snp.is_empty() {
        String::new()
    } else {
        format!(",{snp}")
    };
    // The SNP backends run the SNP guest in an SNP VM; the others the
    // real-mode guest through the emulated doorbell.
    let (hv, guest, doorbell) = match hypervisor {
        "mock-snp" => ("mock-snp", "snp-attest", ""),
        "kvm-snp" => ("kvm", "snp-attest", ""),
        other => (other, "attest", ",doorbell=on"),
    };
    cmd.args(["--hypervisor", hv, "--payload"])
        .arg(format!("{guest},{payload}"))
        .arg("--snp")
        .arg(format!("certs-file={}{doorbell}{snp}", certs.display()))
        .arg("--event-monitor")
        .arg(format!("path={}", events.0.display()));
    if guest == "snp-attest" {
        cmd.args(["--platform", "sev_snp=on"]);
    }
    cmd
}

/// `snp-vmm --hypervisor kvm` running the attestation guest with `payload`
/// options against `certs` (with `snp` extra options such as
/// `certs-timeout=20`), writing events to `events.0`.
pub fn snp_vmm_attest(certs: &Path, snp: &str, payload: &str, events: &Events) -> Command {
    snp_vmm_attest_on("kvm", certs, snp, payload, events)
}

/// The path of one of this package's binaries (`snp-vmm`, `snp-remote`,
/// `snp-certs`), which Cargo builds before the tests.
pub fn workspace_bin(name: &str) -> PathBuf {
    PathBuf::from(match name {
        "snp-vmm" => env!("CARGO_BIN_EXE_snp-vmm"),
        "snp-remote" => env!("CARGO_BIN_EXE_snp-remote"),
        "snp-certs" => env!("CARGO_BIN_EXE_snp-certs"),
        other => panic!("no binary {other} in this package"),
    })
}

/// Polls `cond` until it returns `Some`, or panics after `secs` seconds.
pub fn poll<T>(secs: u64, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until a process is blocked waiting for a lock on `path` (a line
/// of `/proc/locks` with `->` on its inode), at most 20 s.
pub fn wait_for_lock_waiter(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let inode = format!(":{} ", fs::metadata(path).unwrap().ino());
    poll(20, &format!("a lock waiter on {}", path.display()), || {
        let locks = fs::read_to_string("/proc/locks").unwrap();
        locks
            .lines()
            .any(|l| l.contains("->") && l.contains(&inode))
            .then_some(())
    });
}

/// The JSON-lines event file of a `snp-vmm --event-monitor path=...`.
pub struct Events(pub PathBuf);

impl Events {
    /// All events so far.
    pub fn all(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Events named `event`.
    pub fn named(&self, event: &str) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// Waits until at least `n` events named `event` exist.
    pub fn wait_for(&self, event: &str, n: usize) -> Vec<serde_json::Value> {
        poll(30, &format!("{n} '{event}' events"), || {
            let found = self.named(event);
            (found.len() >= n).then_some(found)
        })
    }
}

/// `snp-certs lock FILE -- sh -c ...` holding the exclusive lock until
/// [`ManagementLock::release`]: the management tool as a second process.
pub struct ManagementLock {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ManagementLock {
    /// Takes the lock (waiting at most 10 s) and returns once it is held.
    pub fn take(file: &Path) -> ManagementLock {
        let mut child = Command::new(workspace_bin("snp-certs"))
            .arg("lock")
            .arg(file)
            .args([
                "--timeout",
                "10000",
                "--",
                "sh",
                "-c",
                "echo held; read line",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "held",
            "snp-certs lock did not start the command"
        );
        let stdin = child.stdin.take();
        ManagementLock { child, stdin }
    }

    /// The pid of the `snp-certs lock` process holding the lock.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the command finish, which releases the lock.
    pub fn release(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for ManagementLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (and reaped) when dropped, so a failing test
/// never leaves a VMM running.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits for the child to exit on its own, at most `secs` seconds.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        poll(secs, "the child to exit", || self.0.try_wait().unwrap())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
