//! A per-thread one-shot POSIX timer that interrupts a blocking system
//! call on the thread that armed it.
//!
//! Each thread that waits for a lock gets one timer, created on first use
//! with `SIGEV_THREAD_ID` so the signal goes to that thread and no other,
//! and deleted when the thread exits. Arming returns a guard that disarms
//! the timer when dropped. The signal's handler is a no-op installed
//! without `SA_RESTART`: its only job is to make the blocked call return
//! `EINTR`.
//!
//! A signal that fires after the timer is armed but *before* the thread
//! enters the blocking call would be lost, and the call would then block
//! until the lock holder lets go. To close that window the timer re-fires
//! every [`RETRY_INTERVAL`] after its first expiry until it is disarmed, so
//! such a wait overruns its deadline by at most that interval. In the usual
//! case the first expiry interrupts the call and the timer is disarmed at
//! once. The waiting thread unblocks the signal before arming, so a
//! thread that inherited a blocked signal mask still times out.
//!
//! # Lingering
//!
//! Arming and disarming are system calls that program the CPU's timer
//! hardware; on these (virtual) machines each costs about as much as the
//! wake-up itself, and a wait that got its lock would disarm between the
//! wake-up and the return. A vCPU's lease wait ([`super::lock_for_lease`])
//! lets its timer *linger* instead ([`ArmedTimer::linger`]): it stays
//! armed after the wait, and the thread's next lease wait reuses it
//! without a system call when it expires no later than that wait's own
//! deadline ([`ArmedTimer::arm_or_reuse`]; a timer that would fire too late
//! is armed again). A lingering timer that fires while the thread is not
//! waiting is disarmed by its own handler: at most one signal per armed
//! timer (two if it fires in the instant the wait succeeds), each
//! interrupting at most one system call of the thread with `EINTR`, which
//! a vCPU sees as one more kick, and no later than the deadline of the
//! wait that armed it (at most the longest `certs-timeout`, 1 s). If it
//! fires during a wait, that wait finds its own deadline not reached and
//! arms the timer for it.
//!
//! The lingering state is a thread-local atomic that the waiting thread
//! takes with one swap and the handler with one compare-exchange, so the
//! two cannot both own the armed timer.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The signal the lock timer sends: `SIGRTMIN() + 1`.
///
/// The handler is installed process-wide, so a VMM embedding this crate
/// must not use this signal for anything else anywhere in the process. (`SIGRTMIN()` itself is
/// commonly used to kick vCPU threads; a kick that lands during a lock
/// wait only makes the wait re-check its deadline.)
pub fn lock_timer_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// How often the timer re-fires after its first expiry (see the module
/// docs).
pub const RETRY_INTERVAL: Duration = Duration::from_millis(1);

/// The handler: does nothing but end the blocked call, and disarms a
/// lingering timer (see the module docs). `timer_settime` is
/// async-signal-safe; the thread locals it touches are an atomic and a
/// plain cell, both const-initialised.
extern "C" fn on_lock_timer(_: libc::c_int) {
    let lingering = LINGERING.with(|l| {
        l.compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    });
    if !lingering {
        return;
    }
    // (A timer id is a number: the first one is 0, a null pointer.)
    if let Some(id) = TIMER_ID.with(Cell::get) {
        let off = libc::itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(Duration::ZERO),
        };
        // SAFETY: `id` is this thread's live timer (set when it was
        // created, cleared before it is deleted); `off` outlives the call.
        unsafe { libc::timer_settime(id, 0, &off, std::ptr::null_mut()) };
    }
}

/// Installs the no-op handler once per process.
fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: zeroed `sigaction` is a valid starting value; we then set
        // the handler (an `extern "C"` fn that touches nothing, hence
        // async-signal-safe), an empty mask, and flags without SA_RESTART.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_lock_timer as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = 0;
            if libc::sigaction(lock_timer_signal(), &action, std::ptr::null_mut()) == -1 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

/// Makes sure the calling thread can receive the timer signal.
fn unblock_signal() -> io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset before use and outlives
    // the calls; pthread_sigmask only changes this thread's mask.
    let ret = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, lock_timer_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// The calling thread's timer.
struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    fn create() -> io::Result<ThreadTimer> {
        install_handler()?;
        // SAFETY: zeroed `sigevent` is valid; the fields SIGEV_THREAD_ID needs
        // are set below. `timer_create` writes the new id into `id`.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = lock_timer_signal();
            event.sigev_notify_thread_id = libc::gettid();
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(ThreadTimer(id))
        }
    }

    /// Fires after `after`, then every `interval` (zero: once);
    /// `after == Duration::ZERO` disarms.
    fn set(&self, after: Duration, interval: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(after),
        };
        // SAFETY: `self.0` is a live timer owned by this thread; `spec` is
        // initialised and outlives the call.
        let ret = unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        LINGERING.with(|l| l.store(false, Ordering::Release));
        TIMER_ID.with(|id| id.set(None));
        // SAFETY: the timer was created by `create` and is deleted once.
        unsafe {
            libc::timer_delete(self.0);
        }
    }
}

thread_local! {
    static TIMER: RefCell<Option<ThreadTimer>> = const { RefCell::new(None) };
    /// This thread's timer id, for the signal handler.
    static TIMER_ID: Cell<Option<libc::timer_t>> = const { Cell::new(None) };
    /// Whether this thread's timer lingers (see the module docs).
    static LINGERING: AtomicBool = const { AtomicBool::new(false) };
    /// When this thread's timer, armed, first fires.
    static EXPIRY: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How many times this thread armed its timer (for tests).
    static ARMS: Cell<u64> = const { Cell::new(0) };
}

/// How many times the calling thread armed its lock timer (a system
/// call each time).
pub fn arms() -> u64 {
    ARMS.with(Cell::get)
}

/// An armed timer; disarmed when dropped.
pub(super) struct ArmedTimer(());

impl ArmedTimer {
    /// Arms this thread's timer to fire after `after` (at least 1 ns), then
    /// every [`RETRY_INTERVAL`] until the guard is dropped.
    pub(super) fn arm(after: Duration) -> io::Result<ArmedTimer> {
        // Arming replaces a lingering timer.
        LINGERING.with(|l| l.store(false, Ordering::Release));
        unblock_signal()?;
        let after = after.max(Duration::from_nanos(1));
        TIMER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let timer = ThreadTimer::create()?;
                TIMER_ID.with(|id| id.set(Some(timer.0)));
                *slot = Some(timer);
            }
            match slot.as_ref() {
                Some(timer) => timer.set(after, RETRY_INTERVAL),
                None => Err(io::Error::other("thread timer missing")),
            }
        })?;
        ARMS.with(|n| n.set(n.get() + 1));
        EXPIRY.with(|e| e.set(Instant::now().checked_add(after)));
        Ok(ArmedTimer(()))
    }

    /// [`ArmedTimer::arm`], unless this thread's timer lingers and fires
    /// no later than `after` from now: then it is taken over as it is,
    /// without a system call (see the module docs).
    pub(super) fn arm_or_reuse(after: Duration) -> io::Result<ArmedTimer> {
        // One swap: either this thread or the handler owns the timer.
        if LINGERING.with(|l| l.swap(false, Ordering::AcqRel)) {
            let deadline = Instant::now().checked_add(after);
            let fits = match (EXPIRY.with(Cell::get), deadline) {
                (Some(expiry), Some(deadline)) => expiry <= deadline,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if fits {
                return Ok(ArmedTimer(()));
            }
        }
        ArmedTimer::arm(after)
    }

    /// Leaves the timer armed, for the thread's next wait to reuse or its
    /// own handler to disarm: see the module docs.
    pub(super) fn linger(self) {
        LINGERING.with(|l| l.store(true, Ordering::Release));
        std::mem::forget(self);
    }
}

/// Disarms this thread's timer.
fn disarm() {
    TIMER.with(|cell| {
        if let Some(timer) = cell.borrow().as_ref() {
            // Disarming a live timer cannot fail; a failure would only
            // mean a spurious EINTR later, which callers handle.
            let _ = timer.set(Duration::ZERO, Duration::ZERO);
        }
    });
    EXPIRY.with(|e| e.set(None));
}

impl Drop for ArmedTimer {
    fn drop(&mut self) {
        disarm();
    }
}

/// Disarms this thread's timer if it lingers; does nothing (and makes no
/// system call) otherwise. For a thread that is done with lease waits and
/// wants no late signal.
pub fn settle() {
    if LINGERING.with(|l| l.swap(false, Ordering::AcqRel)) {
        disarm();
    }
}
