//! The reader's own promises: how long a lease held the lock, the cancel
//! flag and the lingering timer of a vCPU's reader, letting go of the
//! descriptor, and what a file removed during a wait is found to be.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::guid::CertKind;
use crate::lock::{self, LockKind};
use crate::table::TableBuilder;

fn certs(dir: &Path) -> PathBuf {
    let mut data = vec![7; 500];
    data[0] = 0x30;
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, data).unwrap();
    let path = dir.join("certs");
    fs::write(&path, b.build().unwrap()).unwrap();
    path
}

/// A writer of `path` holding its exclusive lock.
fn writer(path: &Path) -> File {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    lock::lock(&f, LockKind::Exclusive, Duration::ZERO).unwrap();
    f
}

/// Sleeps `ms` in one `nanosleep`; whether a signal cut it short.
fn sleep_interrupted(ms: u64) -> bool {
    let request = libc::timespec {
        tv_sec: 0,
        tv_nsec: (ms * 1_000_000) as libc::c_long,
    };
    // SAFETY: `request` outlives the call; no remainder is asked for.
    let ret = unsafe { libc::nanosleep(&request, std::ptr::null_mut()) };
    ret == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
}

#[test]
fn a_lease_says_how_long_it_held_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let mut reader = CertsReader::new();
    let lease = reader.lock_and_read(&path, Duration::ZERO).unwrap().lease;
    // The time passing is what is measured here.
    std::thread::sleep(Duration::from_millis(20));
    let so_far = lease.held_for();
    assert!(so_far >= Duration::from_millis(20), "{so_far:?}");
    let held = lease.release();
    assert!(held >= so_far, "{held:?} < {so_far:?}");
}

#[test]
fn a_reader_whose_cancel_flag_is_set_does_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let _writer = writer(&path);
    let stop = Arc::new(AtomicBool::new(true));
    for mut reader in [
        CertsReader::with_cancel(Arc::clone(&stop)),
        CertsReader::for_vcpu(Arc::clone(&stop)),
    ] {
        match reader.lock_and_read(&path, Duration::from_secs(20)) {
            Err(CertsFileError::Lock {
                source: LockError::Cancelled { waited },
                ..
            }) => assert_eq!(waited, Duration::ZERO),
            other => panic!("expected a cancelled wait, got {other:?}"),
        }
    }
}

/// Takes a lease with `reader` after waiting for a writer (released once
/// the wait shows in `/proc/locks`), on this thread; releases it, then
/// says whether a later sleep of this thread was cut short.
fn sleep_after_a_wait(mut reader: CertsReader) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let writer = writer(&path);
    let unlocker = std::thread::spawn(move || {
        lock::holders::wait_for_blocked(&writer.metadata().unwrap(), 1);
        lock::unlock(&writer).unwrap();
    });
    let locked = reader
        .lock_and_read(&path, Duration::from_secs(20))
        .unwrap();
    assert!(locked.lock_wait > Duration::ZERO, "it waited");
    drop(locked);
    unlocker.join().unwrap();
    let interrupted = sleep_interrupted(300);
    lock::settle_timer();
    interrupted
}

#[test]
fn a_vcpu_readers_wait_leaves_its_timer_lingering_and_others_do_not() {
    let stop = Arc::new(AtomicBool::new(false));
    // The lingering timer fires once, within the wait's cancel slice.
    assert!(sleep_after_a_wait(CertsReader::for_vcpu(Arc::clone(&stop))));
    assert!(!sleep_after_a_wait(CertsReader::with_cancel(stop)));
    assert!(!sleep_after_a_wait(CertsReader::new()));
}

/// The descriptors of this process open on `path`.
fn open_descriptors(path: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
        .count()
}

#[test]
fn a_closed_reader_keeps_no_descriptor_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let mut reader = CertsReader::new();
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    assert_eq!(open_descriptors(&path), 1, "kept for the next request");
    reader.close();
    assert_eq!(open_descriptors(&path), 0);
}

/// Locks and reads `path` with a new reader, waiting for a writer that
/// lets go once the wait shows in `/proc/locks`, after `meanwhile` ran.
fn read_after(path: &Path, meanwhile: impl FnOnce()) -> Result<(), CertsFileError> {
    let writer = writer(path);
    let asking = std::thread::spawn({
        let path = path.to_owned();
        move || {
            CertsReader::new()
                .lock_and_read(&path, Duration::from_secs(20))
                .map(drop)
        }
    });
    lock::holders::wait_for_blocked(&writer.metadata().unwrap(), 1);
    meanwhile();
    lock::unlock(&writer).unwrap();
    asking.join().unwrap()
}

#[test]
fn a_file_removed_while_a_request_waits_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let result = read_after(&path, || fs::remove_file(&path).unwrap());
    assert!(
        matches!(result, Err(CertsFileError::Missing { .. })),
        "{result:?}"
    );
}

#[test]
fn a_path_that_cannot_be_looked_up_after_the_wait_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let path = certs(&sub);
    // Its directory becomes a plain file: looking the path up fails with
    // ENOTDIR, which says nothing about the file itself.
    let result = read_after(&path, || {
        fs::rename(&sub, dir.path().join("old")).unwrap();
        fs::write(&sub, b"").unwrap();
    });
    match result {
        Err(CertsFileError::Read { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR));
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn a_lock_timeout_is_told_from_other_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let writer = writer(&path);
    let mut reader = CertsReader::new();
    let error = reader
        .lock_and_read(&path, Duration::from_millis(20))
        .unwrap_err();
    assert!(error.is_lock_timeout(), "{error:?}");
    assert!(error.lock_wait() >= Duration::from_millis(20));
    assert!(reader.last_lock_tried());
    assert!(reader.last_lock_wait() >= Duration::from_millis(20));
    drop(writer);
    let error = CertsReader::new()
        .lock_and_read(&dir.path().join("missing"), Duration::ZERO)
        .unwrap_err();
    assert!(!error.is_lock_timeout(), "{error:?}");
    assert_eq!(error.lock_wait(), Duration::ZERO);
}

#[test]
fn a_path_names_its_file_until_it_is_replaced_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let path = certs(&sub);
    let file = File::open(&path).unwrap();
    let size = file.metadata().unwrap().len();
    assert_eq!(still_names(&path, &file).unwrap(), Some(size));
    let other = sub.join("other");
    fs::write(&other, b"x").unwrap();
    fs::rename(&other, &path).unwrap();
    assert_eq!(still_names(&path, &file).unwrap(), None, "replaced");
    fs::remove_file(&path).unwrap();
    assert_eq!(still_names(&path, &file).unwrap(), None, "removed");
    // A lookup that fails for another reason is an error.
    fs::rename(&sub, dir.path().join("old")).unwrap();
    fs::write(&sub, b"").unwrap();
    let error = still_names(&path, &file).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOTDIR));
}
