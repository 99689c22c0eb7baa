//! The state the senders, the monitor and the writer thread share: the
//! start time events are stamped against and the delivery counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// State shared by the senders, the monitor and the writer thread.
pub(crate) struct Shared {
    /// When the monitor started: event timestamps count from here.
    pub(crate) start: Instant,
    /// Set when shutdown begins; later events are dropped.
    pub(crate) closing: AtomicBool,
    /// Events accepted by the output.
    pub(crate) written: AtomicU64,
    /// Events dropped because the queue was full or the writer gone.
    pub(crate) dropped_full: AtomicU64,
    /// Events dropped because writing them failed.
    pub(crate) dropped_io: AtomicU64,
}

impl Shared {
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed) + self.dropped_io.load(Ordering::Relaxed)
    }

    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}
