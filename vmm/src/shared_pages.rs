//! Which pages of an SEV-SNP guest are shared with the host.
//!
//! An SNP guest's memory starts private: the VMM's mapping of a private
//! page does not reach the guest's memory (KVM serves private pages from
//! guest_memfd). The guest makes pages shared one range at a time (page
//! state changes); only there can the VMM write what the guest reads, and
//! so only there can it put a certificate table. [`SharedPages`] follows
//! the conversions the vCPU loop carries out, so a certificate buffer the
//! guest did not make shared is recognised — that is the guest's own
//! fault, answered as such, never a write the guest would not see.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// Size of a page.
const PAGE: u64 = 4096;

/// The shared ranges of one VM, as page-aligned `start -> end` intervals.
#[derive(Debug, Default)]
pub struct SharedPages {
    ranges: Mutex<BTreeMap<u64, u64>>,
}

impl SharedPages {
    /// Nothing shared (an SNP guest's starting state).
    pub fn new() -> SharedPages {
        SharedPages::default()
    }

    /// Records that `len` bytes at `gpa` became private or shared. The
    /// range is widened to whole pages; a range that overflows is ignored.
    pub fn convert(&self, gpa: u64, len: u64, private: bool) {
        let start = gpa & !(PAGE - 1);
        let Some(end) = gpa
            .checked_add(len)
            .and_then(|e| e.checked_add(PAGE - 1))
            .map(|e| e & !(PAGE - 1))
        else {
            return;
        };
        if end <= start {
            return;
        }
        let mut ranges = self.ranges.lock().unwrap_or_else(PoisonError::into_inner);
        // Cut [start, end) out of every range it touches.
        let touched: Vec<(u64, u64)> = ranges
            .range(..end)
            .filter(|&(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touched {
            ranges.remove(&s);
            if s < start {
                ranges.insert(s, start);
            }
            if e > end {
                ranges.insert(end, e);
            }
        }
        if !private {
            // Merge with neighbours that touch it.
            let mut new_start = start;
            let mut new_end = end;
            if let Some((&s, &e)) = ranges.range(..start).next_back() {
                if e == start {
                    ranges.remove(&s);
                    new_start = s;
                }
            }
            if let Some(e) = ranges.remove(&end) {
                new_end = e;
            }
            ranges.insert(new_start, new_end);
        }
    }

    /// Whether all of `len` bytes at `gpa` are shared. An empty range is.
    pub fn is_shared(&self, gpa: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let ranges = self.ranges.lock().unwrap_or_else(PoisonError::into_inner);
        ranges
            .range(..=gpa)
            .next_back()
            .is_some_and(|(&s, &e)| s <= gpa && end <= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_split_and_merge() {
        let p = SharedPages::new();
        assert!(!p.is_shared(0x1000, 1));
        assert!(p.is_shared(0x1000, 0));
        p.convert(0x20000, 0x3000, false);
        assert!(p.is_shared(0x20000, 0x3000));
        assert!(p.is_shared(0x21000, 0x10));
        assert!(!p.is_shared(0x20000, 0x3001));
        assert!(!p.is_shared(0x1f000, 0x2000));
        // A hole in the middle.
        p.convert(0x21000, 0x1000, true);
        assert!(p.is_shared(0x20000, 0x1000));
        assert!(!p.is_shared(0x20000, 0x2000));
        assert!(p.is_shared(0x22000, 0x1000));
        // Filled again: one range.
        p.convert(0x21000, 0x1000, false);
        assert!(p.is_shared(0x20000, 0x3000));
        assert_eq!(p.ranges.lock().unwrap().len(), 1);
        // Unaligned conversions cover whole pages.
        p.convert(0x30010, 0x10, false);
        assert!(p.is_shared(0x30000, 0x1000));
        // Overflowing ranges change and match nothing.
        p.convert(u64::MAX - 10, 100, false);
        assert!(!p.is_shared(u64::MAX - 10, 100));
    }
}
