//! Whole-file OFD locks with a bounded wait that does not poll.
//!
//! # The lock protocol
//!
//! The VMM and the tools that change SNP firmware, keys or the certs file
//! coordinate through `fcntl` open-file-description (OFD) locks on the
//! whole certs file (`l_start = l_len = 0`):
//!
//! * the VMM takes a **shared** lock before reading the file to answer a
//!   guest and keeps it until KVM has sent the guest's report request to
//!   firmware;
//! * a management tool takes an **exclusive** lock for the whole update
//!   (firmware commit, VLEK load, rewriting the file in place).
//!
//! OFD locks belong to the open file description, not to the process, so
//! two descriptors opened separately conflict even within one process, and
//! closing some other descriptor of the file does not drop them (classic
//! POSIX locks are dropped then). They do conflict with classic POSIX
//! `fcntl` locks, so either kind of writer is respected. They do **not**
//! conflict with `flock(2)`, which therefore cannot protect an update.
//!
//! # Waiting
//!
//! A conflicting lock is waited for with a blocking `F_OFD_SETLKW`, which
//! the kernel wakes as soon as the holder unlocks (a few microseconds), and
//! which uses no CPU meanwhile. The wait is cut off at the deadline by a
//! per-thread POSIX timer (`timer_create` with `SIGEV_THREAD_ID`) that
//! sends [`lock_timer_signal`] to the waiting thread; its handler does
//! nothing and is installed without `SA_RESTART`, so the signal makes
//! `F_OFD_SETLKW` fail with `EINTR`. A timeout of zero means a single
//! non-blocking try.
//!
//! # Cancelling
//!
//! A wait given a cancel flag ([`lock_or_cancel`]) ends with
//! [`LockError::Cancelled`] once the flag is set: at once if it is set
//! before the wait starts, at the next signal to the thread (a VMM's vCPU
//! kick), and in any case within [`CANCEL_CHECK`], because such a wait
//! arms its timer in slices of at most that long and looks at the flag
//! each time it fires. The slices matter for signals installed with
//! `SA_RESTART` (as most signal crates do), which the kernel restarts the
//! wait after instead of interrupting it; they cost one wake-up per slice
//! and only for waits that can be cancelled.

mod holders;
mod timer;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use holders::{Holder, holders};

/// The longest a cancellable wait goes without looking at its cancel flag.
pub const CANCEL_CHECK: Duration = Duration::from_millis(50);
pub use timer::lock_timer_signal;

/// Which lock to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// A read lock: many holders at once, none while a writer holds it.
    Shared,
    /// A write lock: one holder, no readers.
    Exclusive,
}

impl LockKind {
    fn fcntl_type(self) -> libc::c_short {
        match self {
            LockKind::Shared => libc::F_RDLCK as libc::c_short,
            LockKind::Exclusive => libc::F_WRLCK as libc::c_short,
        }
    }
}

/// Why a lock was not taken.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another holder kept a conflicting lock past the timeout.
    #[error("Lock still held by another process after {}", fmt_wait(*.waited))]
    Timeout {
        /// How long this call waited.
        waited: Duration,
    },
    /// The lock call itself failed.
    #[error("Lock call failed")]
    Fcntl(#[source] io::Error),
    /// The caller's cancel flag was set while waiting (e.g. the VM is
    /// stopping); the wait ended at the next signal to the thread.
    #[error("Lock wait cancelled after {}", fmt_wait(*.waited))]
    Cancelled {
        /// How long this call waited.
        waited: Duration,
    },
    /// The per-thread timeout timer could not be set up.
    #[error("Cannot arm the lock timeout timer")]
    Timer(#[source] io::Error),
}

fn fmt_wait(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn whole_file(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value
    // (whole file from offset 0, l_pid 0 as OFD locks require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Issues one `F_OFD_SETLK`/`F_OFD_SETLKW` call.
fn setlk(file: &File, kind: libc::c_short, wait: bool) -> io::Result<()> {
    let fl = whole_file(kind);
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: the fd is valid for the lifetime of `file`, and `fl` is a
    // properly initialised `flock` that outlives the call.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn is_conflict(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

/// Tries once to take the lock. `Ok(false)` when another holder conflicts.
pub fn try_lock(file: &File, kind: LockKind) -> io::Result<bool> {
    match setlk(file, kind.fcntl_type(), false) {
        Ok(()) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes a whole-file OFD lock on `file`, waiting at most `timeout` for a
/// conflicting holder to let go. Returns how long it waited.
///
/// Taking a lock the same open file description already holds converts
/// it (shared to exclusive or back) and succeeds at once.
pub fn lock(file: &File, kind: LockKind, timeout: Duration) -> Result<Duration, LockError> {
    lock_or_cancel(file, kind, timeout, None)
}

/// [`lock`], but a wait also ends, with [`LockError::Cancelled`], when
/// `cancel` is set and the thread receives any signal (a VMM sets its stop
/// flag, then kicks the vCPU thread with a signal whose handler has no
/// `SA_RESTART`).
pub fn lock_or_cancel(
    file: &File,
    kind: LockKind,
    timeout: Duration,
    cancel: Option<&AtomicBool>,
) -> Result<Duration, LockError> {
    if try_lock(file, kind).map_err(LockError::Fcntl)? {
        return Ok(Duration::ZERO);
    }
    let start = Instant::now();
    // Never start waiting once the caller is stopping.
    if cancel.is_some_and(|c| c.load(Ordering::Acquire)) {
        return Err(LockError::Cancelled {
            waited: Duration::ZERO,
        });
    }
    if timeout.is_zero() {
        return Err(LockError::Timeout {
            waited: Duration::ZERO,
        });
    }
    // A timeout too large to add is as good as none (years).
    let deadline = start.checked_add(timeout);
    loop {
        let now = Instant::now();
        let remaining = match deadline {
            Some(deadline) if now >= deadline => {
                // The holder may have let go as the timer fired: one last
                // try, so that race does not cost the guest a retry.
                if try_lock(file, kind).map_err(LockError::Fcntl)? {
                    return Ok(start.elapsed());
                }
                return Err(LockError::Timeout {
                    waited: now - start,
                });
            }
            Some(deadline) => deadline - now,
            None => timeout,
        };
        let remaining = match cancel {
            Some(_) => remaining.min(CANCEL_CHECK),
            None => remaining,
        };
        let armed = timer::ArmedTimer::arm(remaining).map_err(LockError::Timer)?;
        let result = setlk(file, kind.fcntl_type(), true);
        drop(armed);
        match result {
            Ok(()) => return Ok(start.elapsed()),
            // Our timer, or any other signal: re-check the deadline.
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                if cancel.is_some_and(|c| c.load(Ordering::Acquire)) {
                    return Err(LockError::Cancelled {
                        waited: start.elapsed(),
                    });
                }
            }
            Err(e) => return Err(LockError::Fcntl(e)),
        }
    }
}

/// Releases whatever OFD lock `file`'s open file description holds.
/// Closing the last descriptor of the description releases it too.
pub fn unlock(file: &File) -> io::Result<()> {
    setlk(file, libc::F_UNLCK as libc::c_short, false)
}

#[cfg(test)]
mod tests;
