//! `snp-certs refresh` against a fake KDS: the file is rewritten in place
//! under one exclusive lock (a reader never sees a mix), is left without a
//! VCEK rather than with a stale one, and `--prefetch` only warms the
//! cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kds_support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kds_support::*;
use snp_certs::table::{CertTable, TableBuilder};
use snp_certs::{CertKind, CertsReader};
use snp_kds::{Product, TcbLevels};

/// A table of the fixtures of `chip` (`milan`, `turin`); with or without
/// the VCEK.
fn table_of(chip: &str, with_vcek: bool) -> Vec<u8> {
    let mut b = TableBuilder::new();
    if with_vcek {
        b.add(CertKind::Vcek, fixture_der(&format!("amd/{chip}/vcek.der")))
            .unwrap();
    }
    b.add(CertKind::Ask, fixture_der(&format!("amd/{chip}/ask.pem")))
        .unwrap();
    b.add(CertKind::Ark, fixture_der(&format!("amd/{chip}/ark.pem")))
        .unwrap();
    b.build().unwrap()
}

/// A table of the Milan fixtures; with or without the VCEK.
fn milan_table(with_vcek: bool) -> Vec<u8> {
    table_of("milan", with_vcek)
}

/// The fake KDS serving AMD's fixtures, and a certs file in a temporary
/// directory with a private cache beside it.
struct Scene {
    kds: FakeKds,
    dir: tempfile::TempDir,
    path: PathBuf,
    ino: u64,
}

impl Scene {
    /// `kds`, and a certs file holding `bytes`.
    fn with(kds: FakeKds, bytes: &[u8]) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs.bin");
        fs::write(&path, bytes).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        Scene {
            kds,
            dir,
            path,
            ino,
        }
    }

    /// The fake KDS with AMD's fixtures, and a certs file holding `bytes`.
    fn new(bytes: &[u8]) -> Scene {
        Scene::with(FakeKds::with_amd_fixtures(), bytes)
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `snp-certs refresh FILE` with the fake KDS and the private cache.
    fn refresh(&self) -> Command {
        let mut c = snp_certs("refresh", &self.kds, &self.cache());
        c.arg(&self.path);
        c
    }

    /// [`Scene::refresh`] for the Milan fixture chip, without CRL.
    fn refresh_milan(&self) -> Command {
        refresh_milan(&self.kds, &self.cache(), &self.path)
    }

    /// What the certs file holds now.
    fn holds(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }

    /// Asserts the certs file is the one it was (rewritten in place, never
    /// replaced).
    fn assert_in_place(&self) {
        let ino = fs::metadata(&self.path).unwrap().ino();
        assert_eq!(ino, self.ino, "not in place");
    }
}

fn newer_tcb() -> String {
    let (_, tcb) = milan();
    let mut t = TcbLevels::parse(&tcb, Product::Milan).unwrap();
    t.microcode += 1;
    t.to_string()
}

/// A command for `refresh -- CMD` that ends once a process is blocked
/// waiting for a lock on the file whose inode is `$CERTS_INODE` (a line
/// of `/proc/locks` with `->`), and fails after 20 s without one.
const UNTIL_A_READER_WAITS: &str = r#"
i=0
until grep -q -- "->.*:$CERTS_INODE " /proc/locks; do
    i=$((i + 1))
    [ "$i" -lt 2000 ] || { echo "no reader waited for the lock" >&2; exit 9; }
    sleep 0.01
done"#;

