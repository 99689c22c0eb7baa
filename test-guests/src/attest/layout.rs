//! Where the attestation guest keeps its code and data.
//!
//! Everything lies in the first 64 KiB of guest RAM, so that real-mode code
//! with every segment base at 0 reaches it with plain 16-bit offsets.
//!
//! ```text
//! 0x0000 ..= 0x0fff   unused (real-mode interrupt vector table area)
//! 0x1000 ..= 0x1fff   code (CODE_GPA, at most CODE_MAX_SIZE bytes)
//! 0x2000 ..= 0x2017   mailbox (MAILBOX_GPA): gpa, npages, ret as LE u64s
//! 0x2040 ..= 0x205f   report (REPORT_GPA): eight LE u32s
//! 0x8000 ..= 0xffff   certificate buffer (BUFFER_GPA, BUFFER_PAGES pages)
//! ```
//!
//! The guest uses no stack.

/// Size of a guest page, the unit of `npages`.
pub const PAGE_SIZE: u64 = 4096;

/// Guest-physical address the code is loaded at and started from.
pub const CODE_GPA: u64 = 0x1000;

/// Room reserved for the code: it must end before [`MAILBOX_GPA`].
pub const CODE_MAX_SIZE: usize = 0x1000;

/// Guest-physical address of the request mailbox (8-byte aligned).
pub const MAILBOX_GPA: u64 = 0x2000;

/// Guest-physical address of the report written after each request.
pub const REPORT_GPA: u64 = 0x2040;

/// Guest-physical address of the certificate buffer (4 KiB aligned).
pub const BUFFER_GPA: u64 = 0x8000;

/// Size of the certificate buffer in pages: 32 KiB, so a 16 KiB table (the
/// most a Linux guest accepts) fits with room to spare.
pub const BUFFER_PAGES: u64 = 8;

/// Size of the certificate buffer in bytes.
pub const BUFFER_SIZE: u64 = BUFFER_PAGES * PAGE_SIZE;

/// The least guest RAM (mapped at GPA 0) the guest needs: up to the end of
/// its buffer, 64 KiB.
pub const MIN_MEMORY: u64 = BUFFER_GPA + BUFFER_SIZE;

/// Before each request with `npages > 0` the guest fills its whole buffer
/// with this byte, so a VMM that answers 0 without writing a table is seen
/// (no terminator: [`crate::report::ReportStatus::BadTable`]).
pub const BUFFER_FILL: u8 = 0xff;

/// The guest writes this `ret` into the mailbox before ringing. A VMM that
/// ignores the mailbox leaves it there, and the guest reports
/// [`crate::report::ReportStatus::Failed`] with `ret` 0xffff_ffff.
pub const RET_UNANSWERED: u64 = u64::MAX;

// The layout must hold together; checked at compile time.
const _: () = {
    assert!(CODE_GPA + CODE_MAX_SIZE as u64 <= MAILBOX_GPA);
    assert!(MAILBOX_GPA % 8 == 0);
    assert!(MAILBOX_GPA + vmm::doorbell::MAILBOX_SIZE as u64 <= REPORT_GPA);
    assert!(REPORT_GPA + crate::report::REPORT_SIZE as u64 <= BUFFER_GPA);
    assert!(BUFFER_GPA % PAGE_SIZE == 0);
    assert!(MIN_MEMORY <= 0x1_0000);
};
