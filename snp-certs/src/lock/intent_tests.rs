//! The writer intent byte: every pairing of our readers and writers with
//! plain whole-file lockers (as QEMU takes them), and readers queueing
//! behind a waiting writer.

use std::fs::OpenOptions;
use std::sync::mpsc;

use super::*;

fn open_rw(tmp: &tempfile::NamedTempFile) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp.path())
        .unwrap()
}

/// A plain whole-file OFD lock try, as QEMU's `qemu_lock_fd` takes it.
fn plain_try(file: &File, kind: LockKind) -> bool {
    try_one(file, &whole_file(kind.fcntl_type())).unwrap()
}

/// Whether some description holds the intent byte exclusively.
fn intent_taken(probe: &File) -> bool {
    conflicts(probe, &intent(libc::F_RDLCK as libc::c_short)).unwrap()
}

/// Polls (with a deadline) until a writer holds the intent byte.
fn wait_for_intent(probe: &File) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !intent_taken(probe) {
        assert!(
            Instant::now() < deadline,
            "the writer never announced itself"
        );
        std::thread::yield_now();
    }
}

#[test]
fn our_reader_and_plain_reader_share() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (ours, plain) = (open_rw(&tmp), open_rw(&tmp));
    assert!(try_lock(&ours, LockKind::Shared).unwrap());
    assert!(plain_try(&plain, LockKind::Shared));
    unlock(&ours).unwrap();
    unlock(&plain).unwrap();
    assert!(plain_try(&plain, LockKind::Shared));
    assert!(try_lock(&ours, LockKind::Shared).unwrap());
}

#[test]
fn plain_writer_and_our_reader_exclude_each_other() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (ours, plain) = (open_rw(&tmp), open_rw(&tmp));
    assert!(plain_try(&plain, LockKind::Exclusive));
    assert!(!try_lock(&ours, LockKind::Shared).unwrap());
    unlock(&plain).unwrap();
    assert!(try_lock(&ours, LockKind::Shared).unwrap());
    assert!(!plain_try(&plain, LockKind::Exclusive));
}

#[test]
fn plain_reader_and_our_writer_exclude_each_other() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (ours, plain, probe) = (open_rw(&tmp), open_rw(&tmp), open_rw(&tmp));
    assert!(plain_try(&plain, LockKind::Shared));
    assert!(!try_lock(&ours, LockKind::Exclusive).unwrap());
    // A failed try leaves no intent behind.
    unlock(&plain).unwrap();
    assert!(!intent_taken(&probe));
    assert!(try_lock(&ours, LockKind::Exclusive).unwrap());
    assert!(!plain_try(&plain, LockKind::Shared));
}

#[test]
fn plain_writer_and_our_writer_exclude_each_other() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (ours, plain) = (open_rw(&tmp), open_rw(&tmp));
    assert!(plain_try(&plain, LockKind::Exclusive));
    assert!(!try_lock(&ours, LockKind::Exclusive).unwrap());
    unlock(&plain).unwrap();
    assert!(try_lock(&ours, LockKind::Exclusive).unwrap());
    assert!(!plain_try(&plain, LockKind::Exclusive));
}

#[test]
fn two_writers_of_ours_exclude_each_other() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (a, b) = (open_rw(&tmp), open_rw(&tmp));
    assert!(try_lock(&a, LockKind::Exclusive).unwrap());
    assert!(!try_lock(&b, LockKind::Exclusive).unwrap());
    unlock(&a).unwrap();
    assert!(try_lock(&b, LockKind::Exclusive).unwrap());
}

#[test]
fn new_readers_queue_behind_a_waiting_writer() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (reader, late, probe) = (open_rw(&tmp), open_rw(&tmp), open_rw(&tmp));
    let writer = open_rw(&tmp);
    assert!(try_lock(&reader, LockKind::Shared).unwrap());
    let (done_tx, done_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let result = lock(&writer, LockKind::Exclusive, Duration::from_secs(30));
        done_tx.send(()).unwrap();
        (result, writer)
    });
    wait_for_intent(&probe);
    // The writer waits for `reader`; a new reader does not slip in ...
    assert!(!try_lock(&late, LockKind::Shared).unwrap());
    match lock(&late, LockKind::Shared, Duration::from_millis(20)) {
        Err(LockError::Timeout { .. }) => {}
        other => panic!("expected the late reader to time out, got {other:?}"),
    }
    // ... and neither does a plain reader: its whole file covers the byte.
    assert!(!plain_try(&probe, LockKind::Shared));
    assert!(done_rx.try_recv().is_err(), "the writer did not wait");
    unlock(&reader).unwrap();
    let (result, writer) = handle.join().unwrap();
    result.unwrap();
    assert!(!try_lock(&late, LockKind::Shared).unwrap());
    unlock(&writer).unwrap();
    assert!(!intent_taken(&probe));
    assert!(try_lock(&late, LockKind::Shared).unwrap());
}

