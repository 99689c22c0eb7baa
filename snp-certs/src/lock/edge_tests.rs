//! The lock protocol's edges: lock calls that fail are errors, not
//! conflicts; which range a waiter waits for; a second writer of ours
//! queues at the intent byte; a thread's timer goes with the thread; the
//! timer's signal.

use std::fs::OpenOptions;

use super::*;

fn open_rw(tmp: &tempfile::NamedTempFile) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp.path())
        .unwrap()
}

fn open_write_only(tmp: &tempfile::NamedTempFile) -> File {
    OpenOptions::new().write(true).open(tmp.path()).unwrap()
}

#[test]
fn a_lock_call_that_fails_is_an_error_not_a_conflict() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    // A shared lock needs a descriptor open for reading: EBADF.
    let write_only = open_write_only(&tmp);
    match try_lock(&write_only, LockKind::Shared) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EBADF)),
        Ok(taken) => panic!("expected EBADF, got Ok({taken})"),
    }
    // F_OFD_GETLK refuses a request it cannot parse.
    let mut bad = whole_file(libc::F_RDLCK as libc::c_short);
    bad.l_whence = 7;
    match conflicting(&write_only, &bad) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
        Ok(found) => panic!("expected EINVAL, got Ok({:?})", found.map(|f| f.l_type)),
    }
}

#[test]
fn a_wait_whose_lock_call_fails_ends_with_that_error_at_once() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let writer = open_rw(&tmp);
    lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    // The reader sees the writer (F_OFD_GETLK takes nothing) and sleeps
    // in F_OFD_SETLKW, which fails: the wait ends with that error, not
    // at its deadline an hour from now.
    let write_only = open_write_only(&tmp);
    match lock(&write_only, LockKind::Shared, Duration::from_secs(3600)) {
        Err(LockError::Fcntl(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF)),
        other => panic!("expected EBADF, got {other:?}"),
    }
}

#[test]
fn a_reader_behind_a_whole_file_writer_waits_for_its_range_alone() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let writer = open_rw(&tmp);
    // A plain writer: the whole file, as QEMU locks it.
    setlk(&writer, &whole_file(libc::F_WRLCK as libc::c_short), false).unwrap();
    let reader = open_rw(&tmp);
    let waiting = std::thread::spawn(move || {
        let waited = lock(&reader, LockKind::Shared, Duration::from_secs(20));
        (waited, reader)
    });
    holders::wait_for_blocked(&tmp.as_file().metadata().unwrap(), 1);
    // The writer lets go of everything below the intent byte and keeps
    // the rest: the reader's range is free, the intent byte is not.
    let below = range(libc::F_UNLCK as libc::c_short, 0, INTENT_OFFSET);
    setlk(&writer, &below, false).unwrap();
    let (waited, reader) = waiting.join().unwrap();
    assert!(waited.unwrap() > Duration::ZERO);
    unlock(&reader).unwrap();
}

#[test]
fn a_second_writer_of_ours_queues_at_the_intent_byte() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let first = open_rw(&tmp);
    lock(&first, LockKind::Exclusive, Duration::ZERO).unwrap();
    let second = open_rw(&tmp);
    let waiting = std::thread::spawn(move || {
        let waited = lock(&second, LockKind::Exclusive, Duration::from_secs(20));
        (waited, second)
    });
    holders::wait_for_blocked(&tmp.as_file().metadata().unwrap(), 1);
    let intent_byte = INTENT_OFFSET.to_string();
    assert_eq!(
        holders::blocked_ranges(&tmp.as_file().metadata().unwrap()),
        [(intent_byte.clone(), intent_byte)]
    );
    unlock(&first).unwrap();
    let (waited, second) = waiting.join().unwrap();
    assert!(waited.unwrap() > Duration::ZERO);
    unlock(&second).unwrap();
}

/// The POSIX timers this process has (`/proc/self/timers`).
fn timers() -> usize {
    std::fs::read_to_string("/proc/self/timers")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ID:"))
        .count()
}

#[test]
fn a_threads_lock_timer_goes_with_the_thread() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let writer = open_rw(&tmp);
    lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let before = timers();
    let path = tmp.path().to_owned();
    let during = std::thread::spawn(move || {
        let reader = File::open(path).unwrap();
        let result = lock(&reader, LockKind::Shared, Duration::from_millis(5));
        assert!(matches!(result, Err(LockError::Timeout { .. })));
        timers()
    })
    .join()
    .unwrap();
    assert_eq!(during, before + 1, "the waiting thread had its own timer");
    assert_eq!(timers(), before, "deleted when the thread ended");
}

#[test]
fn the_timer_signal_is_the_one_after_sigrtmin() {
    // SIGRTMIN is what VMMs commonly kick vCPU threads with.
    assert_eq!(lock_timer_signal(), libc::SIGRTMIN() + 1);
}
