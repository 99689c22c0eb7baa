//! Counters of one VM's certificate requests.
//!
//! Updated by vCPU threads after each request's lease is released, read by
//! the API. Every counter is an atomic: the answers and reasons are arrays
//! indexed by [`OutcomeKind::index`] and [`Reason::index`], and the recent
//! lock waits (for percentiles) are a ring of atomics, so no vCPU ever
//! waits for another or for an API reader. Under concurrent updates the
//! ring is approximate (a slot being rewritten may be read before or
//! after), which percentiles over thousands of samples do not notice.

use std::array;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use snp_certs::{Outcome, OutcomeKind, Reason};
use vmm_api::{LockWaitSummary, OutcomeCounts, VmCounters};

/// How many recent lock waits the percentiles are computed over.
pub const LOCK_WAIT_WINDOW: usize = 4096;

/// Live counters of one VM's certificate requests.
#[derive(Debug)]
pub struct RequestStats {
    outcomes: [AtomicU64; OutcomeKind::ALL.len()],
    reasons: [AtomicU64; Reason::ALL.len()],
    fallbacks: [AtomicU64; Reason::ALL.len()],
    bytes_delivered: AtomicU64,
    /// Requests that asked for the lock; also where the next wait goes in
    /// `recent_waits_us` (modulo the window).
    lock_waits: AtomicU64,
    recent_waits_us: Box<[AtomicU64; LOCK_WAIT_WINDOW]>,
    lock_wait_max_us: AtomicU64,
    leases_held: AtomicU64,
    leases_released: AtomicU64,
}

