//! The SEV-SNP attestation test guest: 64-bit code that asks for its
//! certificates through the GHCB, as a Linux SNP guest does.
//!
//! Where the [real-mode guest](crate::attest) rings an emulated doorbell,
//! this one runs in an SEV-SNP VM and speaks the protocol a real SNP guest
//! speaks to its hypervisor (the GHCB specification, AMD pub. 56421; see
//! [`ghcb`] for the encodings and where each constant comes from):
//!
//! 1. It starts in 64-bit long mode on the image's identity-mapped page
//!    tables ([`layout`]; the VMM calls
//!    [`setup_long_mode`](hypervisor::Vcpu::setup_long_mode)`(CODE_GPA,
//!    PML4_GPA)`), private pages mapped with the C-bit, shared ones
//!    without.
//! 2. It makes its GHCB page shared: PVALIDATE rescinds the page's
//!    validation (`f2 0f 01 ff`, RAX the page's virtual address, ECX 0 for
//!    4 KiB, EDX 0 to rescind; EAX 0 and CF clear on success), then an SNP
//!    page state change through the GHCB MSR protocol (request 0x014 with
//!    the frame number and operation 2, "shared"; response 0x015 with
//!    error 0). KVM turns each page state change into one
//!    [`MapGpaRange`](hypervisor::VmExit::MapGpaRange) exit, which the VMM
//!    answers by converting the page and recording it as shared.
//! 3. It registers the GHCB (MSR protocol 0x012, answered 0x013 with the
//!    same frame number), then shares its request, response and report
//!    pages and its 8-page certificate buffer the same way.
//! 4. For each request it issues the extended guest request
//!    (`SW_EXITCODE` 0x8000_0012, `SW_EXITINFO1`/`2` the request and
//!    response pages, RAX the buffer, RBX its pages: 0 first to learn the
//!    size, then what the host asked for, at most 8) and decides on the
//!    result in `SW_EXITINFO2` exactly as the real-mode guest decides on
//!    its mailbox ([`AttestMachine`], the one implementation of those
//!    decisions): too small → ask again with the pages needed; busy →
//!    pause [`AttestParams::retry_ms`] through the delay port and retry, at
//!    most [`AttestParams::max_busy_retries`] times, as Linux does; passed
//!    on → check the table (entries, lengths, FNV-1a; [`check_table`]);
//!    anything else → failed. KVM passes a request the VMM answered with
//!    certificates on to the firmware, which refuses this guest's message
//!    (it is not encrypted with a VMPCK): the firmware's error is reported
//!    in the report's ninth word ([`layout::FW_ERROR_OFFSET`]) and is not
//!    a failure of the certificate fetch.
//! 5. It writes its [`GuestReport`](crate::report::GuestReport) and
//!    announces it with port I/O through the GHCB (`SW_EXITCODE` 0x7b, a
//!    32-bit OUT to [`REPORT_PORT`](crate::report::REPORT_PORT), RAX the
//!    report's GPA), which KVM turns into an ordinary `OUT` exit.
//! 6. It terminates through the MSR protocol (0x100, reason set 0, reason
//!    code [`ghcb::TERM_DONE`]; failures of the protocol itself have their
//!    own codes), which the VMM sees as
//!    [`Terminated`](hypervisor::VmExit::Terminated).
//!
//! Two implementations must behave identically: [`program`], the machine
//! code, and [`MockSnpGuest`], its Rust twin for the mock backend. **This
//! project's machines have no SEV-SNP**: in the tests the machine code
//! runs in an x86-64 emulator against the mock backend's kernel model and
//! must make exactly the exits the twin makes; the twin runs on the mock
//! backend, alone and under the whole VMM (`--hypervisor mock-snp`).
//!
//! [`SnpPayload`] is the payload ([`snp_payload`]; in the factory,
//! [`TestGuests::snp_attest_c_bit`](crate::TestGuests::snp_attest_c_bit)).

mod asm;
pub mod ghcb;
pub mod harness;
pub mod layout;
mod payload;
mod twin;

use vm_memory::GuestMemoryError;

pub use asm::program;
pub use layout::{DEFAULT_C_BIT, MIN_MEMORY};
pub use payload::{SnpPayload, snp_payload};
pub use twin::MockSnpGuest;

#[cfg(doc)]
use crate::attest::{AttestMachine, AttestParams, check_table};

/// Errors of the SNP guest and its tools.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// The assembler refused the program.
    #[error("Cannot assemble the SNP guest")]
    Assemble(#[source] iced_x86::IcedError),
    /// The program does not fit the room reserved for it.
    #[error("SNP guest is {size} bytes, more than the {max} bytes reserved for code")]
    ProgramTooLarge {
        /// Size of the program.
        size: usize,
        /// [`layout::CODE_MAX_SIZE`].
        max: usize,
    },
    /// The C-bit position cannot be used.
    #[error("C-bit position {0} is outside 32..=51")]
    InvalidCBit(u8),
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
    /// Guest RAM could not be allocated.
    #[error("Cannot allocate guest RAM")]
    Ram(#[source] vm_memory::mmap::FromRangesError),
    /// The hypervisor failed.
    #[error("Hypervisor operation failed")]
    Hypervisor(#[source] hypervisor::HypervisorError),
    /// The guest did something the SNP guest never does.
    #[error("Unexpected exit from the SNP guest: {0}")]
    UnexpectedExit(String),
    /// The guest did not terminate in time.
    #[error("SNP guest did not terminate within {0} exits")]
    TooManyExits(usize),
}

#[cfg(test)]
mod tests;
