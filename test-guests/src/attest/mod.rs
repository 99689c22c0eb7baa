//! The attestation test guest: real-mode code that asks through the
//! emulated doorbell.
//!
//! A tiny guest that fetches its SEV-SNP certificates the way a Linux SNP
//! guest does, through the emulated doorbell ([`vmm::doorbell`]), checks
//! what it received and reports it. It comes in two independent
//! implementations that must behave identically:
//!
//! * [`program`]: 16-bit real-mode machine code for a real (KVM) vCPU,
//!   loaded at [`CODE_GPA`] and started with every segment base 0 and
//!   `rip = CODE_GPA` ([`hypervisor::Vcpu::setup_real_mode`]).
//! * [`MockAttestGuest`]: the same algorithm in Rust ([`AttestMachine`]),
//!   driving a mock vCPU through the same port writes and the same memory,
//!   for hosts without `/dev/kvm`.
//!
//! # Algorithm
//!
//! For each of [`AttestParams::requests`] requests (`seq` from 1):
//!
//! 1. Ask for the size: mailbox `{gpa: BUFFER_GPA, npages: 0}`, ring
//!    [`DOORBELL_PORT`](vmm::doorbell::DOORBELL_PORT). Before every ring
//!    the guest sets the mailbox `ret` to [`RET_UNANSWERED`], and before
//!    every ring with `npages > 0` it fills its whole buffer with
//!    [`BUFFER_FILL`], so silence from the VMM cannot pass for an answer.
//! 2. React to `ret` (the low 32 bits; a set high half counts as "other"):
//!    * `ENOSPC`: the VMM's `npages` is the count needed. More than
//!      [`BUFFER_PAGES`]: status `TooBig` (the report's `npages` is the
//!      count needed, saturated to `u32`). Not more than the pages just
//!      offered: `Failed` (the count must grow, which bounds the
//!      exchange). Otherwise ring again with that count.
//!    * `EAGAIN` (busy): after [`AttestParams::max_busy_retries`] retries
//!      in this request, `GaveUpBusy`; else count a retry, pause
//!      [`AttestParams::retry_ms`] through
//!      [`DELAY_PORT`](crate::report::DELAY_PORT) (nothing for 0) and
//!      ring again with the same count. This holds for the size query too.
//!    * `0` to the size query: no certificate file is configured; ring
//!      again with one page to receive the 24-byte empty table.
//!    * `0` otherwise: check the table within the pages offered
//!      ([`check_table`]): walk the 24-byte entries to the all-zero
//!      terminator (`BadTable` if there is none inside the buffer), count
//!      them, `table_len = max(header length, largest offset + length)`
//!      (`BadTable` if an entry ends beyond the buffer), and hash the
//!      first `table_len` bytes with FNV-1a 32. Status `Ok`.
//!    * `EIO` or anything else: `Failed`.
//! 3. Write the [`GuestReport`](crate::report::GuestReport) at
//!    [`REPORT_GPA`] (`entries`, `table_len`, `checksum` are 0 unless the
//!    status is `Ok`; `npages` is the count last offered, but see
//!    `TooBig`) and write its GPA to
//!    [`REPORT_PORT`](crate::report::REPORT_PORT).
//! 4. Unless it was the last request, pause [`AttestParams::interval_ms`]
//!    (nothing for 0).
//!
//! Then `hlt` (for ever). All port writes are 32-bit `out dx, eax`.
//!
//! # Memory layout
//!
//! See [`layout`]: code at 0x1000, mailbox at 0x2000, report at 0x2040,
//! an 8-page buffer at 0x8000; the guest needs [`MIN_MEMORY`] (64 KiB) of
//! RAM at GPA 0 and no stack.
//!
//! # Testing support
//!
//! [`harness`] runs either implementation against scripted doorbell
//! answers and records what the guest did; [`expected_report_for`] says
//! what a correct guest reports for a given table.

mod asm;
pub mod harness;
pub mod layout;
mod logic;
mod mock;

use hypervisor::HypervisorError;
use snp_certs::{CertTable, TableError};
use vm_memory::GuestMemoryError;

pub use asm::program;
pub use layout::{
    BUFFER_FILL, BUFFER_GPA, BUFFER_PAGES, BUFFER_SIZE, CODE_GPA, CODE_MAX_SIZE, MAILBOX_GPA,
    MIN_MEMORY, PAGE_SIZE, REPORT_GPA, RET_UNANSWERED,
};
pub use logic::{AttestMachine, AttestParams, Step, check_table};
pub use mock::MockAttestGuest;

use vmm::doorbell::DoorbellError;

use crate::report::fnv1a32;

/// Errors of the attestation guest and its tools.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The assembler refused the program.
    #[error("Cannot assemble the attestation guest")]
    Assemble(#[source] iced_x86::IcedError),
    /// The program does not fit the room reserved for it.
    #[error("Attestation guest is {size} bytes, more than the {max} bytes reserved for code")]
    ProgramTooLarge {
        /// Size of the program.
        size: usize,
        /// [`CODE_MAX_SIZE`].
        max: usize,
    },
    /// Guest memory could not be read or written.
    #[error("Cannot access the guest's {what} at {gpa:#x}")]
    Memory {
        /// What was accessed.
        what: &'static str,
        /// Its address.
        gpa: u64,
        /// The memory error.
        #[source]
        source: GuestMemoryError,
    },
    /// The mailbox could not be read or written.
    #[error("Cannot access the guest's mailbox")]
    Mailbox(#[source] DoorbellError),
    /// A table given to [`expected_report_for`] is not valid.
    #[error("Certificate table is not valid")]
    Table(#[source] TableError),
    /// Guest RAM could not be allocated.
    #[error("Cannot allocate guest RAM")]
    Ram(#[source] vm_memory::mmap::FromRangesError),
    /// The hypervisor failed.
    #[error("Hypervisor operation failed")]
    Hypervisor(#[source] HypervisorError),
    /// The guest did something the attestation guest never does.
    #[error("Unexpected exit from the attestation guest: {0}")]
    UnexpectedExit(String),
    /// The guest did not halt in time.
    #[error("Attestation guest did not halt within {0} exits")]
    TooManyExits(usize),
}

/// What a correct guest reports for a certificate file holding
/// `table_bytes`, delivered whole: `(entries, table_len, checksum)`, from
/// [`CertTable::parse`], [`CertTable::used_len`] and
/// [`fnv1a32`]. An invalid table is an error.
pub fn expected_report_for(table_bytes: &[u8]) -> Result<(u32, u32, u32), GuestError> {
    let table = CertTable::parse(table_bytes).map_err(GuestError::Table)?;
    let used = table.used_len();
    // parse() checked every entry lies inside the bytes, so used <= len.
    let checksum = fnv1a32(table_bytes.get(..used).unwrap_or(table_bytes));
    let entries = u32::try_from(table.entries().len()).unwrap_or(u32::MAX);
    let table_len = u32::try_from(used).unwrap_or(u32::MAX);
    Ok((entries, table_len, checksum))
}

#[cfg(test)]
mod tests;
