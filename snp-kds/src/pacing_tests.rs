//! The pacing protocol with a fake clock, and pacing files gone bad.

use std::os::unix::fs::symlink;
use std::sync::Mutex;

use super::*;

/// A clock that only moves when slept on, and records the sleeps.
struct FakeClock {
    now: Mutex<SystemTime>,
    sleeps: Mutex<Vec<Duration>>,
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        *self.now.lock().unwrap() += d;
        self.sleeps.lock().unwrap().push(d);
    }
}

fn clock() -> FakeClock {
    FakeClock {
        now: Mutex::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        sleeps: Mutex::new(Vec::new()),
    }
}

const BUDGET: Duration = Duration::from_secs(300);

fn stored(pacer: &Pacer) -> String {
    fs::read_to_string(pacer.path()).unwrap()
}

fn write_stored(pacer: &Pacer, text: &str) {
    fs::create_dir_all(pacer.path().parent().unwrap()).unwrap();
    fs::write(pacer.path(), text).unwrap();
}

#[test]
fn processes_queue_for_their_turns() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let interval = Duration::from_millis(1500);
    // Three pacers on one file stand for three processes.
    let a = Pacer::new(dir.path(), "kdsintf.amd.com", interval);
    let b = Pacer::new(dir.path(), "kdsintf.amd.com", interval);
    let c = Pacer::new(dir.path(), "kdsintf.amd.com", interval);
    assert_eq!(a.book(&clock, BUDGET).unwrap().wait, Duration::ZERO);
    // b and c book their turns before either has waited: each gets its own.
    assert_eq!(b.book(&clock, BUDGET).unwrap().wait, interval);
    assert_eq!(c.book(&clock, BUDGET).unwrap().wait, interval * 2);
    *clock.now.lock().unwrap() += Duration::from_secs(10);
    assert_eq!(a.book(&clock, BUDGET).unwrap().wait, Duration::ZERO);
    // Another host is paced on its own.
    let other = Pacer::new(dir.path(), "127.0.0.1:8080", interval);
    assert_eq!(other.book(&clock, BUDGET).unwrap().wait, Duration::ZERO);
    assert!(dir.path().join("pacing/127.0.0.1_8080").is_file());
    assert_eq!(file_name(""), "_");
    assert_eq!(file_name("../x"), "_.._x");
}

#[test]
fn a_turn_that_does_not_fit_the_budget_fails_at_once_and_books_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let a = Pacer::new(dir.path(), "kds", Duration::from_secs(1));
    a.defer(&clock, clock.now() + Duration::from_secs(600))
        .unwrap();
    let before = stored(&a);
    let e = a.book(&clock, Duration::from_secs(300)).unwrap_err();
    let KdsError::PacedTooLong { wait, budget, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(*wait, Duration::from_secs(600));
    assert_eq!(*budget, Duration::from_secs(300));
    assert!(e.is_retry_later());
    assert!(e.to_string().contains("in 600 s"), "{e}");
    assert_eq!(stored(&a), before, "a refused turn was booked");
    assert!(clock.sleeps.lock().unwrap().is_empty(), "it waited");
    // With enough budget the same turn is taken.
    let turn = a.book(&clock, Duration::from_secs(900)).unwrap();
    assert_eq!(turn.wait, Duration::from_secs(600));
}

#[test]
fn defer_moves_the_next_slot_for_everyone_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let a = Pacer::new(dir.path(), "kds", Duration::ZERO);
    let b = Pacer::new(dir.path(), "kds", Duration::ZERO);
    a.defer(&clock, clock.now() + Duration::from_secs(30))
        .unwrap();
    // An earlier deferral does not shorten it.
    a.defer(&clock, clock.now() + Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        b.book(&clock, BUDGET).unwrap().wait,
        Duration::from_secs(30)
    );
    // A Retry-After of a day is booked as the longest plausible one.
    a.defer(&clock, clock.now() + Duration::from_secs(86_400))
        .unwrap();
    let e = b.book(&clock, BUDGET).unwrap_err();
    let KdsError::PacedTooLong { wait, .. } = e else {
        panic!("{e:?}");
    };
    assert_eq!(wait, MAX_RETRY_AFTER);
}

#[test]
fn garbage_and_implausible_times_are_repaired_not_obeyed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let a = Pacer::new(dir.path(), "kds", Duration::from_secs(1));
    for text in [
        "not a time".to_owned(),
        "\u{fffd}\u{0}".to_owned(),
        // Ten days ahead: no Retry-After is ever booked that far.
        format!("{}\n", millis(clock.now() + Duration::from_secs(864_000))),
        format!("{}\n", u64::MAX),
    ] {
        write_stored(&a, &text);
        let turn = a.book(&clock, BUDGET).unwrap();
        assert_eq!(turn.wait, Duration::ZERO, "{text:?}");
        let note = turn.repaired.unwrap_or_else(|| panic!("{text:?}"));
        assert!(note.contains("repaired"), "{note}");
        // Rewritten with the next slot.
        assert_eq!(
            stored(&a),
            format!("{}\n", millis(clock.now() + Duration::from_secs(1)))
        );
        *clock.now.lock().unwrap() += Duration::from_secs(5);
    }
    // An empty (new) file is no repair.
    write_stored(&a, "");
    assert_eq!(a.book(&clock, BUDGET).unwrap().repaired, None);
}

#[test]
fn a_fifo_or_a_symlink_in_its_place_is_replaced_without_hanging_or_following() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let a = Pacer::new(dir.path(), "kds", Duration::from_secs(1));
    fs::create_dir_all(a.path().parent().unwrap()).unwrap();
    let fifo = std::ffi::CString::new(a.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let turn = a.book(&clock, BUDGET).unwrap();
    assert!(turn.repaired.unwrap().contains("not a regular file"));
    assert!(fs::symlink_metadata(a.path()).unwrap().is_file());

    // A symbolic link to a file elsewhere: that file is never written.
    let victim = dir.path().join("victim");
    fs::write(&victim, "keep me").unwrap();
    fs::remove_file(a.path()).unwrap();
    symlink(&victim, a.path()).unwrap();
    let turn = a.book(&clock, BUDGET).unwrap();
    assert!(turn.repaired.unwrap().contains("symbolic link"));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(fs::symlink_metadata(a.path()).unwrap().is_file());
}
