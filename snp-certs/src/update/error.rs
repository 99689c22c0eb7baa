//! Why an update did not happen.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::lock::LockError;
use crate::table::TableError;

/// Why an update did not happen (or had to be undone).
#[derive(Debug, Error)]
pub enum UpdateError {
    /// The new content is not a valid table; the file was not touched.
    #[error("New content is not a valid certificate table")]
    InvalidNew(#[source] TableError),
    /// The path names nothing.
    #[error("Certs file {path} does not exist")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The path could not be opened read-write.
    #[error("Cannot open certs file {path} for writing")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path names a directory, FIFO, socket or device.
    #[error("Certs file {path} is a {file_type}, not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        file_type: &'static str,
    },
    /// The exclusive lock could not be taken in time, or at all.
    #[error("Cannot take the exclusive lock on {path}")]
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
    /// The path was renamed over or unlinked while we held the lock.
    #[error("Certs file {path} was replaced while locked; nothing was written")]
    Replaced {
        /// The path.
        path: PathBuf,
    },
    /// `stat`, `fstat` or `read` failed.
    #[error("Cannot read certs file {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is too large to be a certs file.
    #[error("Certs file {path} is {size} bytes, too large to be a certificate table")]
    OldTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file holds something other than a table (and is not empty).
    #[error("Certs file {path} does not hold a certificate table; refusing to overwrite it")]
    NotATable {
        /// The path.
        path: PathBuf,
        /// Why its content is not a table.
        #[source]
        source: TableError,
    },
    /// Writing failed; the old content was written back.
    #[error("Cannot write certs file {path}; its previous content was restored")]
    Write {
        /// The path.
        path: PathBuf,
        /// The write error.
        #[source]
        source: io::Error,
    },
    /// Writing failed and so did restoring the old content.
    #[error(
        "Cannot write certs file {path}, and restoring its previous content failed too \
         ({restore}): the file may be torn; guests are answered busy until it is fixed"
    )]
    RestoreFailed {
        /// The path.
        path: PathBuf,
        /// The write error.
        #[source]
        source: io::Error,
        /// The restore error.
        restore: io::Error,
    },
}
