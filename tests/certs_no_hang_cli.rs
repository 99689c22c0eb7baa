//! No input can hang a tool, and a stop request always ends one with the
//! lock released: FIFOs named as inputs are refused at once (before any
//! lock is taken), and `SIGTERM` ends `snp-certs lock` while it waits for
//! the lock (even when its parent left `SIGTERM` ignored) or runs the
//! command.
//!
//! Every wait is a poll with a deadline on something observable (the
//! process's exit, `/proc/locks`, a line the command prints).

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "certs_support/mod.rs"]
mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use snp_certs::lock::{self, LockKind};

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

fn certs(dir: &Path) -> PathBuf {
    let path = dir.join("certs.bin");
    fs::write(&path, chain_table("milan")).unwrap();
    path
}

/// Waits (with a deadline) for the child to exit; kills it and fails if it
/// does not.
fn wait_exit(child: &mut Child, secs: u64) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the tool hung for {secs} s");
        }
        std::thread::yield_now();
    }
}

/// Runs `command` to completion within a deadline; returns its status and
/// stderr.
fn run_bounded(mut command: Command) -> (ExitStatus, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, 20);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn lock_update_from_a_fifo_is_refused_before_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let fifo = dir.path().join("new.fifo");
    mkfifo(&fifo);
    let marker = dir.path().join("ran");
    let mut command = snp_certs();
    command
        .arg("lock")
        .arg(&path)
        .arg("--update-from")
        .arg(&fifo)
        .args(["--", "touch"])
        .arg(&marker);
    let (status, err) = run_bounded(command);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    assert!(err.contains("the command was not run"), "{err}");
    assert!(!marker.exists(), "the command ran");
    wait_for_lock_state(&path, None);
    assert_eq!(fs::read(&path).unwrap(), chain_table("milan"));
}

#[test]
fn update_from_a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let fifo = dir.path().join("new.fifo");
    mkfifo(&fifo);
    let mut command = snp_certs();
    command.arg("update").arg(&path).arg("--from").arg(&fifo);
    let (status, err) = run_bounded(command);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), chain_table("milan"));
}

#[test]
fn build_with_a_fifo_input_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ark.fifo");
    mkfifo(&fifo);
    let out = dir.path().join("certs.bin");
    let mut command = snp_certs();
    command
        .arg("build")
        .arg("--ark")
        .arg(&fifo)
        .arg("--ask")
        .arg(fixture("amd/milan/ask.pem"))
        .arg("--vcek")
        .arg(fixture("amd/milan/vcek.der"))
        .args(["--at", AT, "-o"])
        .arg(&out);
    let (status, err) = run_bounded(command);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{} is a FIFO, not a regular file", fifo.display())),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn sigterm_ends_a_lock_waiting_for_readers_even_if_the_parent_ignored_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let reader = fs::File::open(&path).unwrap();
    lock::lock(&reader, LockKind::Shared, Duration::ZERO).unwrap();
    let marker = dir.path().join("ran");
    let mut command = snp_certs();
    command
        .arg("lock")
        .arg(&path)
        .args(["--timeout", "60000", "--", "touch"])
        .arg(&marker)
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and
    // only calls signal(), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    wait_for_blocked_waiter(&path);
    kill(child.id(), libc::SIGTERM);
    let status = wait_exit(&mut child, 20);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    assert!(!marker.exists(), "the command ran");
    // Nothing of the writer is left: no intent byte, no lock.
    lock::unlock(&reader).unwrap();
    wait_for_lock_state(&path, None);
    let other = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    assert!(lock::try_lock(&other, LockKind::Exclusive).unwrap());
}

#[test]
fn sigterm_while_the_command_runs_skips_the_update_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let new = dir.path().join("new.bin");
    fs::write(&new, chain_table("turin")).unwrap();
    let mut child = snp_certs()
        .arg("lock")
        .arg(&path)
        .arg("--update-from")
        .arg(&new)
        .args(["--at", AT, "--", "sh", "-c", "echo running; read line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut out, "running");
    wait_for_lock_state(&path, Some("WRITE"));
    kill(child.id(), libc::SIGTERM);
    let status = wait_exit(&mut child, 20);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("was not updated"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), chain_table("milan"));
    wait_for_lock_state(&path, None);
}

#[test]
fn snp_vmm_refuses_an_event_fifo_without_a_reader_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.fifo");
    mkfifo(&fifo);
    let mut command = Command::new(env!("CARGO_BIN_EXE_snp-vmm"));
    command
        .arg("--api-socket")
        .arg(dir.path().join("api.sock"))
        .arg("--event-monitor")
        .arg(format!("path={}", fifo.display()));
    let (status, err) = run_bounded(command);
    assert!(!status.success(), "{err}");
    assert!(err.contains("has no reader"), "{err}");
}
