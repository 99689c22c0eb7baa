//! What the attestation guest reported, checked against what the VMM
//! delivered.
//!
//! After a vCPU delivered a table and released its lease, the payload's
//! observer ([`crate::devices`]) reads back what was written and notes
//! what a correct guest must report for it (entries, trimmed length,
//! FNV-1a checksum). When the guest then reports, the two are compared and
//! the result is logged per request and kept for the summary.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::report::{GuestReport, ReportStatus};

/// What a correct guest reports for a delivered table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Entries before the terminator.
    pub entries: u32,
    /// Trimmed length.
    pub table_len: u32,
    /// FNV-1a 32 of the trimmed table.
    pub checksum: u32,
}

impl From<(u32, u32, u32)> for Expected {
    fn from((entries, table_len, checksum): (u32, u32, u32)) -> Expected {
        Expected {
            entries,
            table_len,
            checksum,
        }
    }
}

/// One guest report with its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestRecord {
    /// The reporting vCPU.
    pub vcpu: u8,
    /// What the guest reported.
    pub report: GuestReport,
    /// The guest's status, by name.
    pub status: String,
    /// What the VMM delivered last on this vCPU, if anything.
    pub expected: Option<Expected>,
    /// Whether the guest received exactly what was delivered.
    pub matches: bool,
}

fn status_name(status: u32) -> &'static str {
    match status {
        s if s == ReportStatus::Ok as u32 => "ok",
        s if s == ReportStatus::GaveUpBusy as u32 => "gave-up-busy",
        s if s == ReportStatus::TooBig as u32 => "too-big",
        s if s == ReportStatus::Failed as u32 => "failed",
        s if s == ReportStatus::BadTable as u32 => "bad-table",
        _ => "unknown",
    }
}

/// How many recent reports an [`AttestLog`] keeps; the totals count them
/// all, so a guest that runs for days does not grow the VMM.
pub const RECORDS_KEPT: usize = 1024;

/// What all the reports of a run amount to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttestTotals {
    /// Reports made.
    pub reports: usize,
    /// Reports with status ok that matched what the VMM delivered.
    pub matched: usize,
    /// The checksum of the last report with status ok.
    pub last_ok_checksum: Option<u32>,
}

/// All reports of one VM (the most recent [`RECORDS_KEPT`] of them, and
/// totals of all), and what each vCPU was delivered last.
#[derive(Debug, Default)]
pub struct AttestLog {
    records: Mutex<std::collections::VecDeque<AttestRecord>>,
    totals: Mutex<AttestTotals>,
    delivered: Mutex<HashMap<u8, Expected>>,
}

impl AttestLog {
    /// Notes what vCPU `vcpu` was just delivered.
    pub fn delivered(&self, vcpu: u8, expected: Expected) {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vcpu, expected);
    }

    /// What vCPU `vcpu` was delivered last.
    pub fn last_delivered(&self, vcpu: u8) -> Option<Expected> {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&vcpu)
            .copied()
    }

    /// Records and logs one report. Returns the record.
    pub fn record(
        &self,
        vcpu: u8,
        report: &GuestReport,
        expected: Option<Expected>,
    ) -> AttestRecord {
        let ok = report.status == ReportStatus::Ok as u32;
        let matches = ok
            && expected.is_some_and(|e| {
                (e.entries, e.table_len, e.checksum)
                    == (report.entries, report.table_len, report.checksum)
            });
        let record = AttestRecord {
            vcpu,
            report: *report,
            status: status_name(report.status).to_owned(),
            expected,
            matches,
        };
        {
            let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            totals.reports += 1;
            totals.matched += usize::from(matches);
            if ok {
                totals.last_ok_checksum = Some(report.checksum);
            }
        }
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if records.len() == RECORDS_KEPT {
            records.pop_front();
        }
        records.push_back(record.clone());
        record
    }

    /// What every report so far amounts to.
    pub fn totals(&self) -> AttestTotals {
        *self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recent reports (all of them, up to [`RECORDS_KEPT`]).
    pub fn records(&self) -> Vec<AttestRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

impl AttestRecord {
    /// One log line, as `snp-vmm` prints it.
    pub fn line(&self) -> String {
        let r = &self.report;
        let check = match (self.status.as_str(), self.matches) {
            ("ok", true) => "matches what the VMM delivered".to_owned(),
            ("ok", false) => match self.expected {
                Some(e) => format!(
                    "MISMATCH: VMM delivered {} entries, {} bytes, checksum {:#010x}",
                    e.entries, e.table_len, e.checksum
                ),
                None => "MISMATCH: the VMM delivered nothing".to_owned(),
            },
            _ => String::new(),
        };
        format!(
            "vcpu {} request {}: {} ret={} npages={} busy-retries={} entries={} len={} checksum={:#010x} {}",
            self.vcpu,
            r.seq,
            self.status,
            r.ret,
            r.npages,
            r.busy_retries,
            r.entries,
            r.table_len,
            r.checksum,
            check
        )
        .trim_end()
        .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_every_report_while_records_keep_the_recent_ones() {
        let log = AttestLog::default();
        let expected = Expected {
            entries: 1,
            table_len: 48,
            checksum: 7,
        };
        let ok = GuestReport {
            entries: 1,
            table_len: 48,
            checksum: 7,
            ..GuestReport::default()
        };
        for seq in 0..(RECORDS_KEPT as u32 + 10) {
            log.record(0, &GuestReport { seq, ..ok }, Some(expected));
        }
        let failed = GuestReport {
            status: ReportStatus::Failed as u32,
            ..GuestReport::default()
        };
        log.record(0, &failed, None);
        let totals = log.totals();
        assert_eq!(totals.reports, RECORDS_KEPT + 11);
        assert_eq!(totals.matched, RECORDS_KEPT + 10);
        assert_eq!(totals.last_ok_checksum, Some(7));
        let records = log.records();
        assert_eq!(records.len(), RECORDS_KEPT);
        assert_eq!(records.last().map(|r| r.status.as_str()), Some("failed"));
    }
}
