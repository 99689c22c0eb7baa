use std::fs::OpenOptions;
use std::path::Path;

use super::*;

fn two_descriptions() -> (tempfile::NamedTempFile, File, File) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp.path())
        .unwrap();
    let b = File::open(tmp.path()).unwrap();
    (tmp, a, b)
}

#[test]
fn shared_locks_coexist() {
    let (_tmp, a, b) = two_descriptions();
    assert_eq!(
        lock(&a, LockKind::Shared, Duration::ZERO).unwrap(),
        Duration::ZERO
    );
    assert_eq!(
        lock(&b, LockKind::Shared, Duration::ZERO).unwrap(),
        Duration::ZERO
    );
}

#[test]
fn exclusive_blocks_shared_and_zero_timeout_tries_once() {
    let (_tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    assert!(!try_lock(&b, LockKind::Shared).unwrap());
    match lock(&b, LockKind::Shared, Duration::ZERO) {
        Err(LockError::Timeout { waited }) => assert_eq!(waited, Duration::ZERO),
        other => panic!("expected a timeout, got {other:?}"),
    }
    unlock(&a).unwrap();
    assert!(try_lock(&b, LockKind::Shared).unwrap());
}

#[test]
fn shared_blocks_exclusive() {
    let (_tmp, a, b) = two_descriptions();
    lock(&b, LockKind::Shared, Duration::ZERO).unwrap();
    assert!(!try_lock(&a, LockKind::Exclusive).unwrap());
    unlock(&b).unwrap();
    assert!(try_lock(&a, LockKind::Exclusive).unwrap());
}

#[test]
fn wait_times_out_after_the_timeout() {
    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let timeout = Duration::from_millis(50);
    let start = Instant::now();
    match lock(&b, LockKind::Shared, timeout) {
        Err(LockError::Timeout { waited }) => {
            assert!(waited >= timeout, "waited only {waited:?}");
            assert!(start.elapsed() >= timeout);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The timer is disarmed: a later wait is not cut short by it.
    let holder = std::thread::spawn(move || {
        wait_for_blocked_waiter(tmp.path());
        unlock(&a).unwrap();
        tmp
    });
    // Blocked until the holder saw it waiting, then granted: not ended
    // early by the first wait's timer.
    let waited = lock(&b, LockKind::Shared, Duration::from_secs(20)).unwrap();
    assert!(waited > Duration::ZERO, "waited {waited:?}");
    drop(holder.join().unwrap());
}

#[test]
fn huge_timeouts_do_not_overflow() {
    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let holder = std::thread::spawn(move || {
        wait_for_blocked_waiter(tmp.path());
        unlock(&a).unwrap();
        tmp
    });
    assert!(lock(&b, LockKind::Shared, Duration::MAX).is_ok());
    drop(holder.join().unwrap());
}

/// Polls `/proc/locks` until a waiter is blocked on `path`'s lock.
fn wait_for_blocked_waiter(path: &Path) {
    holders::wait_for_blocked(&std::fs::metadata(path).unwrap(), 1);
}

#[test]
fn waiter_gets_the_lock_when_the_holder_unlocks() {
    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let waiter = std::thread::spawn(move || {
        lock(&b, LockKind::Shared, Duration::from_secs(20)).map(|w| (w, b))
    });
    // Unlock only once the waiter really sleeps in F_OFD_SETLKW.
    wait_for_blocked_waiter(tmp.path());
    unlock(&a).unwrap();
    let (waited, _b) = waiter.join().unwrap().unwrap();
    // It did not sit out the 20 s timeout.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[test]
fn timeout_works_with_the_signal_blocked() {
    let (_tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let result = std::thread::spawn(move || {
        // SAFETY: a zeroed sigset initialised by sigfillset; only this
        // thread's mask changes.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        lock(&b, LockKind::Shared, Duration::from_millis(20))
    })
    .join()
    .unwrap();
    assert!(matches!(result, Err(LockError::Timeout { .. })));
}

#[test]
fn many_threads_time_out_independently() {
    let (tmp, a, _b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let threads: Vec<_> = (1..=4u64)
        .map(|i| {
            let path = tmp.path().to_owned();
            std::thread::spawn(move || {
                let f = File::open(path).unwrap();
                let timeout = Duration::from_millis(10 * i);
                (timeout, lock(&f, LockKind::Shared, timeout))
            })
        })
        .collect();
    for t in threads {
        let (timeout, result) = t.join().unwrap();
        match result {
            Err(LockError::Timeout { waited }) => assert!(waited >= timeout),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}

#[test]
fn tiny_timeouts_never_hang() {
    // A timer that fires before the blocking call starts must not leave the
    // call blocked until the holder lets go (the holder never does here).
    let (_tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let start = Instant::now();
    for micros in (1..=400).map(|i| i % 40 + 1) {
        let result = lock(&b, LockKind::Shared, Duration::from_micros(micros));
        assert!(matches!(result, Err(LockError::Timeout { .. })));
    }
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_set_cancel_flag_ends_the_wait_at_the_next_signal() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        // Slices longer than the whole wait: only the signal can end it
        // before its 30 s deadline.
        let (timeout, check) = (Duration::from_secs(30), Duration::from_secs(3600));
        let flag = Some(&*flag);
        lock_since_checking(&b, LockKind::Shared, timeout, &mut None, flag, false, check)
    });
    let thread = rx.recv().unwrap();
    wait_for_blocked_waiter(tmp.path());
    cancel.store(true, Ordering::Release);
    // The kick: any signal whose handler has no SA_RESTART.
    // SAFETY: the thread is alive until joined below, and the signal's
    // handler (installed by the lock code) does nothing.
    let sent = unsafe { libc::pthread_kill(thread, lock_timer_signal()) };
    assert_eq!(sent, 0);
    let result = waiter.join().unwrap();
    assert!(
        matches!(result, Err(LockError::Cancelled { waited }) if waited < Duration::from_secs(20)),
        "{result:?}"
    );
}

#[test]
fn a_set_cancel_flag_ends_the_wait_without_any_signal() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let waiter = std::thread::spawn(move || {
        lock_or_cancel(&b, LockKind::Shared, Duration::from_secs(30), Some(&flag))
    });
    wait_for_blocked_waiter(tmp.path());
    // As a signal handler registered with SA_RESTART would: set the flag,
    // interrupt nothing. The wait's own slices notice it.
    cancel.store(true, Ordering::Release);
    let result = waiter.join().unwrap();
    assert!(
        matches!(result, Err(LockError::Cancelled { waited }) if waited < Duration::from_secs(20)),
        "{result:?}"
    );
    // Once set, the flag stops a wait before it starts.
    let (_tmp2, c, d) = two_descriptions();
    lock(&c, LockKind::Exclusive, Duration::ZERO).unwrap();
    let set = AtomicBool::new(true);
    assert!(matches!(
        lock_or_cancel(&d, LockKind::Shared, Duration::from_secs(30), Some(&set)),
        Err(LockError::Cancelled { waited }) if waited == Duration::ZERO
    ));
}

/// Sleeps `ms` in one `nanosleep`; whether a signal cut it short.
fn sleep_interrupted(ms: u64) -> bool {
    let request = libc::timespec {
        tv_sec: 0,
        tv_nsec: (ms * 1_000_000) as libc::c_long,
    };
    // SAFETY: `request` outlives the call; no remainder is asked for.
    let ret = unsafe { libc::nanosleep(&request, std::ptr::null_mut()) };
    ret == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
}

/// Takes a lease lock on `b` that has to wait for `a`'s holder (released
/// once the wait is seen), with `timeout`, on a new thread that then runs
/// `after` with the lock held.
fn leased_after_a_wait<T: Send + 'static>(
    timeout: Duration,
    after: impl FnOnce(&File) -> T + Send + 'static,
) -> T {
    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let path = tmp.path().to_owned();
    let waiter = std::thread::spawn(move || {
        let waited = lock_for_lease(&b, timeout, None).unwrap();
        assert!(waited > Duration::ZERO, "it waited");
        let _keep = tmp;
        after(&b)
    });
    wait_for_blocked_waiter(&path);
    unlock(&a).unwrap();
    waiter.join().unwrap()
}

/// One more lease wait on this thread for `b`, behind a new holder of
/// `a` released once the wait is seen.
fn wait_again(path: &Path, b: &File, timeout: Duration) -> Result<Duration, LockError> {
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let path = path.to_owned();
    let releaser = std::thread::spawn(move || {
        wait_for_blocked_waiter(&path);
        unlock(&a).unwrap();
    });
    let waited = lock_for_lease(b, timeout, None);
    releaser.join().unwrap();
    waited
}

#[test]
fn the_next_lease_wait_reuses_a_lingering_timer_that_fires_in_time() {
    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let path = tmp.path().to_owned();
    let releaser = std::thread::spawn(move || {
        wait_for_blocked_waiter(&path);
        unlock(&a).unwrap();
    });
    let arms = timer_arms();
    lock_for_lease(&b, Duration::from_secs(10), None).unwrap();
    releaser.join().unwrap();
    unlock(&b).unwrap();
    assert_eq!(timer_arms(), arms + 1, "the first wait arms the timer");
    // The next wait's deadline is later than the lingering timer's expiry:
    // reused, no system call.
    wait_again(tmp.path(), &b, Duration::from_secs(20)).unwrap();
    unlock(&b).unwrap();
    assert_eq!(timer_arms(), arms + 1, "reused");
    // A wait with a shorter timeout cannot use a timer that fires later.
    wait_again(tmp.path(), &b, Duration::from_secs(1)).unwrap();
    unlock(&b).unwrap();
    assert_eq!(
        timer_arms(),
        arms + 2,
        "armed again for the earlier deadline"
    );
    settle_timer();
    assert!(!sleep_interrupted(20), "settled");
}

#[test]
fn a_reused_timer_still_ends_the_wait_at_its_deadline() {
    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let path = tmp.path().to_owned();
    let releaser = std::thread::spawn(move || {
        wait_for_blocked_waiter(&path);
        unlock(&a).unwrap();
    });
    lock_for_lease(&b, Duration::from_millis(300), None).unwrap();
    releaser.join().unwrap();
    unlock(&b).unwrap();
    // A holder that never lets go: the reused timer (it fires about 300 ms
    // after the first wait began) cuts this wait short; the wait re-arms
    // for what is left of its own 400 ms and times out then.
    let holder = OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp.path())
        .unwrap();
    lock(&holder, LockKind::Exclusive, Duration::ZERO).unwrap();
    let start = Instant::now();
    match lock_for_lease(&b, Duration::from_millis(400), None) {
        Err(LockError::Timeout { waited }) => assert!(waited >= Duration::from_millis(400)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert!(!sleep_interrupted(20), "a failed wait disarms its timer");
}

#[test]
fn a_lingering_timer_fires_at_most_once() {
    let (first, second) = leased_after_a_wait(Duration::from_millis(30), |b| {
        // Past the wait's deadline with nothing else to wait for: one
        // signal, then the handler has disarmed the timer (no re-fire
        // every 1 ms).
        let first = sleep_interrupted(200);
        let second = sleep_interrupted(50);
        unlock(b).unwrap();
        (first, second)
    });
    assert!(first, "the deadline passed while the lease was held");
    assert!(!second, "the timer fired again");
}

#[test]
fn settling_disarms_a_lingering_timer() {
    let interrupted = leased_after_a_wait(Duration::from_millis(30), |b| {
        unlock(b).unwrap();
        settle_timer();
        sleep_interrupted(100)
    });
    assert!(!interrupted);
}

#[test]
fn a_plain_lock_disarms_its_timer_before_returning() {
    let (tmp, a, b) = two_descriptions();
    lock(&a, LockKind::Exclusive, Duration::ZERO).unwrap();
    let waiter = std::thread::spawn(move || {
        lock(&b, LockKind::Shared, Duration::from_millis(30)).unwrap();
        // Nothing lingers, even with the lock still held.
        let interrupted = sleep_interrupted(100);
        unlock(&b).unwrap();
        interrupted
    });
    wait_for_blocked_waiter(tmp.path());
    unlock(&a).unwrap();
    assert!(!waiter.join().unwrap());
}

#[test]
fn lock_errors_say_how_long_they_waited_in_milliseconds() {
    let waited = Duration::from_micros(20_500);
    assert_eq!(
        LockError::Timeout { waited }.to_string(),
        "Lock still held by another process after 20.500 ms"
    );
    assert_eq!(
        LockError::Cancelled { waited }.to_string(),
        "Lock wait cancelled after 20.500 ms"
    );
}