#[test]
fn refresh_rewrites_in_place_and_a_reader_never_sees_a_mix() {
    let old = milan_table(false);
    let new = milan_table(true);
    let scene = Scene::new(&old);

    // A reader, as a VMM reads: shared lock, read, classify.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_old, seen_new, mixed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let reader = {
        let (path, stop) = (scene.path.clone(), Arc::clone(&stop));
        let (seen_old, seen_new, mixed) = (
            Arc::clone(&seen_old),
            Arc::clone(&seen_new),
            Arc::clone(&mixed),
        );
        let (old, new) = (old.clone(), new.clone());
        std::thread::spawn(move || {
            let mut reader = CertsReader::new();
            while !stop.load(Ordering::Acquire) {
                let seen = match reader.lock_and_read(&path, Duration::from_secs(20)) {
                    Ok(locked) if locked.bytes == old.as_slice() => &seen_old,
                    Ok(locked) if locked.bytes == new.as_slice() => &seen_new,
                    Ok(_) | Err(_) => &mixed,
                };
                seen.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let until_seen = |count: &AtomicU64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::yield_now();
        }
    };
    until_seen(&seen_old, "the reader did not start");

    // The command runs under the lock, as a firmware commit would, and
    // ends only once it has seen the reader wait for that lock.
    let out = run(scene
        .refresh_milan()
        .args(["--", "sh", "-c", UNTIL_A_READER_WAITS])
        .env("CERTS_INODE", scene.ino.to_string()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("updated"), "{}", stdout(&out));

    until_seen(&seen_new, "the reader never saw the new table");
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    assert_eq!(mixed.load(Ordering::Relaxed), 0);
    assert_eq!(scene.holds(), new);
    scene.assert_in_place();
    assert!(verifies(&scene.path));
    assert_eq!(scene.kds.requests(), 2);
}

#[test]
fn no_vcek_for_the_new_tcb_leaves_the_chain_only_and_exits_3() {
    let scene = Scene::new(&milan_table(true));
    // After the "firmware update" the TCB is one microcode level up; KDS
    // has nothing for it.
    let out = run(scene
        .refresh()
        .args(["--tcb", &newer_tcb(), "--no-crl"])
        .args(["--", "true"]));
    assert_fails_with(&out, 3, "WITHOUT a VCEK");
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    let bytes = scene.holds();
    let table = CertTable::parse(&bytes).unwrap();
    assert!(table.get(CertKind::Vcek).is_none());
    assert!(table.get(CertKind::Ask).is_some());
    assert!(table.get(CertKind::Ark).is_some());
    assert_eq!(bytes, milan_table(false));
    scene.assert_in_place();
}

/// `--from-host` where the firmware cannot be asked (no `/dev/sev`, on
/// every host: see [`without_dev_sev`]).
#[test]
fn an_unknown_tcb_after_the_command_drops_the_vcek_too() {
    let scene = Scene::new(&milan_table(true));
    let out = run(&mut without_dev_sev(scene.refresh().args([
        "--from-host",
        "--",
        "true",
    ])));
    assert_fails_with(&out, 3, "Cannot open /dev/sev");
    assert_eq!(scene.holds(), milan_table(false));
    assert_eq!(scene.kds.requests(), 0);
}

#[test]
fn a_still_matching_vcek_is_kept_when_kds_cannot_help() {
    let before = milan_table(true);
    let scene = Scene::new(&before);
    let (_, tcb) = milan();
    let out = run(scene.refresh().args(["--tcb", &tcb, "--offline"]));
    assert_fails_with(&out, 66, "left unchanged");
    assert_eq!(scene.holds(), before);
}

#[test]
fn a_failing_command_changes_nothing() {
    let before = milan_table(false);
    let scene = Scene::new(&before);
    let out = run(scene.refresh_milan().args(["--", "sh", "-c", "exit 7"]));
    assert_fails_with(&out, 7, "was not changed");
    assert_eq!(scene.holds(), before);
    assert_eq!(scene.kds.requests(), 0);
}

#[test]
fn prefetch_warms_the_cache_for_a_later_offline_refresh() {
    let scene = Scene::new(&milan_table(true));
    let (_, tcb) = milan();
    // Chip and product come from the file's VCEK.
    let out = run(scene
        .refresh()
        .args(["--prefetch", "--tcb", &tcb, "--no-crl"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("KDS requests: 2"), "{}", stdout(&out));
    assert_eq!(scene.holds(), milan_table(true));

    // During the maintenance window KDS is not needed.
    fs::write(&scene.path, milan_table(false)).unwrap();
    let out = run(scene.refresh_milan().args(["--offline", "--", "true"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(scene.kds.requests(), 2);
    assert_eq!(scene.holds(), milan_table(true));
    scene.assert_in_place();
}

#[test]
fn a_bare_tcb_with_nothing_fetched_leaves_the_file_byte_identical() {
    let before = milan_table(true);
    let scene = Scene::new(&before);
    // A typo in --tcb, offline, empty cache, no command: the file's VCEK
    // is not dropped on the operator's word alone; the exit code says what
    // is missing.
    let out = run(scene.refresh().args(["--tcb", &newer_tcb(), "--offline"]));
    assert_fails_with(&out, 66, "left unchanged");
    let err = stderr(&out);
    assert!(err.contains("only --tcb says the TCB moved"), "{err}");
    assert!(!err.contains("WITHOUT a VCEK"), "{err}");
    assert_eq!(scene.holds(), before);
    scene.assert_in_place();
    assert_eq!(scene.kds.requests(), 0);

    // KDS unavailable (rate limited past the budget): 69, file the same.
    scene.kds.throttle(Throttle {
        fail_first: 100,
        retry_after: Some("1".to_owned()),
        ..Throttle::default()
    });
    let out = run(scene
        .refresh()
        .args(["--tcb", &newer_tcb(), "--max-attempts", "1"]));
    assert_fails_with(&out, 69, "left unchanged");
    assert_eq!(scene.holds(), before);

    // KDS has nothing for that TCB (404): still nothing dropped.
    scene.kds.throttle(Throttle::default());
    let out = run(scene.refresh().args(["--tcb", &newer_tcb()]));
    assert_ne!(out.status.code(), Some(0));
    assert_ne!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    assert_eq!(scene.holds(), before);
}

#[test]
fn a_vcek_for_another_platform_is_not_installed_on_tcb_alone() {
    // The file holds another chip's VCEK (a Turin's); the Milan VCEK named
    // by --product/--hwid/--tcb is on KDS and verifies.
    let before = table_of("turin", true);
    let scene = Scene::new(&before);
    let out = run(&mut scene.refresh_milan());
    assert_fails_with(&out, 1, "not replacing the VCEK");
    assert!(stderr(&out).contains("--from-host"), "{}", stderr(&out));
    assert_eq!(scene.holds(), before);
    // The same under a command that changes the TCB: installed.
    let out = run(scene.refresh_milan().args(["--", "true"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(scene.holds(), milan_table(true));
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
    let before = milan_table(false);
    let scene = Scene::with(kds, &before);
    let out = run(&mut scene.refresh_milan());
    assert_fails_with(&out, 1, "ARK is not a trusted root");
    assert!(stderr(&out).contains("--trust-root"), "{}", stderr(&out));
    assert_eq!(scene.holds(), before);
    assert!(!scene.cache().join("vcek/milan/cert_chain.pem").exists());
}
