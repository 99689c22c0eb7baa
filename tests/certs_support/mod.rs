//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Output};
use std::time::{Duration, Instant};

use snp_certs::CertKind;
use snp_certs::table::TableBuilder;
use snp_certs_verify::x509::{DocumentKind, to_der};

/// 2027-06-01T00:00:00Z: every fixture certificate is valid then.
pub const AT: &str = "1811808000";

pub fn snp_certs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snp-certs"))
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("snp-certs-verify/tests/fixtures")
        .join(rel)
}

/// `snp-certs build` of the synthetic VLEK chain (ARK, ASVK, VLEK) into
/// `out`, validity checked at [`AT`]; the caller adds `--crl`,
/// `--trust-root` and the like.
pub fn build_synthetic_vlek(out: &Path) -> Command {
    let mut c = snp_certs();
    c.arg("build")
        .arg("--ark")
        .arg(fixture("synthetic/ark.pem"))
        .arg("--asvk")
        .arg(fixture("synthetic/asvk.pem"))
        .arg("--vlek")
        .arg(fixture("synthetic/vlek.der"))
        .args(["--at", AT, "-o"])
        .arg(out);
    c
}

pub fn der(rel: &str) -> Vec<u8> {
    let kind = if rel.contains("crl") {
        DocumentKind::Crl
    } else {
        DocumentKind::Certificate
    };
    to_der(&fs::read(fixture(rel)).unwrap(), kind).unwrap()
}

/// A table with a product line's real chain, as `build` writes it.
pub fn chain_table(product: &str) -> Vec<u8> {
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, der(&format!("amd/{product}/vcek.der")))
        .unwrap();
    b.add(CertKind::Ask, der(&format!("amd/{product}/ask.pem")))
        .unwrap();
    b.add(CertKind::Ark, der(&format!("amd/{product}/ark.pem")))
        .unwrap();
    b.build().unwrap()
}

/// A table of fake certificates (valid table, no valid chain).
pub fn fake_table(fill: u8, len: usize) -> Vec<u8> {
    let mut data = vec![fill; len];
    data[0] = 0x30;
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, data).unwrap();
    b.build().unwrap()
}

pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Reads lines until one contains `marker`; returns that line.
pub fn wait_for_line(out: &mut BufReader<ChildStdout>, marker: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child ended before printing {marker:?}"
        );
        if line.contains(marker) {
            return line.trim_end().to_owned();
        }
    }
}

/// Polls `/proc/locks` (with a deadline) until `path`'s inode has a lock
/// of `kind` ("READ" or "WRITE") held, or none at all if `kind` is None.
pub fn wait_for_lock_state(path: &Path, kind: Option<&str>) {
    let ino = fs::metadata(path).unwrap().ino();
    let needle = format!(":{ino} ");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let locks = fs::read_to_string("/proc/locks").unwrap();
        let held: Vec<&str> = locks
            .lines()
            .filter(|l| l.contains(&needle) && !l.contains("->"))
            .collect();
        let ok = match kind {
            Some(kind) => held.iter().any(|l| l.contains(kind)),
            None => held.is_empty(),
        };
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lock state on {} never became {kind:?}: {held:?}",
            path.display()
        );
        std::thread::yield_now();
    }
}

/// Polls `/proc/locks` (with a 20 s deadline) until a process is blocked
/// waiting for a lock on `path` (a line with `->` on its inode).
pub fn wait_for_blocked_waiter(path: &Path) {
    let needle = format!(":{} ", fs::metadata(path).unwrap().ino());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("->") && l.contains(&needle))
    {
        assert!(
            Instant::now() < deadline,
            "no waiter blocked on {} appeared",
            path.display()
        );
        std::thread::yield_now();
    }
}

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill() has no memory-safety preconditions.
    let ret = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(ret, 0, "kill({pid}, {signal}) failed");
}

/// Whether process `pid` still exists (and is not a zombie we own).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A pipe's write end whose read end is already closed, as stdout of
/// `cmd | head -0`.
pub fn closed_pipe() -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here only.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    writer
}
