//! `snp-certs refresh` against a fake KDS: the file is rewritten in place
//! under one exclusive lock (a reader never sees a mix), is left without a
//! VCEK rather than with a stale one, and `--prefetch` only warms the
//! cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kds_support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kds_support::*;
use snp_certs::table::{CertTable, TableBuilder};
use snp_certs::{CertKind, CertsReader};
use snp_kds::{Product, TcbLevels};

/// A table of the Milan fixtures; with or without the VCEK.
fn milan_table(with_vcek: bool) -> Vec<u8> {
    let mut b = TableBuilder::new();
    if with_vcek {
        b.add(CertKind::Vcek, fixture_der("amd/milan/vcek.der"))
            .unwrap();
    }
    b.add(CertKind::Ask, fixture_der("amd/milan/ask.pem"))
        .unwrap();
    b.add(CertKind::Ark, fixture_der("amd/milan/ark.pem"))
        .unwrap();
    b.build().unwrap()
}

fn certs_file(dir: &Path, bytes: &[u8]) -> (PathBuf, u64) {
    let path = dir.join("certs.bin");
    fs::write(&path, bytes).unwrap();
    let ino = fs::metadata(&path).unwrap().ino();
    (path, ino)
}

fn newer_tcb() -> String {
    let (_, tcb) = milan();
    let mut t = TcbLevels::parse(&tcb, Product::Milan).unwrap();
    t.microcode += 1;
    t.to_string()
}

#[test]
fn refresh_rewrites_in_place_and_a_reader_never_sees_a_mix() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let old = milan_table(false);
    let new = milan_table(true);
    let (path, ino) = certs_file(dir.path(), &old);

    // A reader, as a VMM reads: shared lock, read, classify.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_old, seen_new, mixed, longest_wait_ms) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let reader = {
        let (path, stop) = (path.clone(), Arc::clone(&stop));
        let (seen_old, seen_new, mixed, longest) = (
            Arc::clone(&seen_old),
            Arc::clone(&seen_new),
            Arc::clone(&mixed),
            Arc::clone(&longest_wait_ms),
        );
        let (old, new) = (old.clone(), new.clone());
        std::thread::spawn(move || {
            let mut reader = CertsReader::new();
            while !stop.load(Ordering::Acquire) {
                match reader.lock_and_read(&path, Duration::from_secs(10)) {
                    Ok(locked) => {
                        let waited = locked.lock_wait.as_millis() as u64;
                        longest.fetch_max(waited, Ordering::Relaxed);
                        if locked.bytes == old.as_slice() {
                            seen_old.fetch_add(1, Ordering::Relaxed);
                        } else if locked.bytes == new.as_slice() {
                            seen_new.fetch_add(1, Ordering::Relaxed);
                        } else {
                            mixed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        mixed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen_old.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "reader did not start");
        std::thread::yield_now();
    }

    let (hwid, tcb) = milan();
    // The command holds the lock a while, as a firmware commit would.
    let out = run(snp_certs("refresh", &kds, &dir.path().join("cache"))
        .arg(&path)
        .args([
            "--product",
            "milan",
            "--hwid",
            &hwid,
            "--tcb",
            &tcb,
            "--no-crl",
        ])
        .args(["--", "sh", "-c", "sleep 0.3"]));
    assert!(out.status.success());
    assert!(stdout(&out).contains("updated"), "{}", stdout(&out));

    let deadline = Instant::now() + Duration::from_secs(10);
    while seen_new.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "reader never saw the new table");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    assert_eq!(mixed.load(Ordering::Relaxed), 0);
    // The reader was held off while the command ran under the lock.
    assert!(
        longest_wait_ms.load(Ordering::Relaxed) >= 200,
        "longest reader wait {} ms",
        longest_wait_ms.load(Ordering::Relaxed)
    );
    assert_eq!(fs::read(&path).unwrap(), new);
    assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "not in place");
    assert!(verifies(&path));
    assert_eq!(kds.requests(), 2);
}

#[test]
fn no_vcek_for_the_new_tcb_leaves_the_chain_only_and_exits_3() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let (path, ino) = certs_file(dir.path(), &milan_table(true));
    // After the "firmware update" the TCB is one microcode level up; KDS
    // has nothing for it.
    let out = run(snp_certs("refresh", &kds, &dir.path().join("cache"))
        .arg(&path)
        .args(["--tcb", &newer_tcb(), "--no-crl"])
        .args(["--", "true"]));
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("WITHOUT a VCEK"), "{err}");
    assert!(err.contains("HTTP 404"), "{err}");
    let bytes = fs::read(&path).unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert!(table.get(CertKind::Vcek).is_none());
    assert!(table.get(CertKind::Ask).is_some());
    assert!(table.get(CertKind::Ark).is_some());
    assert_eq!(bytes, milan_table(false));
    assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
}

#[test]
fn an_unknown_tcb_after_the_command_drops_the_vcek_too() {
    if Path::new("/dev/sev").exists() {
        return;
    }
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = certs_file(dir.path(), &milan_table(true));
    let out = run(snp_certs("refresh", &kds, &dir.path().join("cache"))
        .arg(&path)
        .args(["--from-host", "--", "true"]));
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("/dev/sev"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), milan_table(false));
    assert_eq!(kds.requests(), 0);
}

