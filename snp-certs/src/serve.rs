//! Serving one guest certificate request: the answer policy.
//!
//! A guest asks for certificates with a buffer address `gpa` (4 KiB
//! aligned) and its size in pages, `npages`; both come verbatim from the
//! guest and are untrusted. [`serve`] answers with an [`Outcome`] whose
//! [`ret`](Outcome::ret) and [`npages`](Outcome::npages) are exactly what
//! the VMM writes back into `KVM_EXIT_SNP_REQ_CERTS`.
//!
//! What a Linux guest does with each answer decides the policy:
//!
//! | `ret` | what a Linux guest does |
//! | --- | --- |
//! | 0 | sends the report request to firmware and reads the table from its buffer |
//! | `ENOSPC` | learns the size from `npages`; a 16 KiB configfs-tsm caller cannot grow its buffer and fails |
//! | `EAGAIN` | sleeps 2 s and asks again; **after 60 s it gives up and disables its VMPCK key for good** |
//! | `EIO` | disables its VMPCK key for good |
//!
//! So the answers are:
//!
//! | outcome | `ret` | `npages` | guest memory | when |
//! | --- | --- | --- | --- | --- |
//! | delivered | 0 | unchanged | table written at `gpa` | the file was locked, valid and fits |
//! | delivered (no file) | 0 | unchanged | 24 zero bytes if `npages > 0` | no certs file configured |
//! | need pages | `ENOSPC` | `ceil(size / 4096)` | untouched | the buffer is too small (`npages = 0` asks for the size) |
//! | busy | `EAGAIN` | unchanged | untouched | transient trouble (a writer holds the lock, the file keeps being replaced) while the VM's [busy budget](crate::budget) lasts; a wait cut short because the VM is stopping |
//! | fallback | 0 (`EAGAIN` with `on_error = busy`) | unchanged | as with no file | persistent trouble (file missing, not regular, unreadable, invalid, too large, over 16 KiB) at once; transient trouble once the busy budget is spent |
//! | failed | `EIO` | unchanged | untouched | the guest's own permanent fault: misaligned `gpa`, overflowing buffer, the bytes to write not all in guest RAM, an SNP guest's buffer not shared with the host ([`Reason::BufferNotShared`], checked by the VMM) |
//!
//! `EIO` is kept for faults the guest made and cannot recover from. A
//! buffer whose end lies past guest RAM is the guest's fault only if the
//! bytes to be written do not fit: the VMM writes just the table, so a
//! buffer that is too long but whose first bytes hold the table is served.
//!
//! A delivered outcome from a certs file carries the [`Lease`]: keep it
//! until KVM has sent the guest's report request to firmware, then drop it.

#![deny(clippy::arithmetic_side_effects)]

use std::error::Error;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::budget::BusyBudget;
use crate::config::{CertsConfig, OnError};
use crate::file::{CertsFileError, CertsReader, Lease};
use crate::guest::GuestWrite;
use crate::lock::LockError;
use crate::table::{EMPTY_TABLE, LINUX_GUEST_MAX_SIZE};

/// Size of a guest page as counted by `npages`.
pub const PAGE_SIZE: u64 = 4096;

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

    /// The `ret` value for this kind, as `KVM_EXIT_SNP_REQ_CERTS` takes
    /// it: 0, `ENOSPC`, `EAGAIN` or `EIO`.
    pub fn ret(self) -> u64 {
        let errno = match self {
            OutcomeKind::Delivered => 0,
            OutcomeKind::NeedPages => libc::ENOSPC,
            OutcomeKind::Busy => libc::EAGAIN,
            OutcomeKind::Failed => libc::EIO,
        };
        errno.unsigned_abs().into()
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
    /// Whether the request got as far as taking the lock (so its wait,
    /// even zero, belongs in lock-wait statistics).
    pub lock_tried: bool,
    /// Whether this is the fallback answer for a host-side fault
    /// ([`Outcome::reason`] says which).
    pub fallback: bool,
    /// How long the VM's guest had been told busy without a break when
    /// this answer was given (zero when the previous answer was not busy).
    pub busy_streak: Duration,
    /// The shared lock, held on a delivery from a certs file.
    pub lease: Option<Lease>,
}

impl Outcome {
    /// An answer of `kind` for `request`: nothing written, no lock wait,
    /// no lease, the guest's own `npages`.
    pub fn new(kind: OutcomeKind, reason: Reason, request: CertsRequest) -> Outcome {
        Outcome {
            kind,
            reason,
            detail: None,
            npages: request.npages,
            bytes: 0,
            lock_wait: Duration::ZERO,
            lock_tried: false,
            fallback: false,
            busy_streak: Duration::ZERO,
            lease: None,
        }
    }

