//! `snp-certs update` (a process of its own) against readers in this
//! process, which read the file under the shared lock as a VMM does,
//! through `CertsReader`, each with its own open file description.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "certs_support/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use snp_certs::CertsReader;

/// A VMM's side of the protocol, on a thread of this process (its own
/// open file descriptions, so its locks conflict with the `snp-certs`
/// process's as another process's would): reads `path` under the shared
/// lock in a tight loop and classifies each read as table `a`, table `b`
/// or anything else, until `stop` is set. Returns the counts and errors.
fn reader(
    path: &Path,
    a: Vec<u8>,
    b: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<[u64; 4]> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut reader = CertsReader::new();
        let mut counts = [0u64; 4];
        while !stop.load(Ordering::Acquire) {
            let slot = match reader.lock_and_read(&path, Duration::from_secs(10)) {
                Ok(locked) if locked.bytes == a.as_slice() => 0,
                Ok(locked) if locked.bytes == b.as_slice() => 1,
                Ok(_) => 2,
                Err(e) => {
                    eprintln!("reader error: {e}");
                    3
                }
            };
            counts[slot] += 1;
        }
        counts
    })
}

#[test]
fn concurrent_readers_see_the_old_or_the_new_table_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    // Two real chains of different sizes and content.
    let a = chain_table("milan");
    let b = chain_table("turin");
    assert_ne!(a.len(), b.len());
    fs::write(path.with_extension("a"), &a).unwrap();
    fs::write(path.with_extension("b"), &b).unwrap();
    fs::write(&path, &a).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = reader(&path, a.clone(), b.clone(), Arc::clone(&stop));
    let rounds = 30;
    for round in 0..rounds {
        let from = path.with_extension(if round % 2 == 0 { "b" } else { "a" });
        let out = snp_certs()
            .args(["update", "--at", AT, "--timeout", "10000"])
            .arg(&path)
            .arg("--from")
            .arg(&from)
            .output()
            .unwrap();
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert!(stdout(&out).contains("updated"), "{}", stdout(&out));
    }
    stop.store(true, Ordering::Release);
    let [seen_a, seen_b, mixed, errors] = reader.join().unwrap();
    eprintln!("reads: {seen_a} old, {seen_b} new, {mixed} mixed, {errors} errors");
    assert_eq!((mixed, errors), (0, 0));
    assert!(seen_a > 0 && seen_b > 0, "{seen_a} {seen_b}");
    // The last update installed `a` (an even number of rounds).
    assert_eq!(fs::read(&path).unwrap(), a);
}

#[test]
fn update_waits_for_a_reader_and_times_out_with_75() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, chain_table("milan")).unwrap();
    let new = dir.path().join("new.bin");
    fs::write(&new, chain_table("turin")).unwrap();
    // A VMM holding its lease (a description of its own).
    let mut vmm = CertsReader::new();
    let holder = vmm.lock_and_read(&path, Duration::ZERO).unwrap().lease;
    let start = Instant::now();
    let out = snp_certs()
        .args(["update", "--at", AT, "--timeout", "200"])
        .arg(&path)
        .arg("--from")
        .arg(&new)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(
        stderr(&out).contains("nothing was written"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&path).unwrap(), chain_table("milan"));

    // With a long timeout, the update goes through once the reader lets go.
    let waiter = snp_certs()
        .args(["update", "--at", AT, "--timeout", "20000"])
        .arg(&path)
        .arg("--from")
        .arg(&new)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the writer is blocked on the lock, then release the reader.
    wait_for_blocked_waiter(&path);
    drop(holder);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(fs::read(&path).unwrap(), chain_table("turin"));
}

#[test]
fn update_checks_the_new_table_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, chain_table("milan")).unwrap();
    let new = dir.path().join("new.bin");
    fs::write(&new, fake_table(7, 500)).unwrap();
    let run = |extra: &[&str]| {
        snp_certs()
            .arg("update")
            .arg(&path)
            .arg("--from")
            .arg(&new)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not installing"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), chain_table("milan"));
    let out = run(&["--allow-unverified"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING"));
    assert_eq!(fs::read(&path).unwrap(), fake_table(7, 500));

    fs::write(&new, b"garbage").unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a valid certificate table"),
        "{}",
        stderr(&out)
    );

    // A target that is not a table is refused unless --force.
    fs::write(&new, chain_table("turin")).unwrap();
    fs::write(&path, b"#!/bin/sh\n").unwrap();
    let out = run(&["--at", AT]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--at", AT, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_failed_write_restores_the_previous_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let old = fake_table(1, 1000);
    fs::write(&path, &old).unwrap();
    let new = dir.path().join("new.bin");
    fs::write(&new, fake_table(2, 200_000)).unwrap();
    // A file size limit of 8 blocks (4 or 8 KiB, depending on the shell's
    // block size): the 200 KB write fails with EFBIG half-way, the 1 KB
    // restore fits. SIGXFSZ is ignored so the write returns an error.
    let script = format!(
        "trap '' XFSZ; ulimit -f 8; exec '{}' update '{}' --from '{}' --allow-unverified --allow-large",
        env!("CARGO_BIN_EXE_snp-certs"),
        path.display(),
        new.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("previous content was restored"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&path).unwrap(), old);
    // Readers were never given the torn file, and can read now.
    let out = snp_certs()
        .args(["probe", "--timeout", "0"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}
