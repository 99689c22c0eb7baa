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
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use snp_certs_types::answer::{Fault, OutcomeKind, Reason};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::budget::BusyBudget;
use crate::config::{CertsConfig, OnError};
use crate::file::{CertsFileError, CertsReader, Lease};
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

/// The `ret` value for `kind`, as `KVM_EXIT_SNP_REQ_CERTS` takes it: 0,
/// `ENOSPC`, `EAGAIN` or `EIO`.
pub fn ret_of(kind: OutcomeKind) -> u64 {
    let errno = match kind {
        OutcomeKind::Delivered => 0,
        OutcomeKind::NeedPages => libc::ENOSPC,
        OutcomeKind::Busy => libc::EAGAIN,
        OutcomeKind::Failed => libc::EIO,
    };
    errno.unsigned_abs().into()
}

/// The reason a certs file could not be served.
fn reason_of(error: &CertsFileError) -> Reason {
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
        ret_of(self.kind)
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

/// The answer when no table is served: 24 zero bytes (if the guest
/// offered a buffer), `ret` 0.
fn empty_table<M: GuestMemory + ?Sized>(
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
/// request started with; `budget` is the VM's busy budget.
pub fn serve<M: GuestMemory + ?Sized>(
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

fn answer<M: GuestMemory + ?Sized>(
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
                ..Outcome::new(OutcomeKind::Busy, reason_of(&error), request)
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
fn host_trouble<M: GuestMemory + ?Sized>(
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