impl Default for RequestStats {
    fn default() -> RequestStats {
        RequestStats {
            outcomes: array::from_fn(|_| AtomicU64::new(0)),
            reasons: array::from_fn(|_| AtomicU64::new(0)),
            fallbacks: array::from_fn(|_| AtomicU64::new(0)),
            bytes_delivered: AtomicU64::new(0),
            lock_waits: AtomicU64::new(0),
            recent_waits_us: Box::new(array::from_fn(|_| AtomicU64::new(0))),
            lock_wait_max_us: AtomicU64::new(0),
            leases_held: AtomicU64::new(0),
            leases_released: AtomicU64::new(0),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RequestStats {
    /// Counts one answered request; `leased` says whether it held a lease
    /// (counted as taken and, by [`RequestStats::lease_released`],
    /// released).
    pub fn record(&self, outcome: &Outcome, leased: bool) {
        let Outcome {
            kind,
            reason,
            bytes,
            lock_wait,
            lock_tried,
            fallback,
            ..
        } = *outcome;
        self.outcomes[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.reasons[reason.index()].fetch_add(1, Ordering::Relaxed);
        if fallback {
            self.fallbacks[reason.index()].fetch_add(1, Ordering::Relaxed);
        }
        if kind == OutcomeKind::Delivered {
            self.bytes_delivered
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if lock_tried {
            let us = micros(lock_wait);
            let at = self.lock_waits.fetch_add(1, Ordering::Relaxed);
            self.recent_waits_us[slot(at)].store(us, Ordering::Relaxed);
            self.lock_wait_max_us.fetch_max(us, Ordering::Relaxed);
        }
        if leased {
            self.lease_taken();
        }
    }

    /// Counts one lease taken.
    pub fn lease_taken(&self) {
        self.leases_held.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts one released lease.
    pub fn lease_released(&self) {
        // Never below zero, even if a release were reported twice.
        let _ = self
            .leases_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.leases_released.fetch_add(1, Ordering::Relaxed);
    }

    /// Leases held right now.
    pub fn leases_held(&self) -> u64 {
        self.leases_held.load(Ordering::Acquire)
    }

    /// A copy of all counters, as the API shows them.
    /// (`events_dropped` is the event monitor's; the caller fills it.)
    pub fn snapshot(&self) -> VmCounters {
        let count = |k: OutcomeKind| self.outcomes[k.index()].load(Ordering::Relaxed);
        let requests = OutcomeCounts {
            delivered: count(OutcomeKind::Delivered),
            need_pages: count(OutcomeKind::NeedPages),
            busy: count(OutcomeKind::Busy),
            failed: count(OutcomeKind::Failed),
        };
        // Only the reasons seen, by name.
        let by_name = |counters: &[AtomicU64; Reason::ALL.len()]| -> BTreeMap<String, u64> {
            Reason::ALL
                .iter()
                .filter_map(|r| {
                    let n = counters[r.index()].load(Ordering::Relaxed);
                    (n > 0).then(|| (r.as_str().to_owned(), n))
                })
                .collect()
        };
        let lock_waits = self.lock_waits.load(Ordering::Relaxed);
        let kept =
            usize::try_from(lock_waits).map_or(LOCK_WAIT_WINDOW, |n| n.min(LOCK_WAIT_WINDOW));
        let mut waits: Vec<u64> = self.recent_waits_us[..kept]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        waits.sort_unstable();
        VmCounters {
            requests,
            reasons: by_name(&self.reasons),
            fallbacks: by_name(&self.fallbacks),
            bytes_delivered: self.bytes_delivered.load(Ordering::Relaxed),
            lock_wait_us: LockWaitSummary {
                count: lock_waits,
                p50: percentile(&waits, 50),
                p90: percentile(&waits, 90),
                p99: percentile(&waits, 99),
                max: self.lock_wait_max_us.load(Ordering::Relaxed),
            },
            leases_held: self.leases_held.load(Ordering::Acquire),
            leases_released: self.leases_released.load(Ordering::Relaxed),
            events_dropped: 0,
        }
    }
}

/// The ring slot of the `n`th lock wait.
fn slot(n: u64) -> usize {
    // The window is a power of two far below u64::MAX: the remainder fits.
    (n % LOCK_WAIT_WINDOW as u64) as usize
}

/// The `p`th percentile (nearest rank) of sorted values; 0 when empty.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: OutcomeKind, reason: Reason, bytes: usize, wait_ms: u64) -> Outcome {
        let mut o = Outcome::new(kind, reason, snp_certs::CertsRequest { gpa: 0, npages: 1 });
        o.bytes = bytes;
        o.lock_wait = Duration::from_millis(wait_ms);
        o.lock_tried = reason != Reason::NoCertsFile;
        o
    }

    #[test]
    fn counts_outcomes_reasons_fallbacks_bytes_and_waits() {
        let s = RequestStats::default();
        s.record(
            &outcome(OutcomeKind::Delivered, Reason::Served, 100, 1),
            true,
        );
        s.record(
            &outcome(OutcomeKind::Delivered, Reason::NoCertsFile, 24, 0),
            false,
        );
        s.record(
            &outcome(OutcomeKind::Busy, Reason::LockTimeout, 0, 100),
            false,
        );
        s.record(
            &outcome(OutcomeKind::NeedPages, Reason::SizeQuery, 5000, 0),
            false,
        );
        let mut fallback = outcome(OutcomeKind::Delivered, Reason::FileMissing, 24, 0);
        fallback.fallback = true;
        fallback.lock_tried = false;
        s.record(&fallback, false);
        let snap = s.snapshot();
        assert_eq!(snap.requests.delivered, 3);
        assert_eq!(snap.requests.busy, 1);
        assert_eq!(snap.requests.failed, 0);
        assert_eq!(snap.requests.total(), 5);
        assert_eq!(snap.reasons["lock-timeout"], 1);
        assert_eq!(snap.reasons["no-certs-file"], 1);
        assert_eq!(snap.reasons.len(), 5, "only the reasons seen");
        assert_eq!(snap.fallbacks.len(), 1);
        assert_eq!(snap.fallbacks["file-missing"], 1);
        assert_eq!(snap.bytes_delivered, 148);
        assert_eq!(snap.lock_wait_us.count, 3);
        assert_eq!(snap.lock_wait_us.max, 100_000);
        assert_eq!(snap.lock_wait_us.p99, 100_000);
        assert_eq!((snap.leases_held, snap.leases_released), (1, 0));
    }

    #[test]
    fn leases_never_go_below_zero() {
        let s = RequestStats::default();
        s.lease_taken();
        s.lease_released();
        s.lease_released();
        let snap = s.snapshot();
        assert_eq!((snap.leases_held, snap.leases_released), (0, 2));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 90), 90);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn window_keeps_only_recent_waits() {
        let s = RequestStats::default();
        for _ in 0..LOCK_WAIT_WINDOW {
            s.record(
                &outcome(OutcomeKind::Busy, Reason::LockTimeout, 0, 1000),
                false,
            );
        }
        for _ in 0..LOCK_WAIT_WINDOW {
            s.record(
                &outcome(OutcomeKind::Delivered, Reason::Served, 1, 0),
                false,
            );
        }
        let w = s.snapshot().lock_wait_us;
        assert_eq!((w.p50, w.p90, w.p99), (0, 0, 0));
        assert_eq!(w.max, 1_000_000);
        assert_eq!(w.count, 2 * LOCK_WAIT_WINDOW as u64);
    }

    #[test]
    fn many_threads_count_every_request() {
        let s = RequestStats::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        s.record(&outcome(OutcomeKind::Delivered, Reason::Served, 2, 0), true);
                        s.lease_released();
                    }
                });
            }
        });
        let snap = s.snapshot();
        assert_eq!(snap.requests.delivered, 4000);
        assert_eq!(snap.reasons["served"], 4000);
        assert_eq!(snap.bytes_delivered, 8000);
        assert_eq!(snap.lock_wait_us.count, 4000);
        assert_eq!((snap.leases_held, snap.leases_released), (0, 4000));
    }
}