#[test]
fn a_reader_waiting_at_the_intent_byte_gets_the_lock_after_the_writer() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (writer, reader) = (open_rw(&tmp), open_rw(&tmp));
    lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let handle = std::thread::spawn(move || {
        let result = lock(&reader, LockKind::Shared, Duration::from_secs(30));
        (result, reader)
    });
    let probe = open_rw(&tmp);
    // Wait until the reader is blocked (it shows in /proc/locks as "->").
    wait_for_waiters(&tmp, 1);
    unlock(&writer).unwrap();
    let (result, reader) = handle.join().unwrap();
    assert!(result.unwrap() > Duration::ZERO);
    // The reader holds its range, not the intent byte: a writer can
    // announce itself at once.
    let t = LockKind::Exclusive.fcntl_type();
    assert!(try_one(&probe, &intent(t)).unwrap());
    unlock(&probe).unwrap();
    assert!(!plain_try(&probe, LockKind::Exclusive));
    unlock(&reader).unwrap();
}

#[test]
fn a_writer_that_times_out_withdraws_its_intent() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (reader, writer, probe) = (open_rw(&tmp), open_rw(&tmp), open_rw(&tmp));
    assert!(try_lock(&reader, LockKind::Shared).unwrap());
    match lock(&writer, LockKind::Exclusive, Duration::from_millis(20)) {
        Err(LockError::Timeout { waited }) => assert!(waited >= Duration::from_millis(20)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!intent_taken(&probe));
    assert!(try_lock(&probe, LockKind::Shared).unwrap());
}

/// Polls (with a deadline) until `/proc/locks` shows `waiters` blocked
/// lock requests (lines with `->`) on `tmp`'s device and inode.
fn wait_for_waiters(tmp: &tempfile::NamedTempFile, waiters: usize) {
    holders::wait_for_blocked(&tmp.as_file().metadata().unwrap(), waiters);
}

#[test]
fn a_reader_queued_behind_a_waiting_writer_gets_the_lock_after_it_and_not_the_byte() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let (first, late, probe) = (open_rw(&tmp), open_rw(&tmp), open_rw(&tmp));
    let writer = open_rw(&tmp);
    assert!(try_lock(&first, LockKind::Shared).unwrap());
    // The writer announces itself (the intent byte alone) and waits for
    // `first`.
    let (writer_tx, writer_rx) = mpsc::channel();
    let writer_thread = std::thread::spawn(move || {
        lock(&writer, LockKind::Exclusive, Duration::from_secs(30)).unwrap();
        writer_tx.send(()).unwrap();
        writer
    });
    wait_for_intent(&probe);
    wait_for_waiters(&tmp, 1);
    // A new reader queues behind it: one blocked request.
    let late_thread = std::thread::spawn(move || {
        let waited = lock(&late, LockKind::Shared, Duration::from_secs(30));
        (waited, late)
    });
    wait_for_waiters(&tmp, 2);
    unlock(&first).unwrap();
    writer_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the writer got the lock");
    let writer = writer_thread.join().unwrap();
    assert!(
        !late_thread.is_finished(),
        "the late reader must wait for the writer"
    );
    unlock(&writer).unwrap();
    let (waited, late) = late_thread.join().unwrap();
    assert!(waited.unwrap() > Duration::ZERO);
    // It holds its range but let go of the intent byte: the next writer
    // can announce itself.
    let t = LockKind::Exclusive.fcntl_type();
    assert!(try_one(&probe, &intent(t)).unwrap());
    unlock(&probe).unwrap();
    assert!(!plain_try(&probe, LockKind::Exclusive));
    unlock(&late).unwrap();
    assert!(plain_try(&probe, LockKind::Exclusive));
}
