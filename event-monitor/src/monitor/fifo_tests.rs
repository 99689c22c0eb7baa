//! `path=` naming a FIFO: start-up never hangs in `open(2)`.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread;
use std::time::Duration;

use serde_json::json;

use super::tests::parse;
use super::*;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", io::Error::last_os_error());
}

/// Runs `start` on a thread and waits for its answer with a deadline, so a
/// regression (a blocking open) fails the test instead of hanging it.
fn start_with_deadline(config: EventMonitorConfig) -> Result<(EventMonitor, EventSender)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(EventMonitor::start(&config));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("EventMonitor::start blocked on a FIFO")
}

#[test]
fn fifo_without_a_reader_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events");
    mkfifo(&fifo);
    match start_with_deadline(EventMonitorConfig::path(&fifo)) {
        Err(e @ Error::NoReader { .. }) => {
            assert!(e.to_string().contains("has no reader"), "{e}");
            assert!(e.to_string().contains(&*fifo.to_string_lossy()), "{e}");
        }
        Err(other) => panic!("expected NoReader, got {other}"),
        Ok(_) => panic!("a FIFO without a reader was accepted"),
    }
}

#[test]
fn fifo_with_a_reader_gets_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events");
    mkfifo(&fifo);
    // The consumer opens first (non-blocking: there is no writer yet).
    let consumer = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let (monitor, sender) = start_with_deadline(EventMonitorConfig::path(&fifo)).unwrap();
    sender.event("vm", "booted", [("n", json!(1))]);
    drop(sender);
    let report = monitor.shutdown();
    assert!(report.complete);
    assert_eq!(report.written, 1);
    // The monitor closed its end: reading ends at EOF after the line.
    let mut lines = BufReader::new(consumer).lines();
    let line = lines.next().unwrap().unwrap();
    let event = parse(&line);
    assert_eq!(event.event, "booted");
    assert!(lines.next().is_none());
}
