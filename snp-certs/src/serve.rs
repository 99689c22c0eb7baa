//! Serving one guest certificate request.
//!
//! A guest asks for certificates with a buffer address `gpa` (4 KiB
//! aligned) and its size in pages, `npages`; both come verbatim from the
//! guest and are untrusted. [`serve`] answers with an [`Outcome`] whose
//! [`ret`](Outcome::ret) and [`npages`](Outcome::npages) are exactly what
//! the VMM writes back into `KVM_EXIT_SNP_REQ_CERTS`:
//!
//! | outcome | `ret` | `npages` | guest memory | when |
//! | --- | --- | --- | --- | --- |
//! | delivered | 0 | unchanged | table written at `gpa` | the file was locked, valid and fits |
//! | delivered (no file) | 0 | unchanged | 24 zero bytes if `npages > 0` | no certs file configured |
//! | need pages | `ENOSPC` | `ceil(size / 4096)` | untouched | the buffer is too small (`npages = 0` asks for the size) |
//! | busy | `EAGAIN` | unchanged | untouched | host-side trouble: lock timeout, file missing, unreadable or invalid; a wait cut short because the VM is stopping |
//! | failed | `EIO` | unchanged | untouched | the guest's own permanent fault: misaligned `gpa`, overflowing buffer, buffer outside guest RAM |
//!
//! `EIO` makes a Linux guest disable its VMPCK key for good, so it is kept
//! for faults the guest made and cannot recover from; everything an
//! operator can fix is `EAGAIN`, which the guest retries.
//!
//! A delivered outcome from a certs file carries the [`Lease`]: keep it
//! until KVM has sent the guest's report request to firmware, then drop it.

#![deny(clippy::arithmetic_side_effects)]

use std::error::Error;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::config::CertsConfig;
use crate::file::{CertsFileError, CertsReader, Lease};
use crate::lock::LockError;
use crate::table::EMPTY_TABLE;

/// Size of a guest page as counted by `npages`.
pub const PAGE_SIZE: u64 = 4096;

/// `ret` for success.
pub const RET_OK: u64 = 0;
/// `ret` when the buffer is too small.
pub const RET_ENOSPC: u64 = libc::ENOSPC as u64;
/// `ret` when the host is busy: the guest retries.
pub const RET_EAGAIN: u64 = libc::EAGAIN as u64;
/// `ret` for a permanent guest fault: the guest gives up attestation.
pub const RET_EIO: u64 = libc::EIO as u64;

