//! Counters of one VM's certificate requests.
//!
//! Updated by vCPU threads on every request and lease release, read by the
//! API. Counters are atomics; the per-reason map and the window of recent
//! lock waits (for percentiles) sit behind short mutexes that vCPUs hold
//! for a few instructions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use snp_certs::{Outcome, OutcomeKind, Reason};
use vmm_api::{LockWaitSummary, OutcomeCounts, VmCounters};

/// How many recent lock waits the percentiles are computed over.
pub const LOCK_WAIT_WINDOW: usize = 4096;

/// Live counters of one VM's certificate requests.
#[derive(Debug, Default)]
pub struct RequestStats {
    outcomes: [AtomicU64; 4],
    reasons: Mutex<HashMap<Reason, u64>>,
    fallbacks: Mutex<HashMap<Reason, u64>>,
    bytes_delivered: AtomicU64,
    lock_waits: AtomicU64,
    recent_waits_us: Mutex<VecDeque<u64>>,
    lock_wait_max_us: AtomicU64,
    leases_held: AtomicU64,
    leases_released: AtomicU64,
}

fn index(kind: OutcomeKind) -> usize {
    match kind {
        OutcomeKind::Delivered => 0,
        OutcomeKind::NeedPages => 1,
        OutcomeKind::Busy => 2,
        OutcomeKind::Failed => 3,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RequestStats {
    /// Counts one answered request.
    pub fn record(&self, outcome: &Outcome) {
        let Outcome {
            kind,
            reason,
            bytes,
            lock_wait,
            lock_tried,
            fallback,
            ..
        } = *outcome;
        let lease = outcome.lease.is_some();
        self.outcomes[index(kind)].fetch_add(1, Ordering::Relaxed);
        *self
            .reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
        if fallback {
            *self
                .fallbacks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(reason)
                .or_default() += 1;
        }
        if kind == OutcomeKind::Delivered {
            self.bytes_delivered
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if lock_tried {
            let us = micros(lock_wait);
            self.lock_waits.fetch_add(1, Ordering::Relaxed);
            self.lock_wait_max_us.fetch_max(us, Ordering::Relaxed);
            let mut recent = self
                .recent_waits_us
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if recent.len() == LOCK_WAIT_WINDOW {
                recent.pop_front();
            }
            recent.push_back(us);
        }
        if lease {
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
        let count = |k| self.outcomes[index(k)].load(Ordering::Relaxed);
        let requests = OutcomeCounts {
            delivered: count(OutcomeKind::Delivered),
            need_pages: count(OutcomeKind::NeedPages),
            busy: count(OutcomeKind::Busy),
            failed: count(OutcomeKind::Failed),
        };
        let by_name = |map: &Mutex<HashMap<Reason, u64>>| {
            map.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(r, n)| (r.as_str().to_owned(), *n))
                .collect()
        };
        let reasons = by_name(&self.reasons);
        let fallbacks = by_name(&self.fallbacks);
        let mut waits: Vec<u64> = self
            .recent_waits_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        waits.sort_unstable();
        VmCounters {
            requests,
            reasons,
            fallbacks,
            bytes_delivered: self.bytes_delivered.load(Ordering::Relaxed),
            lock_wait_us: LockWaitSummary {
                count: self.lock_waits.load(Ordering::Relaxed),
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
        s.record(&outcome(OutcomeKind::Delivered, Reason::Served, 100, 1));
        s.record(&outcome(OutcomeKind::Delivered, Reason::NoCertsFile, 24, 0));
        s.record(&outcome(OutcomeKind::Busy, Reason::LockTimeout, 0, 100));
        s.record(&outcome(OutcomeKind::NeedPages, Reason::SizeQuery, 5000, 0));
        let mut fallback = outcome(OutcomeKind::Delivered, Reason::FileMissing, 24, 0);
        fallback.fallback = true;
        fallback.lock_tried = false;
        s.record(&fallback);
        let snap = s.snapshot();
        assert_eq!(snap.requests.delivered, 3);
        assert_eq!(snap.requests.busy, 1);
        assert_eq!(snap.requests.failed, 0);
        assert_eq!(snap.requests.total(), 5);
        assert_eq!(snap.reasons["lock-timeout"], 1);
        assert_eq!(snap.reasons["no-certs-file"], 1);
        assert_eq!(snap.fallbacks.len(), 1);
        assert_eq!(snap.fallbacks["file-missing"], 1);
        assert_eq!(snap.bytes_delivered, 148);
        assert_eq!(snap.lock_wait_us.count, 3);
        assert_eq!(snap.lock_wait_us.max, 100_000);
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
            s.record(&outcome(OutcomeKind::Busy, Reason::LockTimeout, 0, 1000));
        }
        for _ in 0..LOCK_WAIT_WINDOW {
            s.record(&outcome(OutcomeKind::Delivered, Reason::Served, 1, 0));
        }
        let w = s.snapshot().lock_wait_us;
        assert_eq!((w.p50, w.p90, w.p99), (0, 0, 0));
        assert_eq!(w.max, 1_000_000);
    }
}
