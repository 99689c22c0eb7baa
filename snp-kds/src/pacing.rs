//! A minimum interval between requests to one KDS host, shared by every
//! process on the host that uses the same cache directory.
//!
//! # File format and protocol
//!
//! `{cache}/pacing/{host}` holds one line: the earliest time (Unix
//! milliseconds, decimal) at which the next request to that host may be
//! sent, the next free *slot*. Before each request a process
//!
//! 1. opens the file (creating it) without blocking and without following
//!    a symbolic link, and takes the exclusive OFD lock on it (the same
//!    whole-file lock as certs files, [`snp_certs::lock`]). Nobody sleeps
//!    while holding it, so it is held for microseconds; the wait for it is
//!    bounded all the same;
//! 2. reads the slot. A file that does not hold a time, or holds a time
//!    further ahead than this crate ever books ([`MAX_AHEAD`]: a clock
//!    that jumped, a stray write), is **repaired, not obeyed**: counted as
//!    "no wait" and overwritten. A path that is not a regular file (a
//!    FIFO, a symbolic link, a file this user cannot open) is replaced by
//!    a fresh one first;
//! 3. takes the slot `max(slot, now)` if the wait until it fits in what is
//!    left of the caller's wait budget; if not, it books nothing and fails
//!    at once ([`KdsError::PacedTooLong`]);
//! 4. writes the next slot, `max(slot, now) + min_interval`, and unlocks;
//! 5. sleeps until its slot **without the lock**, so that other processes
//!    book the slots after it meanwhile and queue behind it, each waiting
//!    for its own turn.
//!
//! When KDS answers "too many requests" with a `Retry-After`,
//! [`Pacer::defer`] moves the slot further ahead (at most
//! [`MAX_RETRY_AFTER`]), so every process on the host waits it out, not
//! just the one that was told. The lock is released by the kernel if a
//! process dies holding it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snp_certs::lock::{self, LockKind};

use crate::cache::write_atomic;
use crate::clock::Clock;
use crate::error::KdsError;

/// Longest `Retry-After` ever booked for everyone: a longer one still ends
/// the fetch that was told (it cannot fit any sensible wait budget), but
/// the shared slot is moved at most this far.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Longest minimum interval between requests.
pub const MAX_MIN_INTERVAL: Duration = Duration::from_secs(60);

/// A stored slot further ahead than this is implausible: no process using
/// this crate books one (a deferral is at most [`MAX_RETRY_AFTER`], and an
/// hour more leaves room for 60 queued processes at the longest interval).
pub const MAX_AHEAD: Duration = Duration::from_secs(2 * 3600);

/// Longest wait for the pacing file's lock (held for microseconds by
/// well-behaved processes).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Spaces requests to one host.
#[derive(Debug, Clone)]
pub struct Pacer {
    path: PathBuf,
    host: String,
    min_interval: Duration,
}

/// A booked turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// How long to wait before the request.
    pub wait: Duration,
    /// What was wrong with the pacing file, if it had to be repaired.
    pub repaired: Option<String>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A host name made safe as a file name (`[A-Za-z0-9.-]`, others `_`).
fn file_name(host: &str) -> String {
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    }
}

/// What the pacing file says.
enum Stored {
    /// A plausible slot.
    Slot(SystemTime),
    /// Nothing yet (a new file).
    Empty,
    /// Something to repair, and what.
    Bad(String),
}

impl Pacer {
    /// A pacer for `host` with its file under `cache_dir`; `min_interval`
    /// is capped at [`MAX_MIN_INTERVAL`].
    pub fn new(cache_dir: &Path, host: &str, min_interval: Duration) -> Pacer {
        Pacer {
            path: cache_dir.join("pacing").join(file_name(host)),
            host: host.to_owned(),
            min_interval: min_interval.min(MAX_MIN_INTERVAL),
        }
    }