/// A guest's certificate request, verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertsRequest {
    /// Guest-physical address of the buffer.
    pub gpa: u64,
    /// Size of the buffer in 4 KiB pages.
    pub npages: u64,
}

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
    /// All kinds, for counters.
    pub const ALL: [OutcomeKind; 4] = [
        OutcomeKind::Delivered,
        OutcomeKind::NeedPages,
        OutcomeKind::Busy,
        OutcomeKind::Failed,
    ];

    /// The `ret` value for this kind.
    pub fn ret(self) -> u64 {
        match self {
            OutcomeKind::Delivered => RET_OK,
            OutcomeKind::NeedPages => RET_ENOSPC,
            OutcomeKind::Busy => RET_EAGAIN,
            OutcomeKind::Failed => RET_EIO,
        }
    }

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
    /// The certs file kept being replaced while being locked.
    FileKeepsChanging,
    /// `gpa` is not 4 KiB aligned.
    GpaMisaligned,
    /// `gpa + npages * 4096` overflows 64 bits.
    BufferOverflows,
    /// The bytes to write are not all in guest RAM.
    OutsideGuestRam,
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
            Reason::FileKeepsChanging => "file-keeps-changing",
            Reason::GpaMisaligned => "gpa-misaligned",
            Reason::BufferOverflows => "buffer-overflows",
            Reason::OutsideGuestRam => "outside-guest-ram",
        }
    }

    fn of(error: &CertsFileError) -> Reason {
        match error {
            CertsFileError::Missing { .. } => Reason::FileMissing,
            CertsFileError::NotRegular { .. } => Reason::FileNotRegular,
            CertsFileError::Open { .. } | CertsFileError::Read { .. } => Reason::FileUnreadable,
            CertsFileError::Lock {
                source: LockError::Timeout { .. },
                ..
            } => Reason::LockTimeout,
            CertsFileError::Lock {
                source: LockError::Cancelled { .. },
                ..
            } => Reason::LockCancelled,
            CertsFileError::Lock { .. } => Reason::LockFailed,
            CertsFileError::KeepsChanging { .. } => Reason::FileKeepsChanging,
            CertsFileError::TooLarge { .. } => Reason::FileTooLarge,
            CertsFileError::Invalid { .. } => Reason::FileInvalid,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to one request.
#[derive(Debug)]
pub struct Outcome {
    /// Which answer.
    pub kind: OutcomeKind,
    /// Why.
    pub reason: Reason,
    /// A human-readable explanation for logs and events, on errors.
    pub detail: Option<String>,
    /// The `npages` to write back: the pages needed on
    /// [`OutcomeKind::NeedPages`], otherwise the guest's own value.
    pub npages: u64,
    /// Bytes written to guest memory (delivered) or the table size (need
    /// pages); 0 otherwise.
    pub bytes: usize,
    /// Time spent waiting for the shared lock.
    pub lock_wait: Duration,
    /// The shared lock, held on a delivery from a certs file.
    pub lease: Option<Lease>,
}

impl Outcome {
    fn new(kind: OutcomeKind, reason: Reason, request: CertsRequest) -> Outcome {
        Outcome {
            kind,
            reason,
            detail: None,
            npages: request.npages,
            bytes: 0,
            lock_wait: Duration::ZERO,
            lease: None,
        }
    }

    /// The `ret` value for the exit.
    pub fn ret(&self) -> u64 {
        self.kind.ret()
    }
}

/// Formats an error with its chain of sources, for [`Outcome::detail`].
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Writes `bytes` at `gpa` if the whole range is guest RAM.
fn write_guest<M: GuestMemory + ?Sized>(
    memory: &M,
    gpa: u64,
    bytes: &[u8],
    mut outcome: Outcome,
) -> Outcome {
    let addr = GuestAddress(gpa);
    let inside = memory.check_range(addr, bytes.len(), Permissions::Write);
    if !inside || memory.write_slice(bytes, addr).is_err() {
        outcome.kind = OutcomeKind::Failed;
        outcome.reason = Reason::OutsideGuestRam;
        outcome.detail = Some(format!(
            "buffer {gpa:#x}+{:#x} is not inside guest RAM",
            bytes.len()
        ));
        outcome.bytes = 0;
        outcome.lease = None;
        return outcome;
    }
    outcome.bytes = bytes.len();
    outcome
}

/// Answers one guest request. See the module docs for the outcomes.
///
/// `reader` is the calling vCPU's reader (it keeps the file open between
/// requests); `config` is the snapshot of the VM's configuration the
/// request started with.
pub fn serve<M: GuestMemory + ?Sized>(
    reader: &mut CertsReader,
    config: &CertsConfig,
    request: CertsRequest,
    memory: &M,
) -> Outcome {
    let CertsRequest { gpa, npages } = request;
    let fail = |reason, detail: String| Outcome {
        detail: Some(detail),
        ..Outcome::new(OutcomeKind::Failed, reason, request)
    };
    if gpa % PAGE_SIZE != 0 {
        return fail(
            Reason::GpaMisaligned,
            format!("gpa {gpa:#x} is not 4 KiB aligned"),
        );
    }
    let buffer_end = npages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| gpa.checked_add(len));
    if buffer_end.is_none() {
        return fail(
            Reason::BufferOverflows,
            format!("buffer of {npages} pages at {gpa:#x} overflows 64 bits"),
        );
    }

    let Some(path) = &config.certs_file else {
        // Do not keep a file open that is no longer served.
        reader.close();
        let outcome = Outcome::new(OutcomeKind::Delivered, Reason::NoCertsFile, request);
        if npages == 0 {
            return outcome;
        }
        return write_guest(memory, gpa, &EMPTY_TABLE, outcome);
    };

    let locked = match reader.lock_and_read(path, config.timeout()) {
        Ok(locked) => locked,
        Err(error) => {
            return Outcome {
                detail: Some(error_chain(&error)),
                lock_wait: error.lock_wait().max(reader.last_lock_wait()),
                ..Outcome::new(OutcomeKind::Busy, Reason::of(&error), request)
            };
        }
    };
    let size = locked.bytes.len();
    let needed = (size as u64).div_ceil(PAGE_SIZE);
    if npages < needed {
        let reason = if npages == 0 {
            Reason::SizeQuery
        } else {
            Reason::BufferTooSmall
        };
        // The lock is released here: nothing was handed out.
        return Outcome {
            npages: needed,
            bytes: size,
            lock_wait: locked.lock_wait,
            ..Outcome::new(OutcomeKind::NeedPages, reason, request)
        };
    }
    let outcome = Outcome {
        lock_wait: locked.lock_wait,
        lease: Some(locked.lease),
        ..Outcome::new(OutcomeKind::Delivered, Reason::Served, request)
    };
    write_guest(memory, gpa, locked.bytes, outcome)
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
