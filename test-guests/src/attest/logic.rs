//! The attestation guest's decisions, as a state machine.
//!
//! [`AttestMachine`] is the reference implementation of the algorithm in
//! the [module docs](super): [`super::MockAttestGuest`] runs it against a
//! mock vCPU, and the tests use it to say what the machine code
//! ([`super::program`]) must do. It does no I/O: it says what to do next
//! ([`Step`]) and is told what the VMM answered.

use hypervisor::SnpCertsCompletion;

use super::layout::{BUFFER_PAGES, PAGE_SIZE};
use crate::report::{GuestReport, ReportStatus, fnv1a32};

/// Size of a certificate table entry and of its terminator.
const ENTRY_SIZE: usize = 24;

/// What the attestation guest does, baked into its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttestParams {
    /// Number of certificate requests before the guest halts.
    pub requests: u32,
    /// Pause between requests in milliseconds (0: none).
    pub interval_ms: u32,
    /// Pause before retrying a busy request in milliseconds (0: none).
    pub retry_ms: u32,
    /// Busy answers retried per request before giving up.
    pub max_busy_retries: u32,
}

impl Default for AttestParams {
    fn default() -> Self {
        Self {
            requests: 1,
            interval_ms: 0,
            retry_ms: 10,
            max_busy_retries: 100,
        }
    }
}

/// What the guest does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Fill the buffer with [`super::BUFFER_FILL`] if `npages > 0`, write
    /// the mailbox `{gpa: BUFFER_GPA, npages, ret: RET_UNANSWERED}` and
    /// ring the doorbell; then call [`AttestMachine::answer`].
    Ring {
        /// Pages offered.
        npages: u64,
    },
    /// Ask the VMM for a pause; then call [`AttestMachine::resume`].
    Delay {
        /// Milliseconds.
        ms: u32,
    },
    /// Write the report and announce it; then call
    /// [`AttestMachine::resume`].
    Report(GuestReport),
    /// Stop (`hlt`).
    Halt,
}

/// Checks a table the way the guest does, within `buffer` (the pages it
/// offered): walks the entries to the all-zero terminator and measures the
/// table as `(entries, table_len, checksum)`: the entries before the
/// terminator, `max(header length, largest offset + length)` and the
/// FNV-1a 32 of the first `table_len` bytes. `None` (a bad table) if the
/// terminator is not inside the buffer or an entry's `offset + length`
/// lies beyond it.
pub fn check_table(buffer: &[u8]) -> Option<(u32, u32, u32)> {
    let mut header_len = 0usize;
    let mut max_end = 0u64;
    loop {
        let end_of_entry = header_len.checked_add(ENTRY_SIZE)?;
        let entry: &[u8; ENTRY_SIZE] = buffer.get(header_len..end_of_entry)?.try_into().ok()?;
        header_len = end_of_entry;
        if entry.iter().all(|&b| b == 0) {
            break;
        }
        let word = |i: usize| {
            u64::from(u32::from_le_bytes([
                entry[i],
                entry[i + 1],
                entry[i + 2],
                entry[i + 3],
            ]))
        };
        let end = word(16) + word(20);
        if end > buffer.len() as u64 {
            return None;
        }
        max_end = max_end.max(end);
    }
    // max_end <= buffer.len() (checked above), so it fits in usize.
    let table_len = header_len.max(usize::try_from(max_end).ok()?);
    Some((
        u32::try_from(header_len / ENTRY_SIZE - 1).ok()?,
        u32::try_from(table_len).ok()?,
        fnv1a32(buffer.get(..table_len)?),
    ))
}

/// Where the machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing done yet.
    Start,
    /// Rang the doorbell; waiting for the answer.
    Ringing,
    /// Pausing before retrying a busy request.
    RetryDelay,
    /// Reported a request.
    Reported,
    /// Pausing between requests.
    IntervalDelay,
    /// Halted.
    Halted,
}

/// The attestation guest's algorithm, step by step.
#[derive(Debug, Clone)]
pub struct AttestMachine {
    params: AttestParams,
    /// The request in progress: `seq`, `npages` (pages asked for) and
    /// `busy_retries` are kept up to date; the rest is filled in at the end.
    report: GuestReport,
    phase: Phase,
}

