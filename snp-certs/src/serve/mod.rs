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
//! | failed | `EIO` | unchanged | untouched | the guest's own permanent fault: misaligned `gpa`, overflowing buffer, an SNP guest's buffer not all memory it shared with the host, the bytes to write not all in guest RAM |
//!
//! `EIO` is kept for faults the guest made and cannot recover from. A
//! buffer whose end lies past guest RAM is the guest's fault only if the
//! bytes to be written do not fit: the VMM writes just the table, so a
//! buffer that is too long but whose first bytes hold the table is served.
//!
//! [`guest_fault`] is the one place that decides a request is the guest's
//! fault. A VMM whose guest has private memory (an SEV-SNP VM) says which
//! memory the guest shared with [`serve_shared_only`]; [`serve`] is for
//! guests whose memory the host can write anywhere.
//!
//! A delivered outcome from a certs file carries the [`Lease`](crate::Lease): keep it
//! until KVM has sent the guest's report request to firmware, then drop it.
//! Everything else the VMM does with the outcome (counting, logging,
//! events) belongs after that: the outcome holds its [`Problem`] as data,
//! and [`Outcome::describe`] builds the words only when they are read.
//! Serving a request allocates nothing.

#![deny(clippy::arithmetic_side_effects)]

mod outcome;

use serde::{Deserialize, Serialize};
pub use snp_certs_types::answer::Fault;

pub use self::outcome::{Detail, GuestFault, Outcome, OutcomeKind, Problem, Reason, ret_of};
use crate::budget::BusyBudget;
use crate::config::{CertsConfig, OnError};
use crate::file::{CertsReader, LockedFile, ReadError};
use crate::guest::GuestWrite;
use crate::table::{EMPTY_TABLE, exceeds_guest_limit};

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

/// Whether guest memory at `gpa`, `len` bytes, is all memory the guest
/// shared with the host (the only memory an SEV-SNP guest sees the host
/// write).
pub type IsShared<'a> = &'a dyn Fn(u64, u64) -> bool;

/// Decides whether `request` is the guest's own, permanent fault (the
/// only answer that is `EIO`): the one place those rules live.
///
/// * `write` is `None` when deciding whether to serve the request at all,
///   before anything is locked: a `gpa` that is not 4 KiB aligned, a
///   buffer whose end overflows 64 bits, a buffer that is not all memory
///   the guest shared with the host (`is_shared`, over all `npages`).
/// * `write` is `Some(len)` just before `len` bytes are written at `gpa`:
///   they must all lie in guest RAM. A buffer that runs past the end of
///   RAM is served if the bytes written fit.
pub fn guest_fault<M: GuestWrite + ?Sized>(
    request: CertsRequest,
    write: Option<usize>,
    memory: &M,
    is_shared: IsShared<'_>,
) -> Option<GuestFault> {
    let CertsRequest { gpa, npages } = request;
    if gpa % PAGE_SIZE != 0 {
        return Some(GuestFault::Misaligned { gpa });
    }
    let Some(len) = npages
        .checked_mul(PAGE_SIZE)
        .filter(|len| gpa.checked_add(*len).is_some())
    else {
        return Some(GuestFault::Overflows { gpa, npages });
    };
    match write {
        None if !is_shared(gpa, len) => Some(GuestFault::NotShared { gpa, npages }),
        None => None,
        Some(len) if !memory.writable(gpa, len) => Some(GuestFault::OutsideRam { gpa, len }),
        Some(_) => None,
    }
}

