//! The busy budget: how long a VM's guest may be told busy without a break.
//!
//! A Linux guest told busy (`EAGAIN`) sleeps 2 s and asks again; after 60 s
//! of busy answers it gives up and disables its VMPCK key for good. Busy is
//! therefore only for trouble that clears soon (a management tool holding
//! the exclusive lock for an update), and only for a while: once a VM's
//! requests have been answered busy continuously for its `busy_budget`,
//! the next request gets the fallback answer instead (see
//! [`crate::config::OnError`]).
//!
//! One [`BusyBudget`] per VM, shared by its vCPUs (a Linux guest sends one
//! guest request at a time). The streak starts with the first busy answer
//! and ends with the first answer that is not busy; a fallback answer ends
//! it too, so the guest's next request may again wait for a writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The busy streak of one VM.
#[derive(Debug)]
pub struct BusyBudget {
    epoch: Instant,
    /// Microseconds since `epoch`, plus one, of the streak's first busy
    /// answer; 0 when the last answer was not busy.
    since: AtomicU64,
}

impl Default for BusyBudget {
    fn default() -> BusyBudget {
        BusyBudget::new()
    }
}

impl BusyBudget {
    /// A budget with no streak.
    pub fn new() -> BusyBudget {
        BusyBudget {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// A request hit transient trouble. Returns whether it may still be
    /// answered busy: the streak (started now if there was none) is
    /// younger than `budget`. A zero budget never allows busy.
    pub fn try_busy(&self, budget: Duration) -> bool {
        let now = self.now();
        let start = match self
            .since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => now,
            Err(start) => start,
        };
        let streak = Duration::from_micros(now.saturating_sub(start));
        streak < budget
    }

    /// A request got an answer that was not busy: the streak ends.
    pub fn end_streak(&self) {
        // Read first: the usual answer ends no streak, and a store would
        // pull the line away from the VM's other vCPUs on every request.
        if self.since.load(Ordering::Acquire) != 0 {
            self.since.store(0, Ordering::Release);
        }
    }

    /// How long the guest has been told busy without a break.
    pub fn streak(&self) -> Duration {
        match self.since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            start => Duration::from_micros(self.now().saturating_sub(start)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_until_the_budget_is_spent_then_never_until_the_streak_ends() {
        let b = BusyBudget::new();
        assert_eq!(b.streak(), Duration::ZERO);
        assert!(b.try_busy(Duration::from_secs(60)));
        assert!(b.streak() < Duration::from_secs(1));
        // A budget the streak already exceeds (any streak exceeds 0).
        assert!(!b.try_busy(Duration::ZERO));
        b.end_streak();
        assert_eq!(b.streak(), Duration::ZERO);
        assert!(
            !b.try_busy(Duration::ZERO),
            "a zero budget never allows busy"
        );
    }

    /// `try_busy` says yes while, and only while, the streak that its
    /// first call started is younger than the budget: timed from outside
    /// with the same monotonic clock, allowing the microsecond the budget
    /// counts in.
    #[test]
    fn busy_is_allowed_for_exactly_the_budget() {
        let tick = Duration::from_micros(1);
        for budget in [Duration::from_millis(20), Duration::from_millis(70)] {
            let b = BusyBudget::new();
            let started = Instant::now();
            assert!(b.try_busy(budget));
            let began_by = Instant::now();
            loop {
                let asked = Instant::now();
                let busy = b.try_busy(budget);
                let answered = Instant::now();
                if !busy {
                    assert!(
                        answered - started + tick > budget,
                        "shorter than {budget:?}"
                    );
                    break;
                }
                assert!(asked - began_by < budget + tick, "longer than {budget:?}");
            }
            // Spent: no until the streak ends, whatever the budget asked.
            assert!(!b.try_busy(budget));
            assert!(b.streak() >= budget);
            b.end_streak();
            assert!(b.try_busy(budget), "a new streak");
        }
    }

    #[test]
    fn the_streak_counts_from_the_first_busy_answer() {
        let b = BusyBudget::new();
        assert!(b.try_busy(Duration::from_secs(60)));
        let first = b.streak();
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.try_busy(Duration::from_secs(60)));
        assert!(b.streak() >= first + Duration::from_millis(5));
        assert!(!b.try_busy(Duration::from_millis(5)));
    }
}
