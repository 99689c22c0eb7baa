//! The end-of-run summary `snp-vmm` prints for the attestation guest.
//!
//! The certs file is read once more at the end to compare its checksum
//! with the guest's; the caller chooses how long that read may wait (not
//! at all after an interrupt).

use std::fmt::Write as _;
use std::path::Path;

use snp_certs::CertsReader;
use vmm_api::VmCounters;

use crate::attest;
use crate::report_check::{AttestTotals, Expected};

/// What the run amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Reports from the guest.
    pub reports: usize,
    /// Reports with status ok that matched what the VMM delivered.
    pub matched: usize,
    /// Reports that are not ok, or did not match.
    pub bad: usize,
    /// The checksum the guest computed last.
    pub guest_checksum: Option<u32>,
    /// What a correct guest would report for the certs file as it is now
    /// (read under the shared lock); `None` without a certs file, or if the
    /// file cannot be read.
    pub file: Option<Expected>,
    /// The text to print.
    pub text: String,
}

impl Summary {
    /// Whether everything the guest got was right.
    pub fn success(&self) -> bool {
        self.reports > 0
            && self.bad == 0
            && match (self.file, self.guest_checksum) {
                (Some(file), Some(guest)) => file.checksum == guest,
                _ => true,
            }
    }
}

/// What a correct guest reports for the file at `path` right now.
fn file_expectation(path: &Path, timeout: std::time::Duration) -> Option<Expected> {
    let mut reader = CertsReader::new();
    let locked = reader.lock_and_read(path, timeout).ok()?;
    attest::expected_report_for(locked.bytes)
        .ok()
        .map(Expected::from)
}

/// Builds the summary of a run.
pub fn summarize(
    totals: &AttestTotals,
    counters: &VmCounters,
    certs_file: Option<&Path>,
    timeout: std::time::Duration,
) -> Summary {
    let matched = totals.matched;
    let bad = totals.reports - matched;
    let guest_checksum = totals.last_ok_checksum;
    let file = certs_file.and_then(|p| file_expectation(p, timeout));
    let r = &counters.requests;
    let w = &counters.lock_wait_us;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "summary: {} guest requests reported: {matched} received exactly what was delivered, {bad} did not",
        totals.reports
    );
    let _ = writeln!(
        text,
        "  VMM answered {} requests: {} delivered, {} need-pages, {} busy, {} failed; {} bytes delivered",
        r.total(),
        r.delivered,
        r.need_pages,
        r.busy,
        r.failed,
        counters.bytes_delivered
    );
    let fallbacks: u64 = counters.fallbacks.values().sum();
    if fallbacks > 0 {
        let reasons: Vec<String> = counters
            .fallbacks
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        let _ = writeln!(
            text,
            "  fallback answers (busy could not help): {fallbacks} ({})",
            reasons.join(", ")
        );
    }
    let _ = writeln!(
        text,
        "  lock wait (us): p50 {} p90 {} p99 {} max {} over {} requests; leases released {}, still held {}",
        w.p50, w.p90, w.p99, w.max, w.count, counters.leases_released, counters.leases_held
    );
    match (guest_checksum, file) {
        (Some(g), Some(f)) => {
            let verdict = if g == f.checksum {
                "equal"
            } else {
                "DIFFERENT"
            };
            let _ = writeln!(
                text,
                "  checksum: guest received {g:#010x}, certs file {:#010x} ({verdict})",
                f.checksum
            );
        }
        (Some(g), None) => {
            let _ = writeln!(
                text,
                "  checksum: guest received {g:#010x} (no certs file to compare)"
            );
        }
        (None, _) => {
            let _ = writeln!(text, "  checksum: the guest received no table");
        }
    }
    Summary {
        reports: totals.reports,
        matched,
        bad,
        guest_checksum,
        file,
        text,
    }
}