    /// The pacing file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cache_error(&self, source: io::Error) -> KdsError {
        KdsError::Cache {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the file for reading and writing: a regular file, never
    /// through a symbolic link, never blocking. `Ok(None)` when the path
    /// holds something else (to be replaced).
    fn open(&self) -> Result<Option<File>, KdsError> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| self.cache_error(e))?;
        }
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(&self.path);
        let file = match opened {
            Ok(file) => file,
            // ELOOP: a symbolic link; EACCES/EPERM: someone else's file;
            // ENXIO: a FIFO without a reader, a socket.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ELOOP | libc::EACCES | libc::EPERM | libc::ENXIO)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(self.cache_error(e)),
        };
        let regular = file
            .metadata()
            .map(|m| m.file_type().is_file())
            .map_err(|e| self.cache_error(e))?;
        Ok(regular.then_some(file))
    }

    /// Opens the file, replacing whatever is at its path if it is not a
    /// regular file this user can use. Returns the file and, if it had to
    /// be replaced, why.
    fn open_or_replace(&self) -> Result<(File, Option<String>), KdsError> {
        if let Some(file) = self.open()? {
            return Ok((file, None));
        }
        let what = match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => "a symbolic link",
            Ok(m) if m.file_type().is_file() => "a file this user cannot write",
            Ok(_) => "not a regular file",
            Err(_) => "unusable",
        };
        write_atomic(&self.path, b"0\n").map_err(|e| self.cache_error(e))?;
        match self.open()? {
            Some(file) => Ok((file, Some(format!("it was {what}")))),
            None => Err(self.cache_error(io::Error::other(format!(
                "it was {what} and could not be replaced"
            )))),
        }
    }

    /// Opens and exclusively locks the file, and runs `update` on what it
    /// holds; writes back the slot `update` returns, if any.
    fn with_locked<T>(
        &self,
        budget: Duration,
        update: impl FnOnce(Stored) -> (Option<SystemTime>, T),
    ) -> Result<T, KdsError> {
        let (mut file, replaced) = self.open_or_replace()?;
        lock::lock(&file, LockKind::Exclusive, budget.min(LOCK_WAIT)).map_err(|source| {
            let holders = lock::holders(&self.path)
                .ok()
                .filter(|h| !h.is_empty())
                .map(|h| {
                    let names: Vec<String> = h.iter().map(ToString::to_string).collect();
                    format!(" (held by {})", names.join(", "))
                })
                .unwrap_or_default();
            KdsError::PacingLock {
                path: self.path.clone(),
                holders,
                source,
            }
        })?;
        let stored = match (replaced, read_slot(&mut file)) {
            (Some(why), _) => Stored::Bad(why),
            (None, stored) => stored,
        };
        let (next, value) = update(stored);
        if let Some(next) = next {
            write_slot(&mut file, next).map_err(|e| self.cache_error(e))?;
        }
        Ok(value)
        // Closing the file releases the lock.
    }

    /// Books the next turn to send a request, if its wait fits in
    /// `budget`; the caller then waits [`Turn::wait`] (without any lock)
    /// before sending. Fails with [`KdsError::PacedTooLong`], booking
    /// nothing, when the wait does not fit.
    pub fn book(&self, clock: &dyn Clock, budget: Duration) -> Result<Turn, KdsError> {
        self.with_locked(budget, |stored| {
            let now = clock.now();
            let (slot, repaired) = match stored {
                Stored::Slot(slot) if slot > now + MAX_AHEAD => (
                    now,
                    Some(format!(
                        "it held a time {} s ahead, more than any wait this tool books",
                        slot.duration_since(now).unwrap_or_default().as_secs()
                    )),
                ),
                Stored::Slot(slot) => (slot.max(now), None),
                Stored::Empty => (now, None),
                Stored::Bad(why) => (now, Some(why)),
            };
            let wait = slot.duration_since(now).unwrap_or_default();
            let repaired = repaired.map(|why| {
                format!(
                    "the request pacing file {} was repaired ({why}), not obeyed",
                    self.path.display()
                )
            });
            if wait > budget {
                // Book nothing; but do write back a repaired file.
                let keep = repaired.as_ref().map(|_| slot);
                return (keep, Err((wait, slot)));
            }
            (Some(slot + self.min_interval), Ok(Turn { wait, repaired }))
        })?
        .map_err(|(wait, until)| KdsError::PacedTooLong {
            host: self.host.clone(),
            path: self.path.clone(),
            wait,
            budget,
            until: httpdate::fmt_http_date(until),
        })
    }

    /// Makes every process wait until at least `until` (at most
    /// [`MAX_RETRY_AFTER`] from now) before its next request, after KDS
    /// said `Retry-After`.
    pub fn defer(&self, clock: &dyn Clock, until: SystemTime) -> Result<(), KdsError> {
        let until = until.min(clock.now() + MAX_RETRY_AFTER);
        self.with_locked(LOCK_WAIT, |stored| {
            let next = match stored {
                Stored::Slot(slot) if slot <= clock.now() + MAX_AHEAD => slot.max(until),
                _ => until,
            };
            (Some(next), ())
        })
    }
}

fn read_slot(file: &mut File) -> Stored {
    let mut bytes = Vec::new();
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.take(64).read_to_end(&mut bytes));
    if let Err(e) = read {
        return Stored::Bad(format!("it could not be read: {e}"));
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return Stored::Empty;
    }
    match text.parse::<u64>() {
        Ok(ms) => Stored::Slot(UNIX_EPOCH + Duration::from_millis(ms)),
        Err(_) => Stored::Bad("it did not hold a time".to_owned()),
    }
}

fn write_slot(file: &mut File, t: SystemTime) -> io::Result<()> {
    let line = format!("{}\n", millis(t));
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(line.as_bytes())
}

#[cfg(test)]
#[path = "pacing_tests.rs"]
mod tests;
