//! The answers when the file cannot be served as it is: persistent faults
//! get the fallback at once; a held lock or a file that keeps changing is
//! busy, within the busy budget, and then the fallback.

#![allow(clippy::arithmetic_side_effects)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::tests::{MIB, memory, read, req, setup, table_of_size};
use super::*;
use crate::lock::{self, LockKind};
use crate::table::{EMPTY_TABLE, LINUX_GUEST_MAX_SIZE};

#[test]
fn persistent_faults_get_the_empty_table_at_once() {
    let mem = memory(&[(0, MIB)]);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    fs::write(&bad, [1u8; 100]).unwrap();
    let big = dir.path().join("big");
    fs::write(&big, table_of_size(LINUX_GUEST_MAX_SIZE + 1)).unwrap();
    let mut reader = CertsReader::new();
    let cases = [
        (dir.path().join("missing"), Reason::FileMissing, false),
        (dir.path().to_owned(), Reason::FileNotRegular, false),
        (bad, Reason::FileInvalid, true),
        (big, Reason::ExceedsGuestLimit, true),
    ];
    for (path, reason, tried) in cases {
        let budget = BusyBudget::new();
        let config = CertsConfig::with_file(&path);
        mem.write_slice(&[0xee; 4096], GuestAddress(0)).unwrap();
        let out = serve(&mut reader, &config, &budget, req(0, 4), &mem);
        assert_eq!(
            (out.kind, out.reason, out.ret(), out.fallback),
            (OutcomeKind::Delivered, reason, 0, true),
            "{path:?}"
        );
        assert_eq!(out.lock_tried, tried, "{reason}");
        assert!(out.lease.is_none());
        let detail = out.detail(&config).unwrap();
        let expected = match reason {
            Reason::FileMissing => "does not exist",
            Reason::FileNotRegular => "is a directory, not a regular file",
            Reason::FileInvalid => "is not a valid certificate table: No terminator entry",
            _ => "Linux guests cannot receive more than 16384",
        };
        assert!(detail.contains(expected), "{detail}");
        assert_eq!(read(&mem, 0, 24), EMPTY_TABLE);
        assert_eq!(
            read(&mem, 24, 8),
            [0xee; 8],
            "only the empty table is written"
        );
        // The size query gets ret 0 and nothing written, as with no file.
        let out = serve(&mut reader, &config, &budget, req(0x8000, 0), &mem);
        assert_eq!(
            (out.kind, out.npages, out.fallback),
            (OutcomeKind::Delivered, 0, true)
        );
        // With on_error = busy the old answer stays.
        let busy = CertsConfig {
            on_error: OnError::Busy,
            ..config.clone()
        };
        let out = serve(&mut reader, &busy, &budget, req(0, 4), &mem);
        assert_eq!(
            (out.kind, out.reason, out.fallback),
            (OutcomeKind::Busy, reason, true)
        );
    }
    // Allowed large tables are served.
    let big = dir.path().join("big");
    let allowed = CertsConfig {
        allow_large: true,
        ..CertsConfig::with_file(&big)
    };
    let out = serve(&mut reader, &allowed, &BusyBudget::new(), req(0, 8), &mem);
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Delivered, Reason::Served)
    );
}

