//! Tests with pipes and raw file descriptors as the output.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::tests::{parse, wait_until};
use super::*;
use crate::writer::BATCH_BYTES;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two c_ints, as pipe2(2) requires.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn set_nonblocking(fd: &OwnedFd, on: bool) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        assert!(flags >= 0);
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags), 0);
    }
}

/// Fills the pipe so that the next blocking write to it blocks.
fn fill_pipe(write: OwnedFd) -> OwnedFd {
    set_nonblocking(&write, true);
    let mut file = File::from(write);
    for chunk in [&[b'#'; 4096][..], &[b'#'][..]] {
        loop {
            match file.write(chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling pipe: {e}"),
            }
        }
    }
    let write = OwnedFd::from(file);
    set_nonblocking(&write, false);
    write
}

#[test]
fn full_queue_drops_and_counts_instead_of_blocking() {
    const CAPACITY: usize = 8;
    const SENT: u64 = 2000;
    const PAD: usize = 1024;
    let (read, write) = pipe();
    let write = fill_pipe(write);
    let config = EventMonitorConfig::fd(write.into_raw_fd()).with_capacity(CAPACITY);
    let (monitor, events) = EventMonitor::start(&config).unwrap();

    let (done_tx, done_rx) = mpsc::channel();
    let sender = events.clone();
    let started = Instant::now();
    let producer = thread::spawn(move || {
        let pad = "x".repeat(PAD);
        for seq in 0..SENT {
            sender.event("test", "fill", [("seq", json!(seq)), ("pad", json!(pad))]);
        }
        done_tx.send(started.elapsed()).unwrap();
    });
    let took = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("event() blocked while the consumer is stuck");
    producer.join().unwrap();
    assert!(took < Duration::from_secs(10), "sending took {took:?}");

    // The writer is stuck on the full pipe. Before blocking it took at most one
    // batch off the queue (each line is longer than PAD bytes); the queue holds
    // CAPACITY more. Everything else must have been dropped and counted.
    let taken_at_most = (BATCH_BYTES / PAD + 1) as u64;
    let dropped = events.dropped();
    assert!(
        dropped >= SENT - CAPACITY as u64 - taken_at_most,
        "only {dropped} of {SENT} dropped"
    );
    assert_eq!(events.written(), 0);

    // The consumer goes away: the blocked write fails (EPIPE) and the writer
    // drains the rest, counting every event.
    drop(read);
    let report = monitor.shutdown();
    assert!(report.complete);
    assert_eq!((report.written, report.dropped), (0, SENT));
}

#[test]
fn closed_reader_counts_losses_without_panicking_even_with_default_sigpipe() {
    let (read, write) = pipe();
    drop(read);
    // Rust ignores SIGPIPE; a C host might not. The writer thread blocks it, so
    // the process survives even with the default action (termination).
    // SAFETY: changes this test process's SIGPIPE disposition; restored below.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (monitor, events) =
        EventMonitor::start(&EventMonitorConfig::fd(write.into_raw_fd())).unwrap();
    for seq in 0..100 {
        events.event("test", "seq", [("seq", json!(seq))]);
    }
    assert!(
        wait_until(10, || events.dropped() == 100),
        "dropped {}",
        events.dropped()
    );
    let report = monitor.shutdown();
    // SAFETY: restores the disposition saved above.
    unsafe { libc::signal(libc::SIGPIPE, previous) };
    assert_eq!(
        report,
        ShutdownReport {
            written: 0,
            dropped: 100,
            complete: true
        }
    );
}

#[test]
fn shutdown_wait_is_bounded_when_the_consumer_is_stuck() {
    let (read, write) = pipe();
    let write = fill_pipe(write);
    let (monitor, events) =
        EventMonitor::start(&EventMonitorConfig::fd(write.into_raw_fd())).unwrap();
    events.event("test", "stuck", []);
    let started = Instant::now();
    let report = monitor.shutdown_timeout(Duration::from_millis(200));
    let took = started.elapsed();
    assert!(!report.complete);
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // Events after shutdown began are dropped, not queued.
    events.event("test", "late", []);
    assert!(events.dropped() >= 1);
    // Let the detached writer finish: its write now fails with EPIPE.
    drop(read);
    assert!(
        wait_until(10, || events.dropped() == 2),
        "dropped {}",
        events.dropped()
    );
}

#[test]
fn fd_target_is_written_and_closed_by_the_monitor() {
    let (read, write) = pipe();
    let (monitor, events) =
        EventMonitor::start(&EventMonitorConfig::fd(write.into_raw_fd())).unwrap();
    events.event("vm", "shutdown", [("reason", json!("api"))]);
    assert!(monitor.shutdown().complete);
    // The monitor owned the write end and closed it: reading reaches EOF.
    let mut out = String::new();
    File::from(read).read_to_string(&mut out).unwrap();
    let event = parse(out.strip_suffix('\n').unwrap());
    assert_eq!(event.properties["reason"], "api");
}

#[test]
fn invalid_fds_are_refused_and_left_alone() {
    let err = EventMonitor::start(&EventMonitorConfig::fd(i32::MAX)).unwrap_err();
    assert!(matches!(err, Error::BadFd { fd: i32::MAX, .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    fs::write(&path, "x").unwrap();
    let read_only = File::open(&path).unwrap();
    let fd = read_only.as_raw_fd();
    let err = EventMonitor::start(&EventMonitorConfig::fd(fd)).unwrap_err();
    assert!(
        matches!(err, Error::NotWritable { fd: f } if f == fd),
        "{err}"
    );
    // Still open and ours.
    let mut content = String::new();
    (&read_only).read_to_string(&mut content).unwrap();
    assert_eq!(content, "x");
}
