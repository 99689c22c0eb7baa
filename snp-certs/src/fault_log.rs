//! Logging a fault once, not once per request.
//!
//! A certs file that goes bad under a running VM (removed, truncated, too
//! large, locked by a tool that hangs) turns every certificate request into
//! a fallback or a busy answer, and a guest that keeps asking would turn
//! that into a line per request. Instead, each reason is an *episode*:
//!
//! * its first faulty answer is logged ([`Notice::Started`]);
//! * further ones are counted, and logged at most once per interval with
//!   the count since the last line ([`Notice::Again`]);
//! * the first answer without a problem ends every open episode, logged
//!   with how many answers it covered and how long it lasted
//!   ([`Notice::Cleared`]).
//!
//! So a fault that lasts a minute costs a handful of lines whatever the
//! request rate, and the log still says when it began, that it went on,
//! and when it ended. The VMM decides what each line says (it knows the
//! vCPU and the configuration); [`FaultLog`] only decides when to write
//! one. Consult it after the lease is released, never inside the lease
//! window.
//!
//! The usual answer (no fault, no episode open) costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Reason;

/// How often an ongoing fault is logged again, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// What to log about a faulty answer, or about the end of an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The first faulty answer for this reason.
    Started,
    /// The fault goes on: `count` faulty answers since the last line,
    /// which was `since` ago.
    Again {
        /// Faulty answers since the last line, this one included.
        count: u64,
        /// Time since the last line.
        since: Duration,
    },
    /// The fault is over: the episode had `count` faulty answers and
    /// lasted `lasted`.
    Cleared {
        /// Faulty answers in the episode.
        count: u64,
        /// From its first faulty answer to the first good one.
        lasted: Duration,
    },
}

/// One reason's ongoing fault.
#[derive(Debug, Clone, Copy)]
struct Episode {
    started: Instant,
    last_line: Instant,
    /// Faulty answers since the last line.
    unlogged: u64,
    total: u64,
}

/// The open episodes of one VM, one per reason.
#[derive(Debug)]
pub struct FaultLog {
    interval: Duration,
    /// Whether any episode is open: the only thing a good answer reads.
    open: AtomicBool,
    episodes: Mutex<[Option<Episode>; Reason::ALL.len()]>,
}

impl Default for FaultLog {
    fn default() -> FaultLog {
        FaultLog::new(DEFAULT_INTERVAL)
    }
}

impl FaultLog {
    /// A log that repeats an ongoing fault at most once per `interval`.
    pub fn new(interval: Duration) -> FaultLog {
        FaultLog {
            interval,
            open: AtomicBool::new(false),
            episodes: Mutex::new([None; Reason::ALL.len()]),
        }
    }

    /// A faulty answer for `reason` at `now`: what to log, if anything.
    pub fn fault(&self, reason: Reason, now: Instant) -> Option<Notice> {
        let mut episodes = self.episodes.lock().unwrap_or_else(PoisonError::into_inner);
        self.open.store(true, Ordering::Release);
        let slot = &mut episodes[reason.index()];
        let Some(episode) = slot else {
            *slot = Some(Episode {
                started: now,
                last_line: now,
                unlogged: 0,
                total: 1,
            });
            return Some(Notice::Started);
        };
        episode.total += 1;
        episode.unlogged += 1;
        let since = now.saturating_duration_since(episode.last_line);
        if since < self.interval {
            return None;
        }
        let count = episode.unlogged;
        episode.unlogged = 0;
        episode.last_line = now;
        Some(Notice::Again { count, since })
    }

    /// An answer without a problem at `now`: ends every open episode,
    /// calling `cleared` for each.
    pub fn clear(&self, now: Instant, mut cleared: impl FnMut(Reason, Notice)) {
        if !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut episodes = self.episodes.lock().unwrap_or_else(PoisonError::into_inner);
        self.open.store(false, Ordering::Release);
        for (reason, slot) in Reason::ALL.into_iter().zip(episodes.iter_mut()) {
            if let Some(episode) = slot.take() {
                cleared(
                    reason,
                    Notice::Cleared {
                        count: episode.total,
                        lasted: now.saturating_duration_since(episode.started),
                    },
                );
            }
        }
    }

    /// How often an ongoing fault is logged again.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether an episode is open (so a good answer has something to end).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_fault_is_logged_when_it_starts_every_interval_and_when_it_clears() {
        let log = FaultLog::new(10 * SECOND);
        let t0 = Instant::now();
        assert!(!log.is_open());
        assert_eq!(log.fault(Reason::FileInvalid, t0), Some(Notice::Started));
        assert!(log.is_open());
        // 299 more within the next 29.9 s: two more lines, each with its count.
        let mut lines = Vec::new();
        for i in 1..300u32 {
            let now = t0 + SECOND * i / 10;
            if let Some(notice) = log.fault(Reason::FileInvalid, now) {
                lines.push(notice);
            }
        }
        assert_eq!(
            lines,
            [
                Notice::Again {
                    count: 100,
                    since: 10 * SECOND
                },
                Notice::Again {
                    count: 100,
                    since: 10 * SECOND
                },
            ]
        );
        let mut cleared = Vec::new();
        log.clear(t0 + 40 * SECOND, |r, n| cleared.push((r, n)));
        assert_eq!(
            cleared,
            [(
                Reason::FileInvalid,
                Notice::Cleared {
                    count: 300,
                    lasted: 40 * SECOND
                }
            )]
        );
        assert!(!log.is_open());
        // A good answer with nothing open says nothing; a new fault starts
        // a new episode.
        log.clear(t0 + 41 * SECOND, |_, _| panic!("nothing was open"));
        assert_eq!(
            log.fault(Reason::FileInvalid, t0 + 42 * SECOND),
            Some(Notice::Started)
        );
    }

    #[test]
    fn each_reason_is_an_episode_of_its_own() {
        let log = FaultLog::new(10 * SECOND);
        let t0 = Instant::now();
        assert_eq!(log.fault(Reason::LockTimeout, t0), Some(Notice::Started));
        assert_eq!(log.fault(Reason::FileMissing, t0), Some(Notice::Started));
        assert_eq!(log.fault(Reason::LockTimeout, t0 + SECOND), None);
        let mut cleared = Vec::new();
        log.clear(t0 + 2 * SECOND, |r, n| cleared.push((r, n)));
        assert_eq!(
            cleared,
            [
                (
                    Reason::LockTimeout,
                    Notice::Cleared {
                        count: 2,
                        lasted: 2 * SECOND
                    }
                ),
                (
                    Reason::FileMissing,
                    Notice::Cleared {
                        count: 1,
                        lasted: 2 * SECOND
                    }
                ),
            ]
        );
    }
}