    /// The `ret` value for the exit.
    pub fn ret(&self) -> u64 {
        self.kind.ret()
    }
}

/// An error with its chain of sources, for [`Outcome::detail`].
fn detail(error: &dyn Error) -> String {
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
fn write_guest<M: GuestWrite + ?Sized>(
    memory: &M,
    gpa: u64,
    bytes: &[u8],
    mut outcome: Outcome,
) -> Outcome {
    if let Err(why) = memory.write_all_at(gpa, bytes) {
        outcome.kind = OutcomeKind::Failed;
        outcome.reason = Reason::OutsideGuestRam;
        outcome.detail = Some(why);
        outcome.bytes = 0;
        outcome.lease = None;
        return outcome;
    }
    outcome.bytes = bytes.len();
    outcome
}

/// The answer when no table is served: 24 zero bytes (if the guest
/// offered a buffer), `ret` 0.
fn empty_table<M: GuestWrite + ?Sized>(
    memory: &M,
    request: CertsRequest,
    outcome: Outcome,
) -> Outcome {
    if request.npages == 0 {
        return outcome;
    }
    write_guest(memory, request.gpa, &EMPTY_TABLE, outcome)
}

/// Answers one request. See the module docs for the outcomes.
///
/// `reader` is the calling vCPU's reader (it keeps the file open between
/// requests); `config` is the snapshot of the VM's configuration the
/// request started with; `budget` is the VM's busy budget; `memory` is
/// where the table goes (any [`vm_memory::GuestMemory`], or a VMM's own
/// [`GuestWrite`]).
pub fn serve<M: GuestWrite + ?Sized>(
    reader: &mut CertsReader,
    config: &CertsConfig,
    budget: &BusyBudget,
    request: CertsRequest,
    memory: &M,
) -> Outcome {
    let mut outcome = answer(reader, config, budget, request, memory);
    outcome.busy_streak = budget.streak();
    if outcome.kind != OutcomeKind::Busy {
        budget.end_streak();
    }
    outcome
}

fn answer<M: GuestWrite + ?Sized>(
    reader: &mut CertsReader,
    config: &CertsConfig,
    budget: &BusyBudget,
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
        return empty_table(memory, request, outcome);
    };

    let locked = match reader.lock_and_read(path, config.timeout()) {
        Ok(locked) => locked,
        Err(error) => {
            let lock_wait = error.lock_wait().max(reader.last_lock_wait());
            let host_fault = Outcome {
                detail: Some(detail(&error)),
                lock_wait,
                lock_tried: reader.last_lock_tried(),
                ..Outcome::new(OutcomeKind::Busy, Reason::of(&error), request)
            };
            return host_trouble(config, budget, request, memory, host_fault);
        }
    };
    let size = locked.bytes.len();
    if size > LINUX_GUEST_MAX_SIZE && !config.allow_large {
        let too_large = Outcome {
            detail: Some(format!(
                "the table is {size} bytes; Linux guests cannot receive more than {LINUX_GUEST_MAX_SIZE}"
            )),
            lock_wait: locked.lock_wait,
            lock_tried: true,
            ..Outcome::new(OutcomeKind::Busy, Reason::ExceedsGuestLimit, request)
        };
        drop(locked);
        return host_trouble(config, budget, request, memory, too_large);
    }
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
            lock_tried: true,
            ..Outcome::new(OutcomeKind::NeedPages, reason, request)
        };
    }
    let outcome = Outcome {
        lock_wait: locked.lock_wait,
        lock_tried: true,
        lease: Some(locked.lease),
        ..Outcome::new(OutcomeKind::Delivered, Reason::Served, request)
    };
    write_guest(memory, gpa, locked.bytes, outcome)
}

/// Busy or the fallback for a host-side fault (`outcome` is the busy
/// answer with its reason): see the module docs.
fn host_trouble<M: GuestWrite + ?Sized>(
    config: &CertsConfig,
    budget: &BusyBudget,
    request: CertsRequest,
    memory: &M,
    outcome: Outcome,
) -> Outcome {
    let busy = match outcome.reason.fault() {
        Some(Fault::Cancelled) => true,
        Some(Fault::Transient) => budget.try_busy(config.budget()),
        Some(Fault::Persistent) | None => false,
    };
    if busy {
        return outcome;
    }
    let outcome = Outcome {
        fallback: true,
        ..outcome
    };
    match config.on_error {
        OnError::Busy => outcome,
        OnError::Empty => empty_table(
            memory,
            request,
            Outcome {
                kind: OutcomeKind::Delivered,
                ..outcome
            },
        ),
    }
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "serve_fallback_tests.rs"]
mod fallback_tests;
