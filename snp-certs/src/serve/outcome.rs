//! The answer to one request ([`Outcome`]) and why it is what it is
//! ([`Problem`]), kept as plain data while the lease is held: the message
//! a person reads is built from it later, and only when someone reads it
//! (a log line, an event).

use std::error::Error;
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use snp_certs_types::answer::{OutcomeKind, Reason};

use super::CertsRequest;
use crate::config::CertsConfig;
use crate::file::{Lease, ReadError};
use crate::lock::LockError;
use crate::table::LINUX_GUEST_MAX_SIZE;

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

/// A guest's own, permanent fault: answered `EIO`. Only
/// [`guest_fault`](super::guest_fault) finds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFault {
    /// `gpa` is not 4 KiB aligned.
    Misaligned {
        /// The buffer's address.
        gpa: u64,
    },
    /// `gpa + npages * 4096` overflows 64 bits.
    Overflows {
        /// The buffer's address.
        gpa: u64,
        /// Its pages.
        npages: u64,
    },
    /// The buffer is not all memory the guest shared with the host (an
    /// SEV-SNP guest's private memory: the host cannot write there).
    NotShared {
        /// The buffer's address.
        gpa: u64,
        /// Its pages.
        npages: u64,
    },
    /// The bytes to write are not all in guest RAM.
    OutsideRam {
        /// The buffer's address.
        gpa: u64,
        /// The bytes that were to be written.
        len: usize,
    },
}

impl GuestFault {
    /// The reason counters and events name.
    pub fn reason(self) -> Reason {
        match self {
            GuestFault::Misaligned { .. } => Reason::GpaMisaligned,
            GuestFault::Overflows { .. } => Reason::BufferOverflows,
            GuestFault::NotShared { .. } => Reason::BufferNotShared,
            GuestFault::OutsideRam { .. } => Reason::OutsideGuestRam,
        }
    }
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GuestFault::Misaligned { gpa } => write!(f, "gpa {gpa:#x} is not 4 KiB aligned"),
            GuestFault::Overflows { gpa, npages } => {
                write!(f, "buffer of {npages} pages at {gpa:#x} overflows 64 bits")
            }
            GuestFault::NotShared { gpa, npages } => write!(
                f,
                "the buffer of {npages} pages at {gpa:#x} is not all memory the guest shared with the host"
            ),
            GuestFault::OutsideRam { gpa, len } => {
                write!(f, "buffer {gpa:#x}+{len:#x} is not inside guest RAM")
            }
        }
    }
}

/// What went wrong with a request that was not simply served.
#[derive(Debug)]
pub enum Problem {
    /// The guest's own fault.
    Guest(GuestFault),
    /// The certs file could not be served.
    File(ReadError),
    /// The table is larger than a Linux guest can receive.
    TooLargeForGuests {
        /// Its size.
        size: usize,
    },
}

impl Problem {
    /// The reason counters and events name.
    pub fn reason(&self) -> Reason {
        match self {
            Problem::Guest(fault) => fault.reason(),
            Problem::File(error) => file_reason(error),
            Problem::TooLargeForGuests { .. } => Reason::ExceedsGuestLimit,
        }
    }
}

/// The reason a certs file could not be served.
fn file_reason(error: &ReadError) -> Reason {
    match error {
        ReadError::Missing => Reason::FileMissing,
        ReadError::NotRegular(_) => Reason::FileNotRegular,
        ReadError::Open(_) | ReadError::Read(_) => Reason::FileUnreadable,
        ReadError::Lock(LockError::Timeout { .. }) => Reason::LockTimeout,
        ReadError::Lock(LockError::Cancelled { .. }) => Reason::LockCancelled,
        ReadError::Lock(_) => Reason::LockFailed,
        ReadError::KeepsChanging(_) => Reason::FileKeepsChanging,
        ReadError::TooLarge(_) => Reason::FileTooLarge,
        ReadError::Invalid(_) => Reason::FileInvalid,
    }
}

/// A [`Problem`] in words, with the certs file it concerns: see
/// [`Outcome::describe`].
#[derive(Debug, Clone, Copy)]
pub struct Detail<'a> {
    problem: &'a Problem,
    certs_file: Option<&'a Path>,
}

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            Problem::Guest(fault) => fault.fmt(f),
            Problem::TooLargeForGuests { size } => write!(
                f,
                "the table is {size} bytes; Linux guests cannot receive more than {LINUX_GUEST_MAX_SIZE}"
            ),
            Problem::File(error) => {
                match self.certs_file {
                    Some(path) => write!(f, "Certs file {} {error}", path.display())?,
                    None => write!(f, "Certs file {error}")?,
                }
                let mut source = error.source();
                while let Some(e) = source {
                    write!(f, ": {e}")?;
                    source = e.source();
                }
                Ok(())
            }
        }
    }
}

/// The answer to one request.
#[derive(Debug)]
pub struct Outcome {
    /// Which answer.
    pub kind: OutcomeKind,
    /// Why.
    pub reason: Reason,
    /// What went wrong, on errors and fallbacks; [`Outcome::describe`]
    /// puts it in words.
    pub problem: Option<Problem>,
    /// The `npages` to write back: the pages needed on
    /// [`OutcomeKind::NeedPages`], otherwise the guest's own value.
    pub npages: u64,
    /// Bytes written to guest memory (delivered) or the table size (need
    /// pages); 0 otherwise.
    pub bytes: usize,
    /// How long the request waited for the shared lock, counted from its
    /// start (see [`crate::file`]).
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
            problem: None,
            npages: request.npages,
            bytes: 0,
            lock_wait: Duration::ZERO,
            lock_tried: false,
            fallback: false,
            busy_streak: Duration::ZERO,
            lease: None,
        }
    }

    /// The guest's own fault: `EIO`.
    pub fn failed(fault: GuestFault, request: CertsRequest) -> Outcome {
        Outcome {
            problem: Some(Problem::Guest(fault)),
            ..Outcome::new(OutcomeKind::Failed, fault.reason(), request)
        }
    }

    /// The `ret` value for the exit.
    pub fn ret(&self) -> u64 {
        ret_of(self.kind)
    }

    /// What went wrong, in words, naming `certs_file` (the file of the
    /// configuration the request was served with) where it concerns the
    /// file; `None` when nothing did. Nothing is formatted until the
    /// result is displayed.
    pub fn describe<'a>(&'a self, certs_file: Option<&'a Path>) -> Option<Detail<'a>> {
        self.problem.as_ref().map(|problem| Detail {
            problem,
            certs_file,
        })
    }

    /// [`Outcome::describe`] as a string, for `config`'s certs file.
    pub fn detail(&self, config: &CertsConfig) -> Option<String> {
        self.describe(config.certs_file.as_deref())
            .map(|d| d.to_string())
    }
}
