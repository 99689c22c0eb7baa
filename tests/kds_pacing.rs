//! The host-wide request pacing as `snp-certs fetch` lives with it: a turn
//! that does not fit `--max-wait` ends the fetch at once (69), a wait is
//! announced before it starts and taken without the pacing lock, and a
//! pacing file that went bad is repaired, not obeyed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kds_support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kds_support::*;

/// The pacing file the fetches against `kds` use under `cache`.
fn pacing_file(kds: &FakeKds, cache: &Path) -> PathBuf {
    let port = kds.url().rsplit(':').next().unwrap().to_owned();
    cache.join(format!("pacing/127.0.0.1_{port}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes the next allowed request time into the pacing file.
fn set_turn(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn a_turn_beyond_max_wait_ends_the_fetch_at_once_with_69() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let pacing = pacing_file(&kds, &cache);
    // Another process was told to come back in ten minutes.
    let turn = format!("{}\n", now_ms() + 600_000);
    set_turn(&pacing, &turn);
    let start = Instant::now();
    let out = run(fetch_milan(&kds, &cache)
        .args(["--max-wait", "60", "-o"])
        .arg(dir.path().join("certs.bin")));
    assert_fails_with(&out, 69, "request pacing file");
    let err = stderr(&out);
    assert!(err.contains("more than the 60 s left to wait"), "{err}");
    assert!(err.contains("--max-wait"), "{err}");
    // At once: no sleep, no request, and the turn not booked again.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(kds.requests(), 0);
    assert_eq!(fs::read_to_string(&pacing).unwrap(), turn);
    assert!(!dir.path().join("certs.bin").exists());
}

#[test]
fn an_implausible_or_garbled_pacing_file_is_repaired_not_obeyed() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let pacing = pacing_file(&kds, &cache);
    // Thirty days ahead: beyond any Retry-After ever booked.
    for (i, text) in [
        format!("{}\n", now_ms() + 30 * 86_400_000),
        "garbage".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        set_turn(&pacing, text);
        let cache_files = cache.join("vcek");
        let _ = fs::remove_dir_all(&cache_files);
        let out = run(fetch_milan(&kds, &cache)
            .arg("-o")
            .arg(dir.path().join(format!("certs{i}.bin"))));
        assert!(out.status.success(), "{text:?}");
        assert!(stderr(&out).contains("was repaired"), "{}", stderr(&out));
        let stored: u64 = fs::read_to_string(&pacing).unwrap().trim().parse().unwrap();
        assert!(stored < now_ms() + 60_000, "{stored}");
    }
    // A FIFO where the file should be: replaced, nothing hangs.
    fs::remove_file(&pacing).unwrap();
    let path = std::ffi::CString::new(pacing.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    fs::remove_dir_all(cache.join("vcek")).unwrap();
    let out = run(fetch_milan(&kds, &cache)
        .arg("-o")
        .arg(dir.path().join("certs-fifo.bin")));
    assert!(out.status.success());
    assert!(fs::symlink_metadata(&pacing).unwrap().is_file());
}

/// Whether any process holds a lock on `path` (per `/proc/locks`).
fn locked(path: &Path) -> bool {
    let needle = format!(":{} ", fs::metadata(path).unwrap().ino());
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains(&needle))
}

#[test]
fn a_pacing_wait_is_announced_first_and_taken_without_the_lock() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let pacing = pacing_file(&kds, &cache);
    set_turn(&pacing, &format!("{}\n", now_ms() + 3_000));
    let mut child = fetch_milan(&kds, &cache)
        .arg("-o")
        .arg(dir.path().join("certs.bin"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    // Said before the wait starts, with how long and why.
    assert!(line.starts_with("snp-certs: waiting "), "{line}");
    assert!(line.contains("for this host's turn"), "{line}");
    assert!(line.contains("request pacing"), "{line}");
    // While it waits, the pacing file is not locked: others book their
    // turns behind it.
    assert!(!locked(&pacing), "the pacing lock is held during the wait");
    assert_eq!(kds.requests(), 0);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(kds.requests(), 2);
}
