//! In-process tests of the in-place rewrite. Locks held by other open file
//! descriptions conflict even within one process, so readers here are real
//! competitors. The cross-process tests are in `tests/update_cli.rs`.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::file::CertsReader;
use crate::guid::CertKind;
use crate::table::TableBuilder;

fn table(fill: u8, len: usize) -> Vec<u8> {
    let mut data = vec![fill; len];
    data[0] = 0x30;
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, data).unwrap();
    b.build().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn rewrites_in_place_keeping_the_inode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let old = table(1, 3000);
    fs::write(&path, &old).unwrap();
    let ino = fs::metadata(&path).unwrap().ino();
    let new = table(2, 1000);
    let report = rewrite_in_place(&path, &new, ms(100)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), new);
    assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
    assert_eq!(
        (report.old_len, report.new_len),
        (old.len() as u64, new.len() as u64)
    );
    assert!(report.old_was_table && !report.unchanged);
    let again = rewrite_in_place(&path, &new, ms(100)).unwrap();
    assert!(again.unchanged);
}

#[test]
fn refuses_invalid_new_content_without_touching_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let old = table(1, 100);
    fs::write(&path, &old).unwrap();
    let err = rewrite_in_place(&path, b"not a table", ms(100)).unwrap_err();
    assert!(matches!(err, UpdateError::InvalidNew(_)), "{err}");
    assert_eq!(fs::read(&path).unwrap(), old);
}

#[test]
fn refuses_to_overwrite_a_file_that_is_not_a_table_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    fs::write(&path, b"root:x:0:0::/root:/bin/sh\n").unwrap();
    let new = table(2, 100);
    let err = rewrite_in_place(&path, &new, ms(100)).unwrap_err();
    assert!(matches!(err, UpdateError::NotATable { .. }), "{err}");
    let options = UpdateOptions {
        timeout: ms(100),
        overwrite_non_table: true,
    };
    let report = rewrite_in_place_with(&path, &new, &options).unwrap();
    assert!(!report.old_was_table);
    assert_eq!(fs::read(&path).unwrap(), new);
    // An empty file (a placeholder) is always fine.
    let empty = dir.path().join("empty");
    fs::write(&empty, b"").unwrap();
    rewrite_in_place(&empty, &new, ms(100)).unwrap();
    assert_eq!(fs::read(&empty).unwrap(), new);
}

#[test]
fn refuses_missing_files_directories_and_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let new = table(2, 100);
    let err = rewrite_in_place(&dir.path().join("none"), &new, ms(10)).unwrap_err();
    assert!(matches!(err, UpdateError::Missing { .. }), "{err}");
    let err = rewrite_in_place(dir.path(), &new, ms(10)).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Open { .. } | UpdateError::NotRegular { .. }
        ),
        "{err}"
    );
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // O_NONBLOCK on a FIFO without reader: ENXIO, refused, no hang.
    let err = rewrite_in_place(&fifo, &new, ms(10)).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Open { .. } | UpdateError::NotRegular { .. }
        ),
        "{err}"
    );
}

#[test]
fn waits_for_readers_at_most_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let old = table(1, 100);
    fs::write(&path, &old).unwrap();
    let mut reader = CertsReader::new();
    let locked = reader.lock_and_read(&path, ms(100)).unwrap();
    let new = table(2, 100);
    let err = rewrite_in_place(&path, &new, ms(50)).unwrap_err();
    match &err {
        UpdateError::Lock {
            source: LockError::Timeout { waited },
            ..
        } => assert!(*waited >= ms(50), "{waited:?}"),
        other => panic!("{other}"),
    }
    assert_eq!(fs::read(&path).unwrap(), old);
    drop(locked);
    rewrite_in_place(&path, &new, ms(50)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), new);
}

#[test]
fn a_reader_waits_while_the_exclusive_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, table(1, 100)).unwrap();
    let lock = ExclusiveLock::acquire(&path, ms(100)).unwrap();
    let mut reader = CertsReader::new();
    let err = reader.lock_and_read(&path, Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("shared lock"), "{err}");
    lock.release();
    reader.lock_and_read(&path, Duration::ZERO).unwrap();
}

