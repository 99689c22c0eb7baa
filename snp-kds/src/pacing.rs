//! A minimum interval between requests to one KDS host, shared by every
//! process on the host that uses the same cache directory.
//!
//! # File format and protocol
//!
//! `{cache}/pacing/{host}` holds one line: the earliest time (Unix
//! milliseconds, decimal) at which the next request to that host may be
//! sent. Before each request a process
//!
//! 1. opens (creating) the file and takes the exclusive OFD lock on it
//!    (the same whole-file lock as certs files, [`snp_certs::lock`]);
//! 2. reads the time, and if it lies ahead, waits until then, still
//!    holding the lock, so other processes queue behind it;
//! 3. writes `now + min_interval`, and unlocks.
//!
//! The request itself is made after unlocking, so a slow answer does not
//! hold others up beyond the interval. When KDS answers "too many
//! requests" with a `Retry-After`, [`Pacer::defer`] moves the time further
//! ahead, so every process on the host waits it out, not just the one that
//! was told. An unreadable or empty file counts as "no wait"; the lock is
//! released by the kernel if a process dies holding it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snp_certs::lock::{self, LockKind};

use crate::clock::Clock;
use crate::error::KdsError;

/// Longest wait for another process's turn.
const LOCK_TIMEOUT: Duration = Duration::from_secs(900);

/// Spaces requests to one host.
#[derive(Debug, Clone)]
pub struct Pacer {
    path: PathBuf,
    min_interval: Duration,
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

impl Pacer {
    /// A pacer for `host` with its file under `cache_dir`.
    pub fn new(cache_dir: &Path, host: &str, min_interval: Duration) -> Pacer {
        Pacer {
            path: cache_dir.join("pacing").join(file_name(host)),
            min_interval,
        }
    }

    /// The pacing file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cache_error(&self, source: std::io::Error) -> KdsError {
        KdsError::Cache {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens and exclusively locks the file, runs `update` on the stored
    /// time, and writes back what it returns.
    fn with_locked(
        &self,
        update: impl FnOnce(Option<SystemTime>) -> SystemTime,
    ) -> Result<(), KdsError> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| self.cache_error(e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&self.path)
            .map_err(|e| self.cache_error(e))?;
        lock::lock(&file, LockKind::Exclusive, LOCK_TIMEOUT).map_err(|source| {
            KdsError::PacingLock {
                path: self.path.clone(),
                source,
            }
        })?;
        let stored = read_time(&mut file);
        let next = update(stored);
        write_time(&mut file, next).map_err(|e| self.cache_error(e))
        // Closing the file releases the lock.
    }

    /// Waits until a request may be sent, and books the next slot.
    /// Returns how long it waited.
    pub fn wait_turn(&self, clock: &dyn Clock) -> Result<Duration, KdsError> {
        let mut waited = Duration::ZERO;
        self.with_locked(|stored| {
            let now = clock.now();
            if let Some(not_before) = stored {
                if let Ok(wait) = not_before.duration_since(now) {
                    clock.sleep(wait);
                    waited = wait;
                }
            }
            clock.now() + self.min_interval
        })?;
        Ok(waited)
    }

    /// Makes every process wait until at least `until` before its next
    /// request (after KDS said `Retry-After`).
    pub fn defer(&self, until: SystemTime) -> Result<(), KdsError> {
        self.with_locked(|stored| stored.map_or(until, |s| s.max(until)))
    }
}

fn read_time(file: &mut File) -> Option<SystemTime> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    let ms: u64 = text.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

fn write_time(file: &mut File, t: SystemTime) -> std::io::Result<()> {
    let line = format!("{}\n", millis(t));
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn second_request_waits_the_interval_across_pacers() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let interval = Duration::from_millis(1500);
        // Two pacers on one file stand for two processes.
        let a = Pacer::new(dir.path(), "kdsintf.amd.com", interval);
        let b = Pacer::new(dir.path(), "kdsintf.amd.com", interval);
        assert_eq!(a.wait_turn(&clock).unwrap(), Duration::ZERO);
        assert_eq!(b.wait_turn(&clock).unwrap(), interval);
        *clock.now.lock().unwrap() += Duration::from_secs(10);
        assert_eq!(a.wait_turn(&clock).unwrap(), Duration::ZERO);
        // Another host is paced on its own.
        let other = Pacer::new(dir.path(), "127.0.0.1:8080", interval);
        assert_eq!(other.wait_turn(&clock).unwrap(), Duration::ZERO);
        assert!(dir.path().join("pacing/127.0.0.1_8080").is_file());
    }

    #[test]
    fn defer_moves_the_next_slot_for_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let a = Pacer::new(dir.path(), "kds", Duration::ZERO);
        let b = Pacer::new(dir.path(), "kds", Duration::ZERO);
        a.defer(clock.now() + Duration::from_secs(30)).unwrap();
        // An earlier deferral does not shorten it.
        a.defer(clock.now() + Duration::from_secs(5)).unwrap();
        assert_eq!(b.wait_turn(&clock).unwrap(), Duration::from_secs(30));
        assert_eq!(b.wait_turn(&clock).unwrap(), Duration::ZERO);
    }

    #[test]
    fn garbage_in_the_file_means_no_wait() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let a = Pacer::new(dir.path(), "kds", Duration::from_secs(1));
        fs::create_dir_all(a.path().parent().unwrap()).unwrap();
        fs::write(a.path(), "not a time").unwrap();
        assert_eq!(a.wait_turn(&clock).unwrap(), Duration::ZERO);
        assert_eq!(file_name(""), "_");
        assert_eq!(file_name("../x"), "_.._x");
    }
}