/// Serves `req` with `config` until an answer is not busy (a guest that
/// retries at once), timing each: every busy answer must come before the
/// budget, counted from the first busy answer, is spent, and the answer
/// that is not busy must come once it is. So the fallback comes after the
/// budget and no later than the first request after it: the budget is
/// neither shorter nor longer than configured. Returns that answer and
/// how many busy answers came before it.
///
/// The budget counts whole microseconds of the VMM's monotonic clock
/// (`Instant`, as the test's), so each bound allows one microsecond.
fn serve_until_not_busy(
    reader: &mut CertsReader,
    config: &CertsConfig,
    budget: &BusyBudget,
    mem: &vm_memory::GuestMemoryMmap,
) -> (Outcome, u64) {
    // As configured, in milliseconds.
    let limit = Duration::from_millis(config.busy_budget);
    let tick = Duration::from_micros(1);
    let started = Instant::now();
    let first = serve(reader, config, budget, req(0, 1), mem);
    // The streak began inside that call: between `started` and now.
    let streak_began_by = Instant::now();
    assert_eq!(
        (first.kind, first.reason, first.fallback, first.lock_tried),
        (OutcomeKind::Busy, Reason::LockTimeout, false, true)
    );
    let mut busy = 1;
    loop {
        let asked = Instant::now();
        let out = serve(reader, config, budget, req(0, 1), mem);
        let answered = Instant::now();
        if out.kind != OutcomeKind::Busy {
            // Not shorter: the streak is at least the budget.
            assert!(
                answered - started + tick > limit,
                "the fallback came {:?} after the first busy answer, before the {limit:?} budget",
                answered - started
            );
            return (out, busy);
        }
        // Not longer: busy only while the streak is shorter.
        assert!(
            asked - streak_began_by < limit + tick,
            "busy {:?} after the first busy answer: the {limit:?} budget was spent",
            asked - streak_began_by
        );
        busy += 1;
    }
}

#[test]
fn a_held_lock_is_busy_until_the_budget_is_spent_then_the_fallback() {
    let s = setup(100);
    let mem = memory(&[(0, MIB)]);
    let writer = fs::OpenOptions::new().write(true).open(&s.path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    for budget_ms in [40, 150] {
        let config = CertsConfig {
            certs_timeout: 0,
            busy_budget: budget_ms,
            ..s.config.clone()
        };
        mem.write_slice(&[0xee; 32], GuestAddress(0)).unwrap();
        let (out, busy) = serve_until_not_busy(&mut reader, &config, &budget, &mem);
        assert_eq!(
            (out.kind, out.reason, out.fallback, out.ret()),
            (OutcomeKind::Delivered, Reason::LockTimeout, true, 0)
        );
        assert!(busy > 1, "a guest asking again at once is told busy again");
        assert!(
            out.busy_streak >= Duration::from_millis(budget_ms),
            "{:?} reported",
            out.busy_streak
        );
        assert_eq!(
            budget.streak(),
            Duration::ZERO,
            "the fallback ends the streak"
        );
        assert_eq!(read(&mem, 0, 24), EMPTY_TABLE);
        assert_eq!(read(&mem, 24, 8), [0xee; 8]);
    }
    // The next request may wait for the writer again.
    let config = CertsConfig {
        certs_timeout: 0,
        ..s.config.clone()
    };
    let again = serve(&mut reader, &config, &budget, req(0, 1), &mem);
    assert_eq!((again.kind, again.fallback), (OutcomeKind::Busy, false));
    // A zero budget never answers busy.
    let never = CertsConfig {
        busy_budget: 0,
        ..config.clone()
    };
    let out = serve(&mut reader, &never, &BusyBudget::new(), req(0, 1), &mem);
    assert_eq!((out.kind, out.fallback), (OutcomeKind::Delivered, true));
    lock::unlock(&writer).unwrap();
    let out = serve(&mut reader, &config, &budget, req(0, 1), &mem);
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Delivered, Reason::Served)
    );
}

