//! End-to-end tests of the `snp-certs` binary's `inspect` and `probe`
//! commands against real files and real locks held by another process.
//!
//! The other process is the management tool itself: `snp-certs lock FILE
//! -- sh -c 'echo held; read line'` holds the exclusive lock while the
//! command waits for a line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod certs_support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use certs_support::wait_for_blocked_waiter;
use snp_certs::CertKind;
use snp_certs::table::TableBuilder;

fn snp_certs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snp-certs"))
}

fn sample_table() -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, len) in [
        (CertKind::Vcek, 1300),
        (CertKind::Ask, 1600),
        (CertKind::Ark, 1500),
    ] {
        let mut data = vec![0x5a; len];
        data[0] = 0x30;
        b.add(kind, data).unwrap();
    }
    b.build().unwrap()
}

fn certs_file(dir: &Path) -> PathBuf {
    let path = dir.join("certs.bin");
    fs::write(&path, sample_table()).unwrap();
    path
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// `snp-certs lock FILE -- sh -c ...`: the management tool, as a second
/// process, holding the exclusive lock until [`LockHolder::release`].
struct LockHolder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl LockHolder {
    fn start(path: &Path) -> LockHolder {
        let mut child = snp_certs()
            .arg("lock")
            .arg(path)
            .args(["--", "sh", "-c", "echo held; read line"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "held",
            "the command runs only once the lock is held"
        );
        let stdin = child.stdin.take();
        LockHolder { child, stdin }
    }

    fn release(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"done\n").unwrap();
        }
        assert!(self.child.wait().unwrap().success());
    }
}

#[test]
fn inspect_lists_entries_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    let out = snp_certs().arg("inspect").arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("3 entries"), "{text}");
    assert!(
        text.contains("63da758d-e664-4564-adc5-f4b93be8accd"),
        "{text}"
    );
    assert!(text.contains("ASK/ASVK"), "{text}");
    let out = snp_certs()
        .arg("inspect")
        .arg(&path)
        .arg("--json")
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["size"], 96 + 1300 + 1600 + 1500);
    assert_eq!(v["entries"][0]["kind"], "vcek");
    assert_eq!(v["entries"][1]["offset"], 96 + 1300);
    assert_eq!(v["entries"][2]["length"], 1500);
    assert_eq!(v["entries"][2]["encoding"], "der");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0);
}

#[test]
fn inspect_refuses_an_invalid_file_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad");
    fs::write(&path, b"garbage").unwrap();
    let out = snp_certs().arg("inspect").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("terminator"), "{err}");
}

#[test]
fn probe_delivers_and_answers_size_queries() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    let out = snp_certs()
        .arg("probe")
        .arg(&path)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["outcome"], "delivered");
    assert_eq!(v["ret"], 0);
    assert_eq!(v["bytes"], 4496);
    let out = snp_certs()
        .args(["probe", "--npages", "0", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v = json(&out);
    assert_eq!(v["outcome"], "need-pages");
    assert_eq!(v["ret"], 28);
    assert_eq!(v["npages"], 2);
}

#[test]
fn probe_says_a_missing_file_gets_the_empty_table_under_the_default_answer() {
    let dir = tempfile::tempdir().unwrap();
    let out = snp_certs()
        .arg("probe")
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    // What a VMM with the default on-error=empty answers: the empty table,
    // ret 0, no certificates (exit 6).
    assert_eq!(out.status.code(), Some(6));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("the empty table, no certificates, the on-error=empty answer (ret 0"),
        "{text}"
    );
    assert!(text.contains("does not exist"), "{text}");
    assert!(text.contains("with on-error=busy: busy (ret 11)"), "{text}");
    // Under on-error=busy the same file gets busy.
    let out = snp_certs()
        .args(["probe", "--on-error", "busy"])
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("busy, the on-error=busy answer (ret 11"),
        "{text}"
    );
    let out = snp_certs()
        .args(["probe", "--npages", "100000", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--npages"));
}

#[test]
fn probe_is_busy_while_another_process_holds_the_lock_then_served_on_release() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    let holder = LockHolder::start(&path);

    // Held past the timeout: busy, after about the timeout.
    let out = snp_certs()
        .args(["probe", "--timeout", "100", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v = json(&out);
    assert_eq!(v["outcome"], "busy");
    assert_eq!(v["reason"], "lock-timeout");
    assert_eq!(v["ret"], 11);
    let waited = v["lock_wait_us"].as_u64().unwrap();
    assert!((100_000..5_000_000).contains(&waited), "waited {waited} us");

    // Timeout 0: a single try.
    let out = snp_certs()
        .args(["probe", "--timeout", "0", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(json(&out)["lock_wait_us"], 0);

    // A long timeout: the probe blocks, then is served when the holder lets go.
    let waiter = snp_certs()
        .args(["probe", "--timeout", "10000", "--json"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_blocked_waiter(&path);
    holder.release();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["outcome"], "delivered");
    let waited = v["lock_wait_us"].as_u64().unwrap();
    assert!(waited > 0 && waited < 10_000_000, "waited {waited} us");
}

#[test]
fn probe_exit_codes_3_for_a_small_buffer_and_4_for_a_host_side_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    // A buffer offered but too small: 3, with the pages needed.
    let out = snp_certs()
        .args(["probe", "--npages", "1", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v = json(&out);
    assert_eq!(v["outcome"], "need-pages");
    assert_eq!(v["reason"], "buffer-too-small");
    assert_eq!(v["npages"], 2);
    // A table Linux guests cannot receive: a host-side fault, never a
    // failure, even with a buffer large enough for it: the empty table
    // under on-error=empty (6), busy under on-error=busy (4).
    let big = dir.path().join("big.bin");
    let mut b = TableBuilder::new();
    let mut data = vec![0x5b; 17 * 1024];
    data[0] = 0x30;
    b.add(CertKind::Vcek, data).unwrap();
    fs::write(&big, b.build().unwrap()).unwrap();
    let out = snp_certs()
        .args(["probe", "--npages", "8", "--json"])
        .arg(&big)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let v = json(&out);
    assert_eq!(v["outcome"], "delivered");
    assert_eq!(v["ret"], 0);
    assert_eq!(v["bytes"], 24);
    assert_eq!(v["fallback"], true);
    assert_eq!(v["fault"], "persistent");
    assert_eq!(v["reason"], "exceeds-guest-limit");
    assert_eq!(v["answers"]["busy"]["ret"], 11);
    let out = snp_certs()
        .args(["probe", "--npages", "8", "--json", "--on-error", "busy"])
        .arg(&big)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(json(&out)["outcome"], "busy");
    // A garbage file, and a file too large to be a table: the same.
    let bad = dir.path().join("bad.bin");
    fs::write(&bad, b"garbage").unwrap();
    let huge = dir.path().join("huge.bin");
    fs::write(&huge, vec![0u8; 2 << 20]).unwrap();
    for (file, reason) in [(&bad, "file-invalid"), (&huge, "file-too-large")] {
        let out = snp_certs()
            .args(["probe", "--json"])
            .arg(file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(6));
        let v = json(&out);
        assert_eq!(v["reason"], reason);
        assert_eq!(v["answers"]["empty"]["certificates"], false);
        assert_eq!(v["answers"]["empty"]["ret"], 0);
    }
}