impl AttestMachine {
    /// A guest that has not started yet.
    pub fn new(params: AttestParams) -> Self {
        Self {
            params,
            report: GuestReport::default(),
            phase: Phase::Start,
        }
    }

    /// The sequence number of the request in progress (1 for the first).
    pub fn seq(&self) -> u32 {
        self.report.seq
    }

    /// The first step, and the step after a [`Step::Delay`] or
    /// [`Step::Report`]. After a [`Step::Ring`] it rings again.
    pub fn resume(&mut self) -> Step {
        match self.phase {
            Phase::Start | Phase::IntervalDelay => self.begin_request(),
            Phase::Reported if self.report.seq >= self.params.requests => self.halt(),
            Phase::Reported if self.params.interval_ms > 0 => {
                self.phase = Phase::IntervalDelay;
                Step::Delay {
                    ms: self.params.interval_ms,
                }
            }
            Phase::Reported => self.begin_request(),
            Phase::Ringing | Phase::RetryDelay => self.ring(),
            Phase::Halted => Step::Halt,
        }
    }

    /// The step after the VMM answered a [`Step::Ring`]: `ret` and `npages`
    /// as found in the mailbox, `buffer` the guest's buffer (at least the
    /// pages offered). Out of turn it acts like [`Self::resume`].
    pub fn answer(&mut self, ret: u64, npages: u64, buffer: &[u8]) -> Step {
        if self.phase != Phase::Ringing {
            return self.resume();
        }
        // The report holds the low half; any high bit makes it "other".
        self.report.ret = ret as u32;
        let asked = u64::from(self.report.npages);
        match ret {
            // A size query answered 0: no table configured. Ask for one
            // page to receive the empty table.
            SnpCertsCompletion::RET_OK if asked == 0 => {
                self.report.npages = 1;
                self.ring()
            }
            SnpCertsCompletion::RET_OK => {
                let offered = usize::try_from(asked * PAGE_SIZE).unwrap_or(usize::MAX);
                match check_table(buffer.get(..offered).unwrap_or(buffer)) {
                    Some((entries, table_len, checksum)) => {
                        self.report.entries = entries;
                        self.report.table_len = table_len;
                        self.report.checksum = checksum;
                        self.finish(ReportStatus::Ok)
                    }
                    None => self.finish(ReportStatus::BadTable),
                }
            }
            SnpCertsCompletion::RET_EAGAIN => {
                if self.report.busy_retries >= self.params.max_busy_retries {
                    return self.finish(ReportStatus::GaveUpBusy);
                }
                self.report.busy_retries += 1;
                if self.params.retry_ms == 0 {
                    return self.ring();
                }
                self.phase = Phase::RetryDelay;
                Step::Delay {
                    ms: self.params.retry_ms,
                }
            }
            SnpCertsCompletion::RET_ENOSPC if npages > BUFFER_PAGES => {
                self.report.npages = u32::try_from(npages).unwrap_or(u32::MAX);
                self.finish(ReportStatus::TooBig)
            }
            // The count must grow, or the exchange could go on for ever.
            SnpCertsCompletion::RET_ENOSPC if npages <= asked => self.finish(ReportStatus::Failed),
            SnpCertsCompletion::RET_ENOSPC => {
                // npages <= BUFFER_PAGES here.
                self.report.npages = npages as u32;
                self.ring()
            }
            _ => self.finish(ReportStatus::Failed),
        }
    }

    fn begin_request(&mut self) -> Step {
        if self.report.seq >= self.params.requests {
            return self.halt();
        }
        self.report = GuestReport {
            seq: self.report.seq + 1,
            ..GuestReport::default()
        };
        self.ring()
    }

    fn ring(&mut self) -> Step {
        self.phase = Phase::Ringing;
        Step::Ring {
            npages: u64::from(self.report.npages),
        }
    }

    fn finish(&mut self, status: ReportStatus) -> Step {
        self.report.status = status as u32;
        self.phase = Phase::Reported;
        Step::Report(self.report)
    }

    fn halt(&mut self) -> Step {
        self.phase = Phase::Halted;
        Step::Halt
    }
}