#[test]
fn a_served_answer_ends_the_busy_streak() {
    let s = setup(100);
    let mem = memory(&[(0, MIB)]);
    let writer = fs::OpenOptions::new().write(true).open(&s.path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let budget = BusyBudget::new();
    let config = CertsConfig {
        certs_timeout: 0,
        ..s.config.clone()
    };
    let mut reader = CertsReader::new();
    assert_eq!(
        serve(&mut reader, &config, &budget, req(0, 1), &mem).kind,
        OutcomeKind::Busy
    );
    // The busy answer started a streak: it grows (within a deadline).
    let deadline = Instant::now() + Duration::from_secs(20);
    while budget.streak() == Duration::ZERO {
        assert!(Instant::now() < deadline, "no streak after a busy answer");
        std::thread::yield_now();
    }
    lock::unlock(&writer).unwrap();
    assert_eq!(
        serve(&mut reader, &config, &budget, req(0, 1), &mem).kind,
        OutcomeKind::Delivered
    );
    assert_eq!(budget.streak(), Duration::ZERO);
}

#[test]
fn lock_timeout_is_busy_with_the_wait() {
    let s = setup(100);
    let mem = memory(&[(0, MIB)]);
    let writer = fs::OpenOptions::new().write(true).open(&s.path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let config = CertsConfig {
        certs_timeout: 20,
        ..s.config.clone()
    };
    let out = serve(
        &mut CertsReader::new(),
        &config,
        &BusyBudget::new(),
        req(0, 1),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Busy, Reason::LockTimeout)
    );
    assert!(out.lock_wait >= Duration::from_millis(20));
    let zero = CertsConfig {
        certs_timeout: 0,
        ..s.config.clone()
    };
    let out = serve(
        &mut CertsReader::new(),
        &zero,
        &BusyBudget::new(),
        req(0, 1),
        &mem,
    );
    assert_eq!(
        (out.reason, out.lock_wait),
        (Reason::LockTimeout, Duration::ZERO)
    );
    lock::unlock(&writer).unwrap();
    let out = serve(
        &mut CertsReader::new(),
        &zero,
        &BusyBudget::new(),
        req(0, 1),
        &mem,
    );
    assert_eq!(out.kind, OutcomeKind::Delivered);
}

/// Waits (with a deadline) until `/proc/locks` shows a process blocked
/// on a lock of `path`'s device and inode.
fn wait_for_blocked_waiter(path: &Path) {
    crate::lock::holders::wait_for_blocked(&fs::metadata(path).unwrap(), 1);
}

#[test]
fn an_invalid_file_found_after_a_wait_reports_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs");
    fs::write(&path, [7u8; 100]).unwrap();
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let config = CertsConfig {
        certs_timeout: 1000,
        on_error: OnError::Busy,
        ..CertsConfig::with_file(&path)
    };
    let request = std::thread::spawn(move || {
        let mem = memory(&[(0, MIB)]);
        let out = serve(
            &mut CertsReader::new(),
            &config,
            &BusyBudget::new(),
            req(0, 1),
            &mem,
        );
        (out.kind, out.reason, out.lock_wait, out.lock_tried)
    });
    // Unlock only once the request is seen blocked on the lock.
    wait_for_blocked_waiter(&path);
    lock::unlock(&writer).unwrap();
    let (kind, reason, lock_wait, tried) = request.join().unwrap();
    assert_eq!(
        (kind, reason, tried),
        (OutcomeKind::Busy, Reason::FileInvalid, true)
    );
    assert!(lock_wait > Duration::ZERO, "{lock_wait:?}");
}

#[test]
fn a_file_that_keeps_changing_is_reason_file_keeps_changing_and_transient() {
    let reason = Problem::File(crate::file::ReadError::KeepsChanging(9)).reason();
    assert_eq!(reason, Reason::FileKeepsChanging);
    assert_eq!(reason.as_str(), "file-keeps-changing");
    // Someone is replacing the file: busy while the budget lasts.
    assert_eq!(reason.fault(), Some(Fault::Transient));
}

#[test]
fn a_file_that_turns_invalid_never_reaches_the_guest() {
    let s = setup(5000);
    let mem = memory(&[(0, MIB)]);
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    // Served twice: the second time straight into the guest's buffer.
    for _ in 0..2 {
        let out = serve(&mut reader, &s.config, &budget, req(0, 2), &mem);
        assert_eq!((out.kind, out.bytes), (OutcomeKind::Delivered, 5000));
        assert_eq!(read(&mem, 0, 5000), s.bytes);
    }
    // Rewritten in place with bytes that are no table, of the same size.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&s.path, vec![0x41; 5000]).unwrap();
    mem.write_slice(&[0xee; 8192], GuestAddress(0)).unwrap();
    let out = serve(&mut reader, &s.config, &budget, req(0, 2), &mem);
    assert_eq!(
        (out.kind, out.reason, out.fallback),
        (OutcomeKind::Delivered, Reason::FileInvalid, true)
    );
    assert_eq!(read(&mem, 0, 24), EMPTY_TABLE);
    assert_eq!(
        read(&mem, 24, 8168),
        vec![0xee; 8168],
        "nothing of the file"
    );
}