#[test]
fn a_still_matching_vcek_is_kept_when_kds_cannot_help() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let before = milan_table(true);
    let (path, _) = certs_file(dir.path(), &before);
    let (_, tcb) = milan();
    let out = run(snp_certs("refresh", &kds, &dir.path().join("cache"))
        .arg(&path)
        .args(["--tcb", &tcb, "--offline"]));
    assert_eq!(out.status.code(), Some(66));
    assert!(stderr(&out).contains("left unchanged"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_failing_command_changes_nothing() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let before = milan_table(false);
    let (path, _) = certs_file(dir.path(), &before);
    let (hwid, tcb) = milan();
    let out = run(snp_certs("refresh", &kds, &dir.path().join("cache"))
        .arg(&path)
        .args(["--product", "milan", "--hwid", &hwid, "--tcb", &tcb])
        .args(["--", "sh", "-c", "exit 7"]));
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("was not changed"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(kds.requests(), 0);
}

#[test]
fn prefetch_warms_the_cache_for_a_later_offline_refresh() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (path, ino) = certs_file(dir.path(), &milan_table(true));
    let (_, tcb) = milan();
    // Chip and product come from the file's VCEK.
    let out = run(snp_certs("refresh", &kds, &cache).arg(&path).args([
        "--prefetch",
        "--tcb",
        &tcb,
        "--no-crl",
    ]));
    assert!(out.status.success());
    assert!(stdout(&out).contains("KDS requests: 2"), "{}", stdout(&out));
    assert_eq!(fs::read(&path).unwrap(), milan_table(true));

    // During the maintenance window KDS is not needed.
    fs::write(&path, milan_table(false)).unwrap();
    let (hwid, _) = milan();
    let out = run(snp_certs("refresh", &kds, &cache)
        .arg(&path)
        .args(["--product", "milan", "--hwid", &hwid, "--tcb", &tcb])
        .args(["--no-crl", "--offline", "--", "true"]));
    assert!(out.status.success());
    assert_eq!(kds.requests(), 2);
    assert_eq!(fs::read(&path).unwrap(), milan_table(true));
    assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
}

/// A table of the Turin fixtures (another chip's VCEK).
fn turin_table() -> Vec<u8> {
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, fixture_der("amd/turin/vcek.der"))
        .unwrap();
    b.add(CertKind::Ask, fixture_der("amd/turin/ask.pem"))
        .unwrap();
    b.add(CertKind::Ark, fixture_der("amd/turin/ark.pem"))
        .unwrap();
    b.build().unwrap()
}

#[test]
fn a_bare_tcb_with_nothing_fetched_leaves_the_file_byte_identical() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let before = milan_table(true);
    let (path, ino) = certs_file(dir.path(), &before);
    let cache = dir.path().join("cache");
    // A typo in --tcb, offline, empty cache, no command: the file's VCEK
    // is not dropped on the operator's word alone; the exit code says what
    // is missing.
    let out = run(snp_certs("refresh", &kds, &cache).arg(&path).args([
        "--tcb",
        &newer_tcb(),
        "--offline",
    ]));
    assert_eq!(out.status.code(), Some(66));
    let err = stderr(&out);
    assert!(err.contains("left unchanged"), "{err}");
    assert!(err.contains("only --tcb says the TCB moved"), "{err}");
    assert!(!err.contains("WITHOUT a VCEK"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
    assert_eq!(kds.requests(), 0);

    // KDS unavailable (rate limited past the budget): 69, file the same.
    kds.throttle(Throttle {
        fail_first: 100,
        retry_after: Some("1".to_owned()),
        ..Throttle::default()
    });
    let out = run(snp_certs("refresh", &kds, &cache).arg(&path).args([
        "--tcb",
        &newer_tcb(),
        "--max-attempts",
        "1",
    ]));
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("left unchanged"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), before);

    // KDS has nothing for that TCB (404): still nothing dropped.
    kds.throttle(Throttle::default());
    let out = run(snp_certs("refresh", &kds, &cache)
        .arg(&path)
        .args(["--tcb", &newer_tcb()]));
    assert_ne!(out.status.code(), Some(0));
    assert_ne!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_vcek_for_another_platform_is_not_installed_on_tcb_alone() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    // The file holds another chip's VCEK (a Turin's); the Milan VCEK named
    // by --product/--hwid/--tcb is on KDS and verifies.
    let before = turin_table();
    let (path, _) = certs_file(dir.path(), &before);
    let cache = dir.path().join("cache");
    let (hwid, tcb) = milan();
    let out = run(snp_certs("refresh", &kds, &cache).arg(&path).args([
        "--product",
        "milan",
        "--hwid",
        &hwid,
        "--tcb",
        &tcb,
        "--no-crl",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("not replacing the VCEK"), "{err}");
    assert!(err.contains("--from-host"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    // The same under a command that changes the TCB: installed.
    let out = run(snp_certs("refresh", &kds, &cache)
        .arg(&path)
        .args(["--product", "milan", "--hwid", &hwid, "--tcb", &tcb])
        .args(["--no-crl", "--", "true"]));
    assert!(out.status.success());
    assert_eq!(fs::read(&path).unwrap(), milan_table(true));
}

#[test]
fn a_chain_under_a_foreign_root_is_refused_and_the_file_kept() {
    // Something posing as KDS serves a self-consistent chain of its own
    // making for Milan.
    let kds = FakeKds::start();
    kds.serve(
        "/vcek/v1/Milan/cert_chain",
        chain_pem("synthetic/asvk.pem", "synthetic/ark.pem"),
    );
    let dir = tempfile::tempdir().unwrap();
    let before = milan_table(false);
    let (path, _) = certs_file(dir.path(), &before);
    let cache = dir.path().join("cache");
    let (hwid, tcb) = milan();
    let out = run(snp_certs("refresh", &kds, &cache).arg(&path).args([
        "--product",
        "milan",
        "--hwid",
        &hwid,
        "--tcb",
        &tcb,
        "--no-crl",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ARK is not a trusted root"), "{err}");
    assert!(err.contains("--trust-root"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(!cache.join("vcek/milan/cert_chain.pem").exists());
}
