//! Why a certs file could not be served: [`ReadError`] without the path,
//! as a guest request keeps it (a failing request allocates nothing; the
//! caller knows the path and renders the message when it logs), and
//! [`CertsFileError`], the same with the path, for everything else.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::lock::LockError;
use crate::table::TableError;

/// Why a certs file could not be read under the lock, without the path.
/// [`ReadError::at`] names the file.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The path names nothing.
    #[error("does not exist")]
    Missing,
    /// The path could not be opened (permissions, loops, ...).
    #[error("cannot be opened")]
    Open(#[source] io::Error),
    /// The path names a directory, FIFO, socket, device or pseudo file.
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// The shared lock could not be taken in time, or at all.
    #[error("cannot be locked")]
    Lock(#[source] LockError),
    /// The file kept being replaced while we tried to lock it.
    #[error("was replaced {0} times while being locked")]
    KeepsChanging(u32),
    /// `stat`, `fstat` or `read` failed.
    #[error("cannot be read")]
    Read(#[source] io::Error),
    /// The file is larger than any valid table.
    #[error("is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The content is not a valid certificate table.
    #[error("is not a valid certificate table")]
    Invalid(#[source] TableError),
}

impl ReadError {
    /// The same error naming `path`.
    pub fn at(self, path: &Path) -> CertsFileError {
        let path = path.to_owned();
        match self {
            ReadError::Missing => CertsFileError::Missing { path },
            ReadError::Open(source) => CertsFileError::Open { path, source },
            ReadError::NotRegular(file_type) => CertsFileError::NotRegular { path, file_type },
            ReadError::Lock(source) => CertsFileError::Lock { path, source },
            ReadError::KeepsChanging(times) => CertsFileError::KeepsChanging { path, times },
            ReadError::Read(source) => CertsFileError::Read { path, source },
            ReadError::TooLarge(max) => CertsFileError::TooLarge { path, max },
            ReadError::Invalid(source) => CertsFileError::Invalid { path, source },
        }
    }

    /// How long the lock was waited for before this error, if at all.
    pub fn lock_wait(&self) -> Duration {
        match self {
            ReadError::Lock(LockError::Timeout { waited } | LockError::Cancelled { waited }) => {
                *waited
            }
            _ => Duration::ZERO,
        }
    }
}

/// Why a certs file could not be read under the lock.
#[derive(Debug, Error)]
pub enum CertsFileError {
    /// The path names nothing.
    #[error("Certs file {path} does not exist")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The path could not be opened (permissions, loops, ...).
    #[error("Cannot open certs file {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// What `open` said.
        #[source]
        source: io::Error,
    },
    /// The path names a directory, FIFO, socket or device.
    #[error("{path} is a {file_type}, not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        file_type: &'static str,
    },
    /// The shared lock could not be taken in time, or at all.
    #[error("Cannot take the shared lock on {path}")]
    Lock {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: LockError,
    },
    /// The file kept being replaced while we tried to lock it.
    #[error("Certs file {path} was replaced {times} times while being locked")]
    KeepsChanging {
        /// The path.
        path: PathBuf,
        /// How many times.
        times: u32,
    },
    /// `stat`, `fstat` or `read` failed.
    #[error("Cannot read certs file {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The file is larger than any valid table.
    #[error("Certs file {path} is larger than the limit of {max} bytes")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// The content is not a valid certificate table.
    #[error("Certs file {path} is not a valid certificate table")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: TableError,
    },
}

impl CertsFileError {
    /// Whether another process kept the lock past the timeout (an update
    /// in progress, as opposed to a missing or broken file).
    pub fn is_lock_timeout(&self) -> bool {
        matches!(
            self,
            CertsFileError::Lock {
                source: LockError::Timeout { .. },
                ..
            }
        )
    }

    /// How long the lock was waited for before this error, if at all.
    pub fn lock_wait(&self) -> Duration {
        match self {
            CertsFileError::Lock {
                source: LockError::Timeout { waited } | LockError::Cancelled { waited },
                ..
            } => *waited,
            _ => Duration::ZERO,
        }
    }
}
