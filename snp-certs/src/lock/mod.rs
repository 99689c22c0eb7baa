//! OFD locks on the certs file with a bounded wait that does not poll,
//! and writers that new readers queue behind.
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
//!
//! # Writers first: the intent byte
//!
//! Linux grants a shared lock to a newcomer whenever it does not conflict
//! with the locks *held*, even while a writer is blocked waiting: readers
//! that overlap each other without pause (guests that hammer the request)
//! would keep a plain writer out until its timeout. So a writer announces
//! itself first, and our readers queue behind it:
//!
//! * the **intent byte** is the one byte at [`INTENT_OFFSET`] (2^62), far
//!   beyond the end of any real certs file;
//! * our **writer** ([`LockKind::Exclusive`]) first takes an exclusive lock
//!   on the intent byte (waiting, within its timeout, for an earlier writer
//!   of ours), then the exclusive lock on the whole file (`l_len = 0`, the
//!   range QEMU and every plain tool use), which covers the intent byte
//!   too. If the second wait fails, the intent byte is released before
//!   returning;
//! * our **reader** ([`LockKind::Shared`]) first asks (`F_OFD_GETLK`, which
//!   takes nothing) whether a shared lock on the intent byte would
//!   conflict. If not, it takes its shared lock on `[0, INTENT_OFFSET)`,
//!   every byte a certs file can have, but not the intent byte. If so, a
//!   writer holds or waits, and the reader waits behind it (within its
//!   timeout, with the same timer), in one sleep: when the conflicting
//!   lock starts at offset 0 (a whole-file lock: a plain writer, or ours
//!   once it holds the file), for its range alone, which that lock's
//!   release frees together with the byte; when it is the intent byte
//!   alone (our writer announced itself and waits for readers), for the
//!   range and the byte together (`[0, INTENT_OFFSET]`), dropping the byte
//!   as soon as it has it.
//!
//! Every pairing, ours with ours and ours with whole-file lockers such as
//! QEMU's `qemu_lock_fd` (rows hold, columns ask):
//!
//! | held by \ asked by | our reader | plain reader | our writer | plain writer |
//! | --- | --- | --- | --- | --- |
//! | our reader | shares | shares | waits | waits |
//! | plain reader | shares | shares | waits (at the intent byte) | waits |
//! | our writer | waits (at the intent byte) | waits | waits (at the intent byte) | waits |
//! | plain writer | waits (at the intent byte) | waits | waits (at the intent byte) | waits |
//!
//! While our writer **waits** for readers to go, new readers of ours wait
//! at the intent byte instead of extending the overlap, and so do plain
//! readers (their whole-file range covers the byte). Readers already
//! holding a lock keep it; the writer waits for them, within its timeout.
//! A plain writer that waits gets no such priority over our readers (it
//! announces nothing), as before. No pairing that
//! conflicted with whole-file locks stops conflicting: our reader's range
//! and our writer's whole file both overlap any whole-file lock.
//!
//! A reader's [lease](crate::Lease) is its range lock; [`unlock`] drops
//! every lock the description holds, intent byte included. A reader that
//! passed the intent byte just before a writer announced itself still
//! takes its range lock, and the writer waits for it as for any reader
//! holding a lease: one request's worth. A reader never holds the intent
//! byte beyond its lock call, so it cannot hold off a writer's
//! announcement. Converting a description's exclusive lock to shared
//! leaves the bytes from the intent byte on exclusive until [`unlock`];
//! nothing in this crate does that.

pub(crate) mod holders;
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
pub use timer::{arms as timer_arms, lock_timer_signal, settle as settle_timer};

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

/// Offset of the writer's intent byte (see the module docs): 2^62, beyond
/// the end of any file a file system can hold.
pub const INTENT_OFFSET: i64 = 1 << 62;