/// Writes `bytes` at the request's `gpa` if [`guest_fault`] allows it;
/// the outcome says what happened.
fn write_guest<M: GuestWrite + ?Sized>(
    memory: &M,
    request: CertsRequest,
    bytes: &[u8],
    mut outcome: Outcome,
) -> Outcome {
    let fault = guest_fault(request, Some(bytes.len()), memory, &|_, _| true).or_else(|| {
        memory
            .write_all_at(request.gpa, bytes)
            .is_err()
            .then_some(GuestFault::OutsideRam {
                gpa: request.gpa,
                len: bytes.len(),
            })
    });
    if let Some(fault) = fault {
        // A lease, if any, is dropped with `outcome`: nothing was handed out.
        return Outcome {
            lock_wait: outcome.lock_wait,
            lock_tried: outcome.lock_tried,
            fallback: outcome.fallback,
            ..Outcome::failed(fault, request)
        };
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
    write_guest(memory, request, &EMPTY_TABLE, outcome)
}

/// Answers one request of a guest whose memory the host can write
/// anywhere. See the module docs for the outcomes.
///
/// `reader` is the calling vCPU's reader (it keeps the file open between
/// requests); `config` is the snapshot of the VM's configuration the
/// request started with; `budget` is the VM's busy budget.
pub fn serve<M: GuestWrite + ?Sized>(
    reader: &mut CertsReader,
    config: &CertsConfig,
    budget: &BusyBudget,
    request: CertsRequest,
    memory: &M,
) -> Outcome {
    serve_shared_only(reader, config, budget, request, memory, &|_, _| true)
}

/// [`serve`] for a guest with private memory: `is_shared` says which
/// memory it shared with the host; a buffer outside it is the guest's
/// fault ([`GuestFault::NotShared`]).
pub fn serve_shared_only<M: GuestWrite + ?Sized>(
    reader: &mut CertsReader,
    config: &CertsConfig,
    budget: &BusyBudget,
    request: CertsRequest,
    memory: &M,
    is_shared: IsShared<'_>,
) -> Outcome {
    let mut outcome = answer(reader, config, budget, request, memory, is_shared);
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
    is_shared: IsShared<'_>,
) -> Outcome {
    if let Some(fault) = guest_fault(request, None, memory, is_shared) {
        return Outcome::failed(fault, request);
    }
    let Some(path) = &config.certs_file else {
        // Do not keep a file open that is no longer served.
        reader.close();
        let outcome = Outcome::new(OutcomeKind::Delivered, Reason::NoCertsFile, request);
        return empty_table(memory, request, outcome);
    };

    let host_fault = |error: ReadError, reader: &CertsReader| {
        let lock_wait = error.lock_wait().max(reader.last_lock_wait());
        let problem = Problem::File(error);
        let outcome = Outcome {
            lock_wait,
            lock_tried: reader.last_lock_tried(),
            ..Outcome::new(OutcomeKind::Busy, problem.reason(), request)
        };
        (outcome, problem)
    };
    let mut file = match reader.lock(path, config.timeout()) {
        Ok(file) => file,
        Err(error) => {
            let (outcome, problem) = host_fault(error, reader);
            return host_trouble(config, budget, request, memory, outcome, problem);
        }
    };
    // The usual delivery: straight into the guest's buffer, one copy.
    if let Some(len) = direct_len(&file, config, request) {
        match memory.read_file_into(request.gpa, len, &mut file) {
            Some(Ok(true)) => {
                let size = file.size() as usize;
                return Outcome {
                    lock_wait: file.lock_wait(),
                    lock_tried: true,
                    bytes: size,
                    lease: Some(file.into_lease()),
                    ..Outcome::new(OutcomeKind::Delivered, Reason::Served, request)
                };
            }
            Some(Err(error)) => {
                drop(file);
                let (outcome, problem) = host_fault(error, reader);
                return host_trouble(config, budget, request, memory, outcome, problem);
            }
            // Not confirmed there (or not one piece of RAM the host maps):
            // the reader's own buffer decides.
            Some(Ok(false)) | None => {}
        }
    }
    let locked = match file.read() {
        Ok(locked) => locked,
        Err(error) => {
            let (outcome, problem) = host_fault(error, reader);
            return host_trouble(config, budget, request, memory, outcome, problem);
        }
    };
    let size = locked.bytes.len();
    if exceeds_guest_limit(size as u64, config.allow_large) {
        let too_large = Outcome {
            lock_wait: locked.lock_wait,
            lock_tried: true,
            ..Outcome::new(OutcomeKind::Busy, Reason::ExceedsGuestLimit, request)
        };
        drop(locked);
        let problem = Problem::TooLargeForGuests { size };
        return host_trouble(config, budget, request, memory, too_large, problem);
    }
    let needed = (size as u64).div_ceil(PAGE_SIZE);
    if request.npages < needed {
        let reason = if request.npages == 0 {
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
    write_guest(memory, request, locked.bytes, outcome)
}

/// How much of the guest's buffer to read the file straight into: when
/// its size (from `stat`, under the lock) is within the guest limit and
/// fits the guest's buffer, the size and a byte more where the buffer has
/// room (so the read sees the end of the file). Otherwise `None`, and the
/// reader's buffer is used (which also finds the exact answer for every
/// case this one leaves out).
fn direct_len(file: &LockedFile<'_>, config: &CertsConfig, request: CertsRequest) -> Option<usize> {
    let size = file.size();
    let buffer = request.npages.checked_mul(PAGE_SIZE)?;
    if size == 0 || size > buffer || exceeds_guest_limit(size, config.allow_large) {
        return None;
    }
    usize::try_from(size.saturating_add(1).min(buffer)).ok()
}

/// Busy or the fallback for a host-side fault (`outcome` is the busy
/// answer with its reason, `problem` what went wrong): see the module
/// docs.
fn host_trouble<M: GuestWrite + ?Sized>(
    config: &CertsConfig,
    budget: &BusyBudget,
    request: CertsRequest,
    memory: &M,
    outcome: Outcome,
    problem: Problem,
) -> Outcome {
    let busy = match outcome.reason.fault() {
        Some(Fault::Cancelled) => true,
        Some(Fault::Transient) => budget.try_busy(config.budget()),
        Some(Fault::Persistent) | None => false,
    };
    let outcome = Outcome {
        problem: Some(problem),
        fallback: !busy,
        ..outcome
    };
    if busy || config.on_error == OnError::Busy {
        return outcome;
    }
    empty_table(
        memory,
        request,
        Outcome {
            kind: OutcomeKind::Delivered,
            ..outcome
        },
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fallback_tests;

#[cfg(test)]
mod wait_tests;

#[cfg(test)]
mod direct_tests;
