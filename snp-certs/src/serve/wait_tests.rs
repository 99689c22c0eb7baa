//! What an answer says of the lock after a request had to wait for it, on
//! every path an answer can take once the lock is held (straight into the
//! guest's buffer, through the reader's buffer, a size answer, a buffer
//! the table does not fit, a fallback): the wait and that the lock was
//! tried; and that each delivery holds the lease until it is dropped.

#![allow(clippy::arithmetic_side_effects)]

use std::fs;
use std::time::Duration;

use super::tests::{MIB, can_lock_exclusive, memory, read, req, setup};
use super::*;
use crate::lock::{self, LockKind};
use vm_memory::{Bytes, GuestAddress};

/// Serves `request` with `reader` after a writer held the lock long
/// enough for the request to block on it (released once `/proc/locks`
/// shows it waiting); returns the outcome and the reader.
fn served_after_a_wait(
    path: &std::path::Path,
    config: &CertsConfig,
    reader: CertsReader,
    request: CertsRequest,
    mem: &std::sync::Arc<vm_memory::GuestMemoryMmap>,
) -> (Outcome, CertsReader) {
    let writer = fs::OpenOptions::new().write(true).open(path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let config = CertsConfig {
        certs_timeout: 1000,
        ..config.clone()
    };
    let mem = std::sync::Arc::clone(mem);
    let asking = std::thread::spawn(move || {
        let mut reader = reader;
        let out = serve(&mut reader, &config, &BusyBudget::new(), request, &*mem);
        (out, reader)
    });
    crate::lock::holders::wait_for_blocked(&writer.metadata().unwrap(), 1);
    lock::unlock(&writer).unwrap();
    asking.join().unwrap()
}

fn assert_waited(out: &Outcome, what: &str) {
    assert!(out.lock_tried, "{what}: the lock was tried");
    assert!(
        out.lock_wait > Duration::ZERO,
        "{what}: the wait is reported"
    );
}

#[test]
fn deliveries_after_a_wait_report_it_and_hold_the_lease() {
    let s = setup(5000);
    let mem = std::sync::Arc::new(memory(&[(0, MIB)]));
    // The first request validates the file in the reader's own buffer.
    let (out, reader) =
        served_after_a_wait(&s.path, &s.config, CertsReader::new(), req(0, 2), &mem);
    assert_eq!(
        (out.kind, out.reason, out.bytes),
        (OutcomeKind::Delivered, Reason::Served, 5000)
    );
    assert_waited(&out, "through the reader's buffer");
    assert!(out.lease.is_some());
    assert!(!can_lock_exclusive(&s.path), "the lease holds the lock");
    drop(out);
    assert!(can_lock_exclusive(&s.path));
    // The next goes straight into the guest's buffer.
    mem.write_slice(&[0xee; 8192], GuestAddress(0)).unwrap();
    let (out, _reader) = served_after_a_wait(&s.path, &s.config, reader, req(0, 2), &mem);
    assert_eq!(
        (out.kind, out.reason, out.bytes),
        (OutcomeKind::Delivered, Reason::Served, 5000)
    );
    assert_waited(&out, "straight into the guest's buffer");
    assert_eq!(read(&mem, 0, 5000), s.bytes);
    assert!(out.lease.is_some());
    assert!(!can_lock_exclusive(&s.path), "the lease holds the lock");
    drop(out);
    assert!(can_lock_exclusive(&s.path));
}

#[test]
fn a_size_answer_after_a_wait_reports_it_and_holds_nothing() {
    let s = setup(5000);
    let mem = std::sync::Arc::new(memory(&[(0, MIB)]));
    let (out, _) = served_after_a_wait(&s.path, &s.config, CertsReader::new(), req(0, 0), &mem);
    assert_eq!((out.kind, out.npages), (OutcomeKind::NeedPages, 2));
    assert_waited(&out, "size query");
    assert!(out.lease.is_none());
    assert!(can_lock_exclusive(&s.path));
}

#[test]
fn a_table_that_does_not_fit_guest_ram_after_a_wait_fails_and_reports_it() {
    let s = setup(5000);
    // The buffer's second page is past the end of RAM: the table is not
    // all in guest RAM, the guest's own fault, found once the file is read.
    let mem = std::sync::Arc::new(memory(&[(0, MIB)]));
    let (out, _) = served_after_a_wait(
        &s.path,
        &s.config,
        CertsReader::new(),
        req(MIB - 4096, 2),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Failed, Reason::OutsideGuestRam)
    );
    assert_waited(&out, "outside RAM");
    assert!(!out.fallback);
    assert!(out.lease.is_none());
    assert!(can_lock_exclusive(&s.path));
}

#[test]
fn a_fallback_whose_empty_table_cannot_be_written_still_says_it_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs");
    fs::write(&path, [7u8; 100]).unwrap();
    let config = CertsConfig::with_file(&path);
    let mem = std::sync::Arc::new(memory(&[(0, MIB)]));
    // An invalid file (the fallback, after a wait) for a buffer whose
    // first bytes are past the end of RAM.
    let (out, _) = served_after_a_wait(&path, &config, CertsReader::new(), req(MIB, 1), &mem);
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Failed, Reason::OutsideGuestRam)
    );
    assert!(out.fallback, "it stands for the fallback");
    assert_waited(&out, "the fallback");
}

#[test]
fn a_table_too_large_for_guests_after_a_wait_is_the_fallback_and_reports_it() {
    let s = setup(crate::table::LINUX_GUEST_MAX_SIZE + 1);
    let mem = std::sync::Arc::new(memory(&[(0, MIB)]));
    let (out, _) = served_after_a_wait(&s.path, &s.config, CertsReader::new(), req(0, 8), &mem);
    assert_eq!(
        (out.kind, out.reason, out.fallback),
        (OutcomeKind::Delivered, Reason::ExceedsGuestLimit, true)
    );
    assert_waited(&out, "too large");
    assert!(out.lease.is_none());
}
