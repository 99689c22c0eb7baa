//! The answers a guest can get, and why.
//!
//! Every certificate request ends in one of four answers
//! ([`OutcomeKind`]), each with a [`Reason`]. The engine maps the kind to
//! the `ret` value of `KVM_EXIT_SNP_REQ_CERTS` (0, `ENOSPC`, `EAGAIN`,
//! `EIO`); counters, events and the API name both in kebab-case. A
//! host-side fault's [`Fault`] decides between a busy answer and the
//! fallback: see `snp_certs::serve`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The four answers a guest can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// Certificates (or an empty table) written; `ret` 0.
    Delivered,
    /// Buffer too small; `ret` ENOSPC with the pages needed.
    NeedPages,
    /// Host-side trouble; `ret` EAGAIN, the guest retries.
    Busy,
    /// The guest's own permanent fault; `ret` EIO.
    Failed,
}

impl OutcomeKind {
    /// The kind's place in [`OutcomeKind::ALL`], for counters kept in
    /// arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// All kinds, for counters.
    pub const ALL: [OutcomeKind; 4] = [
        OutcomeKind::Delivered,
        OutcomeKind::NeedPages,
        OutcomeKind::Busy,
        OutcomeKind::Failed,
    ];

    /// Kebab-case name, as in JSON and events.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Delivered => "delivered",
            OutcomeKind::NeedPages => "need-pages",
            OutcomeKind::Busy => "busy",
            OutcomeKind::Failed => "failed",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request had its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The certs file was delivered.
    Served,
    /// No certs file is configured: an empty table.
    NoCertsFile,
    /// `npages` was 0: the guest asked for the size.
    SizeQuery,
    /// `npages` was too small for the table.
    BufferTooSmall,
    /// Another process held the exclusive lock past the timeout.
    LockTimeout,
    /// The lock wait was cancelled: the VM is stopping.
    LockCancelled,
    /// The lock call failed.
    LockFailed,
    /// The certs file does not exist.
    FileMissing,
    /// The certs file is not a regular file.
    FileNotRegular,
    /// The certs file could not be opened or read.
    FileUnreadable,
    /// The certs file is larger than any valid table.
    FileTooLarge,
    /// The certs file is not a valid table.
    FileInvalid,
    /// The table is larger than the 16 KiB a Linux guest can receive (and
    /// `allow_large` is off).
    ExceedsGuestLimit,
    /// The certs file kept being replaced while being locked.
    FileKeepsChanging,
    /// `gpa` is not 4 KiB aligned.
    GpaMisaligned,
    /// `gpa + npages * 4096` overflows 64 bits.
    BufferOverflows,
    /// The bytes to write are not all in guest RAM.
    OutsideGuestRam,
    /// An SEV-SNP guest's buffer is not all memory it shared with the host
    /// (the VMM checks this before serving: it could not write there).
    BufferNotShared,
}

impl Reason {
    /// Kebab-case name, as in JSON and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Served => "served",
            Reason::NoCertsFile => "no-certs-file",
            Reason::SizeQuery => "size-query",
            Reason::BufferTooSmall => "buffer-too-small",
            Reason::LockTimeout => "lock-timeout",
            Reason::LockCancelled => "lock-cancelled",
            Reason::LockFailed => "lock-failed",
            Reason::FileMissing => "file-missing",
            Reason::FileNotRegular => "file-not-regular",
            Reason::FileUnreadable => "file-unreadable",
            Reason::FileTooLarge => "file-too-large",
            Reason::FileInvalid => "file-invalid",
            Reason::ExceedsGuestLimit => "exceeds-guest-limit",
            Reason::FileKeepsChanging => "file-keeps-changing",
            Reason::GpaMisaligned => "gpa-misaligned",
            Reason::BufferOverflows => "buffer-overflows",
            Reason::OutsideGuestRam => "outside-guest-ram",
            Reason::BufferNotShared => "buffer-not-shared",
        }
    }
}

/// How long a host-side fault is expected to last, which decides between
/// busy and the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Clears by itself soon (a writer holding the lock): busy while the
    /// budget lasts.
    Transient,
    /// Lasts until an operator acts: the fallback at once.
    Persistent,
    /// The VM is stopping: busy, which nobody will see.
    Cancelled,
}

impl Reason {
    /// All reasons, for counters and documentation.
    pub const ALL: [Reason; 18] = [
        Reason::Served,
        Reason::NoCertsFile,
        Reason::SizeQuery,
        Reason::BufferTooSmall,
        Reason::LockTimeout,
        Reason::LockCancelled,
        Reason::LockFailed,
        Reason::FileMissing,
        Reason::FileNotRegular,
        Reason::FileUnreadable,
        Reason::FileTooLarge,
        Reason::FileInvalid,
        Reason::ExceedsGuestLimit,
        Reason::FileKeepsChanging,
        Reason::GpaMisaligned,
        Reason::BufferOverflows,
        Reason::OutsideGuestRam,
        Reason::BufferNotShared,
    ];

    /// The reason's place in [`Reason::ALL`], for counters kept in arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// For host-side faults, how long they last; `None` for the others.
    pub fn fault(self) -> Option<Fault> {
        match self {
            Reason::LockTimeout | Reason::FileKeepsChanging => Some(Fault::Transient),
            Reason::LockCancelled => Some(Fault::Cancelled),
            Reason::LockFailed
            | Reason::FileMissing
            | Reason::FileNotRegular
            | Reason::FileUnreadable
            | Reason::FileTooLarge
            | Reason::FileInvalid
            | Reason::ExceedsGuestLimit => Some(Fault::Persistent),
            Reason::Served
            | Reason::NoCertsFile
            | Reason::SizeQuery
            | Reason::BufferTooSmall
            | Reason::GpaMisaligned
            | Reason::BufferOverflows
            | Reason::OutsideGuestRam
            | Reason::BufferNotShared => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_places_in_all() {
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}");
        }
        for (i, kind) in OutcomeKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind}");
        }
    }
}