#[test]
fn follows_a_symlink_to_the_served_inode() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("certs-v1.bin");
    let link = dir.path().join("certs.bin");
    fs::write(&target, table(1, 100)).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let new = table(2, 100);
    rewrite_in_place(&link, &new, ms(100)).unwrap();
    assert_eq!(fs::read(&target).unwrap(), new);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn notices_a_file_renamed_over_while_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let old = table(1, 100);
    fs::write(&path, &old).unwrap();
    let lock = ExclusiveLock::acquire(&path, ms(100)).unwrap();
    let other = dir.path().join("other.bin");
    fs::write(&other, table(3, 100)).unwrap();
    fs::rename(&other, &path).unwrap();
    let err = lock
        .rewrite(&table(2, 100), &UpdateOptions::default())
        .unwrap_err();
    assert!(matches!(err, UpdateError::Replaced { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), table(3, 100));
}

/// Signals the handler below saw, one bit per signal number.
static DELIVERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn record_signal(signal: libc::c_int) {
    DELIVERED.fetch_or(1 << signal, std::sync::atomic::Ordering::SeqCst);
}

/// This thread's blocked and pending signal sets.
fn mask_and_pending() -> (libc::sigset_t, libc::sigset_t) {
    // SAFETY: both sets are initialised by sigemptyset before use; a null
    // `set` makes pthread_sigmask only report the mask.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigemptyset(&mut pending);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask),
            0
        );
        assert_eq!(libc::sigpending(&mut pending), 0);
        (mask, pending)
    }
}

fn has(set: &libc::sigset_t, signal: libc::c_int) -> bool {
    // SAFETY: `set` is an initialised signal set.
    unsafe { libc::sigismember(set, signal) == 1 }
}

#[test]
fn deferred_holds_termination_signals_pending_until_dropped() {
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
    // A fresh thread, so no other test's mask is touched; a handler that
    // records instead of the default action, so delivery does not end
    // the test process.
    std::thread::spawn(move || {
        let mut old = Vec::new();
        for signal in signals {
            // SAFETY: a zeroed sigaction with an empty mask and a handler
            // that only does an atomic OR is a valid, async-signal-safe
            // disposition; the previous one is saved to be restored.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = record_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                assert_eq!(libc::sigaction(signal, &action, &mut previous), 0);
                old.push((signal, previous));
            }
        }
        let (before, _) = mask_and_pending();
        for signal in signals {
            assert!(!has(&before, signal), "{signal} blocked already");
        }
        let deferred = signals::Deferred::block();
        let (mask, _) = mask_and_pending();
        for signal in signals {
            assert!(has(&mask, signal), "{signal} not blocked");
            // SAFETY: pthread_self is this live thread; the signal has a
            // handler installed above.
            let sent = unsafe { libc::pthread_kill(libc::pthread_self(), signal) };
            assert_eq!(sent, 0);
        }
        let (_, pending) = mask_and_pending();
        for signal in signals {
            assert!(has(&pending, signal), "{signal} not pending");
            assert_eq!(
                DELIVERED.load(std::sync::atomic::Ordering::SeqCst) & (1 << signal),
                0,
                "{signal} was delivered while deferred"
            );
        }
        drop(deferred);
        // Unblocking delivers what was pending before pthread_sigmask
        // returns; the mask is the one from before.
        let (after, pending) = mask_and_pending();
        for signal in signals {
            assert!(!has(&after, signal), "{signal} still blocked");
            assert!(!has(&pending, signal), "{signal} still pending");
            assert_ne!(
                DELIVERED.load(std::sync::atomic::Ordering::SeqCst) & (1 << signal),
                0,
                "{signal} was not delivered after the drop"
            );
        }
        for (signal, previous) in old {
            // SAFETY: restores the disposition saved above.
            unsafe {
                assert_eq!(libc::sigaction(signal, &previous, std::ptr::null_mut()), 0);
            }
        }
    })
    .join()
    .unwrap();
}