/// A lock request on `len` bytes from `start` (`len` 0: to the end of any
/// file).
fn range(kind: libc::c_short, start: i64, len: i64) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value
    // (from offset 0, l_pid 0 as OFD locks require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// The whole file, as plain lockers (QEMU) take it.
fn whole_file(kind: libc::c_short) -> libc::flock {
    range(kind, 0, 0)
}

/// The intent byte.
fn intent(kind: libc::c_short) -> libc::flock {
    range(kind, INTENT_OFFSET, 1)
}

/// What our reader's lease covers: everything below the intent byte.
fn reader_range(kind: libc::c_short) -> libc::flock {
    range(kind, 0, INTENT_OFFSET)
}

/// Issues one `F_OFD_SETLK`/`F_OFD_SETLKW` call.
fn setlk(file: &File, fl: &libc::flock, wait: bool) -> io::Result<()> {
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: the fd is valid for the lifetime of `file`, and `fl` is a
    // properly initialised `flock` that outlives the call.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The lock of another description that conflicts with `fl`, if any
/// (`F_OFD_GETLK`, which takes nothing).
fn conflicting(file: &File, fl: &libc::flock) -> io::Result<Option<libc::flock>> {
    let mut probe = *fl;
    // SAFETY: the fd is valid for the lifetime of `file`, and `probe` is a
    // properly initialised `flock` the kernel overwrites in place.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((probe.l_type != libc::F_UNLCK as libc::c_short).then_some(probe))
}

/// Whether another description holds a lock that conflicts with `fl`.
#[cfg(test)]
fn conflicts(file: &File, fl: &libc::flock) -> io::Result<bool> {
    conflicting(file, fl).map(|holder| holder.is_some())
}

fn is_conflict(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

/// One non-blocking try; `Ok(false)` on a conflict.
fn try_one(file: &File, fl: &libc::flock) -> io::Result<bool> {
    match setlk(file, fl, false) {
        Ok(()) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn unlock_intent(file: &File) {
    if let Err(e) = setlk(file, &intent(libc::F_UNLCK as libc::c_short), false) {
        // Unlocking cannot conflict; closing the description drops it too.
        log::warn!("Releasing the writer intent byte failed: {e}");
    }
}

/// What the first, non-blocking try of a shared lock found.
enum SharedTry {
    /// The lock is taken.
    Taken,
    /// A lock conflicts with the intent byte (a writer holds or waits):
    /// the lock that does, as `F_OFD_GETLK` reported it.
    Writer(libc::flock),
    /// Nothing holds the intent byte, but an exclusive lock covers part
    /// of the reader's range.
    Range,
}

/// A reader's first try: ask whether a writer holds or waits at the intent
/// byte; if not, try the range lock.
fn try_shared(file: &File) -> io::Result<SharedTry> {
    let t = LockKind::Shared.fcntl_type();
    // Only an exclusive lock conflicts with a shared one, and two cannot
    // coexist on one byte: this is *the* writer at the intent byte.
    if let Some(writer) = conflicting(file, &intent(t))? {
        return Ok(SharedTry::Writer(writer));
    }
    Ok(if try_one(file, &reader_range(t))? {
        SharedTry::Taken
    } else {
        SharedTry::Range
    })
}

/// Tries once to take the lock. `Ok(false)` when another holder conflicts
/// (for a reader: also when a writer of ours is waiting).
pub fn try_lock(file: &File, kind: LockKind) -> io::Result<bool> {
    let t = kind.fcntl_type();
    match kind {
        LockKind::Shared => Ok(matches!(try_shared(file)?, SharedTry::Taken)),
        LockKind::Exclusive => {
            if !try_one(file, &intent(t))? {
                return Ok(false);
            }
            match try_one(file, &whole_file(t)) {
                Ok(true) => Ok(true),
                other => {
                    unlock_intent(file);
                    other
                }
            }
        }
    }
}

/// Takes the lock on `file` (see the module docs for the ranges), waiting
/// at most `timeout` for a conflicting holder to let go. Returns how long
/// it waited.
///
/// Taking a lock the same open file description already holds converts
/// it (shared to exclusive) and succeeds at once.
pub fn lock(file: &File, kind: LockKind, timeout: Duration) -> Result<Duration, LockError> {
    lock_or_cancel(file, kind, timeout, None)
}

/// The deadline and cancel flag of one lock call.
struct Wait<'a> {
    start: Instant,
    deadline: Option<Instant>,
    timeout: Duration,
    cancel: Option<&'a AtomicBool>,
    /// With a cancel flag: the longest slice of the wait between two
    /// looks at the flag ([`CANCEL_CHECK`]).
    check: Duration,
    /// Whether a wait that got its lock leaves the timer lingering for
    /// [`unlock`] to disarm (see [`lock_for_lease`]).
    linger: bool,
}

impl Wait<'_> {
    /// Waits for `fl`: a blocking `F_OFD_SETLKW` cut off by the timer.
    fn wait_for(&self, file: &File, fl: &libc::flock) -> Result<(), LockError> {
        loop {
            let now = Instant::now();
            let remaining = match self.deadline {
                Some(deadline) if now >= deadline => {
                    // The holder may have let go as the timer fired: one
                    // last try, so that race does not cost the guest a
                    // retry.
                    if try_one(file, fl).map_err(LockError::Fcntl)? {
                        return Ok(());
                    }
                    return Err(LockError::Timeout {
                        waited: now - self.start,
                    });
                }
                Some(deadline) => deadline - now,
                None => self.timeout,
            };
            let remaining = match self.cancel {
                Some(_) => remaining.min(self.check),
                None => remaining,
            };
            let armed = if self.linger {
                timer::ArmedTimer::arm_or_reuse(remaining)
            } else {
                timer::ArmedTimer::arm(remaining)
            }
            .map_err(LockError::Timer)?;
            let result = setlk(file, fl, true);
            if result.is_ok() && self.linger {
                armed.linger();
            } else {
                drop(armed);
            }
            match result {
                Ok(()) => return Ok(()),
                // Our timer, or any other signal: re-check the deadline.
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if self.cancel.is_some_and(|c| c.load(Ordering::Acquire)) {
                        return Err(LockError::Cancelled {
                            waited: self.start.elapsed(),
                        });
                    }
                }
                Err(e) => return Err(LockError::Fcntl(e)),
            }
        }
    }
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
    let mut since = None;
    let waited = lock_since(file, kind, timeout, &mut since, cancel, false)?;
    Ok(match (waited, since) {
        (true, Some(start)) => start.elapsed(),
        _ => Duration::ZERO,
    })
}

/// A reader's shared lock for a lease, as a vCPU takes it: [`lock_or_cancel`]
/// with [`LockKind::Shared`], except that a wait leaves its timeout timer
/// armed ("lingering") once it has the lock, and the thread's next such
/// wait reuses it when it fires no later than that wait's deadline. That
/// takes the timer's system calls out of most waits, and out of the time
/// between the writer's unlock and the reader holding the lock. The
/// price: a lingering timer that fires while the thread does something
/// else interrupts one system call with `EINTR` (its handler then disarms
/// it), no later than the deadline of the wait that armed it. A vCPU
/// thread sees that as one more kick; use it only on threads that handle
/// `EINTR`, or call [`timer::settle`](settle_timer) when done.
pub fn lock_for_lease(
    file: &File,
    timeout: Duration,
    cancel: Option<&AtomicBool>,
) -> Result<Duration, LockError> {
    let mut since = None;
    let waited = lock_since(file, LockKind::Shared, timeout, &mut since, cancel, true)?;
    Ok(match (waited, since) {
        (true, Some(start)) => start.elapsed(),
        _ => Duration::ZERO,
    })
}

/// [`lock_or_cancel`] for one step of a longer request (open, lock,
/// re-check, perhaps again): `since` is when the request's clock started.
/// The deadline is `since + timeout`, so all the steps together never wait
/// longer than `timeout`; if `since` is `None` when a wait must begin, it
/// is set to now (a request that never waits reads no clock). `linger`:
/// as [`lock_for_lease`]. Returns whether it waited (as opposed to taking
/// the lock at the first try); errors report the time since `since`.
pub(crate) fn lock_since(
    file: &File,
    kind: LockKind,
    timeout: Duration,
    since: &mut Option<Instant>,
    cancel: Option<&AtomicBool>,
    linger: bool,
) -> Result<bool, LockError> {
    lock_since_checking(file, kind, timeout, since, cancel, linger, CANCEL_CHECK)
}

/// [`lock_since`], looking at the cancel flag at least every `check`
/// (tests stretch it to see a signal alone end a wait).
fn lock_since_checking(
    file: &File,
    kind: LockKind,
    timeout: Duration,
    since: &mut Option<Instant>,
    cancel: Option<&AtomicBool>,
    linger: bool,
    check: Duration,
) -> Result<bool, LockError> {
    let t = kind.fcntl_type();
    // The first try. A writer keeps the intent byte if it got it: it
    // announces itself before it starts waiting for the readers.
    let mut has_intent = false;
    let mut first = SharedTry::Range;
    let taken = match kind {
        LockKind::Shared => {
            first = try_shared(file).map_err(LockError::Fcntl)?;
            matches!(first, SharedTry::Taken)
        }
        LockKind::Exclusive => {
            has_intent = try_one(file, &intent(t)).map_err(LockError::Fcntl)?;
            has_intent && try_one(file, &whole_file(t)).map_err(LockError::Fcntl)?
        }
    };
    if taken {
        return Ok(false);
    }
    let start = *since.get_or_insert_with(Instant::now);
    let early = if cancel.is_some_and(|c| c.load(Ordering::Acquire)) {
        // Never start waiting once the caller is stopping.
        Some(LockError::Cancelled {
            waited: Duration::ZERO,
        })
    } else if timeout.is_zero() {
        // A single try waits for nothing.
        Some(LockError::Timeout {
            waited: Duration::ZERO,
        })
    } else {
        None
    };
    if let Some(e) = early {
        if has_intent {
            unlock_intent(file);
        }
        return Err(e);
    }
    let wait = Wait {
        start,
        // A timeout too large to add is as good as none (years).
        deadline: start.checked_add(timeout),
        timeout,
        cancel,
        check,
        linger,
    };
    match kind {
        LockKind::Shared => match first {
            // A lock from offset 0 over the intent byte (a plain writer's
            // whole-file lock, or ours once it holds the file): its
            // release frees the range and the byte together.
            SharedTry::Writer(writer) if writer.l_start == 0 => {
                wait.wait_for(file, &reader_range(t))?;
            }
            // Our writer announced itself and waits for readers: queue
            // behind it for the byte and the range in one sleep, then let
            // go of the byte at once so the next writer can announce
            // itself.
            SharedTry::Writer(_) => {
                wait.wait_for(file, &range(t, 0, INTENT_OFFSET + 1))?;
                unlock_intent(file);
            }
            SharedTry::Range | SharedTry::Taken => wait.wait_for(file, &reader_range(t))?,
        },
        LockKind::Exclusive => {
            if !has_intent {
                wait.wait_for(file, &intent(t))?;
            }
            if let Err(e) = wait.wait_for(file, &whole_file(t)) {
                unlock_intent(file);
                return Err(e);
            }
        }
    }
    Ok(true)
}

/// Releases whatever OFD lock `file`'s open file description holds.
/// Closing the last descriptor of the description releases it too.
pub fn unlock(file: &File) -> io::Result<()> {
    setlk(file, &whole_file(libc::F_UNLCK as libc::c_short), false)
}

#[cfg(test)]
mod edge_tests;
#[cfg(test)]
mod intent_tests;
#[cfg(test)]
mod tests;
