//! Opening, locking, re-checking and reading a certs file.
//!
//! [`CertsReader::lock_and_read`] implements the reader half of the lock
//! protocol (see [`crate::lock`]) for one request:
//!
//! 1. Open the file read-only and non-blocking, and refuse anything that is
//!    not a regular file (a FIFO or device would block or never end). The
//!    descriptor is kept open across requests while the file is unchanged.
//! 2. Take the shared OFD lock (behind any writer that announced itself,
//!    see [`crate::lock`]), waiting at most the timeout.
//! 3. Compare `stat(path)` with `fstat(fd)` (device and inode). If the path
//!    now names another file (renamed over) or nothing (unlinked), the lock
//!    protects nothing: unlock, reopen and go to 2.
//! 4. Read the whole file (short reads and `EINTR` are retried; files larger
//!    than [`MAX_TABLE_SIZE`] are refused without reading them all) and
//!    validate it as a certificate table.
//!
//! The result holds a [`Lease`]: the shared lock, released when the lease
//! is dropped. Each reader has its own open file description, so the leases
//! of two readers (two vCPUs) are independent locks; a reader asked to read
//! again while its previous lease is still alive opens a fresh descriptor
//! rather than share (and so later drop) that lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::lock::{self, LockError, LockKind};
use crate::table::{CertTable, MAX_TABLE_SIZE, TableError};

/// How often a file may be found replaced between opening and locking in
/// one request before giving up (someone is replacing it in a loop).
const MAX_REOPENS: u32 = 8;

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

/// The shared lock on a certs file, held until dropped.
///
/// A VMM keeps the lease from the moment it copied the certificates into
/// guest memory until KVM has passed the guest's report request to firmware
/// (the immediate-exit `KVM_RUN` after completing the exit), so that no
/// firmware or key update can slip in between.
#[derive(Debug)]
pub struct Lease {
    file: Arc<File>,
    acquired: Instant,
}

impl Lease {
    /// How long the lock has been held.
    pub fn held_for(&self) -> Duration {
        self.acquired.elapsed()
    }

    /// Releases the lock now; returns how long it was held.
    pub fn release(self) -> Duration {
        self.held_for()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = lock::unlock(&self.file) {
            // Closing the last descriptor of the description releases the
            // lock anyway; the reader drops its copy on its next error.
            log::warn!("Unlocking a certs file lease failed: {e}");
        }
    }
}

/// A certs file read under its shared lock.
#[derive(Debug)]
pub struct LockedCerts<'a> {
    /// The file's bytes, a valid certificate table.
    pub bytes: &'a [u8],
    /// The lock; drop it when the bytes are no longer relied upon.
    pub lease: Lease,
    /// Time spent waiting for the lock.
    pub lock_wait: Duration,
    /// How many times the file was found replaced and reopened.
    pub reopened: u32,
}

#[derive(Debug)]
struct OpenCerts {
    path: PathBuf,
    file: Arc<File>,
}

/// Reads one certs file under its shared lock, keeping the descriptor and
/// a read buffer across requests. One per vCPU.
#[derive(Debug, Default)]
pub struct CertsReader {
    open: Option<OpenCerts>,
    buffer: Vec<u8>,
    cancel: Option<Arc<AtomicBool>>,
    last_lock_wait: Duration,
    last_lock_tried: bool,
}

fn file_type_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Opens `path` read-only without blocking and checks it is a regular file.
pub fn open_regular(path: &Path) -> Result<File, CertsFileError> {
    open_certs(path, false)
}

/// Opens `path` (read-only, or read-write for a writer) without blocking,
/// so a FIFO or device never hangs the caller, and checks it is a regular
/// file.
pub(crate) fn open_certs(path: &Path, writable: bool) -> Result<File, CertsFileError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CertsFileError::Missing {
                path: path.to_owned(),
            },
            _ => CertsFileError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| CertsFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(CertsFileError::NotRegular {
            path: path.to_owned(),
            file_type: file_type_name(meta.file_type()),
        });
    }
    if let Some(name) = pseudo_file_system(&file) {
        return Err(CertsFileError::NotRegular {
            path: path.to_owned(),
            file_type: name,
        });
    }
    Ok(file)
}

/// The kind of pseudo file system `file` lives on, if any: files there
/// look regular but are not data (`/proc/self/mem` fails to read,
/// `/proc/kmsg` consumes the kernel log), so they are refused before a
/// single byte is read.
fn pseudo_file_system(file: &File) -> Option<&'static str> {
    // Magic numbers from include/uapi/linux/magic.h.
    const KINDS: [(i64, &str); 6] = [
        (0x9fa0, "file on procfs"),
        (0x6265_6572, "file on sysfs"),
        (0x6462_6720, "file on debugfs"),
        (0x7472_6163, "file on tracefs"),
        (0x6367_7270, "file on cgroup2"),
        (0x7363_6673, "file on securityfs"),
    ];
    // SAFETY: `statfs` is plain old data, valid all-zero; fstatfs writes
    // one into it for a descriptor that `file` keeps open.
    let (ret, fs) = unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        (libc::fstatfs(file.as_raw_fd(), &mut fs), fs)
    };
    if ret != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target.
    let kind = fs.f_type as i64;
    KINDS
        .iter()
        .find(|(magic, _)| *magic == kind)
        .map(|(_, name)| *name)
}

/// The size of the file open as `file` if `path` still names it, `None`
/// if the path now names another file or nothing.
pub(crate) fn still_names(path: &Path, file: &File) -> io::Result<Option<u64>> {
    let open = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(named) if named.dev() == open.dev() && named.ino() == open.ino() => Ok(Some(open.len())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads all of `file` from offset 0 into `buffer`, refusing more than
/// [`MAX_TABLE_SIZE`] bytes. `size_hint` (from `fstat`) sizes the buffer;
/// the read goes on to end of file whatever it says.
fn read_all(file: &File, size_hint: u64, buffer: &mut Vec<u8>) -> io::Result<Result<(), usize>> {
    buffer.clear();
    // One byte more than the limit tells "too large" from "exactly at it".
    let cap = MAX_TABLE_SIZE + 1;
    let hint = usize::try_from(size_hint).unwrap_or(cap);
    buffer.resize(hint.clamp(4096, cap), 0);
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            if buffer.len() >= cap {
                return Ok(Err(MAX_TABLE_SIZE));
            }
            let grown = buffer.len().saturating_mul(2).min(cap);
            buffer.resize(grown, 0);
        }
        match file.read_at(&mut buffer[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buffer.truncate(filled);
    Ok(Ok(()))
}

impl CertsReader {
    /// A reader with nothing open yet.
    pub fn new() -> CertsReader {
        CertsReader::default()
    }

    /// A reader whose lock waits end early once `cancel` is set and the
    /// thread is signalled (see [`lock::lock_or_cancel`]): a VMM passes its
    /// stop flag so a vCPU waiting for a busy file stops promptly.
    pub fn with_cancel(cancel: Arc<AtomicBool>) -> CertsReader {
        CertsReader {
            cancel: Some(cancel),
            ..CertsReader::default()
        }
    }

    /// How long the last [`CertsReader::lock_and_read`] waited for the
    /// lock, also when it then failed (a file found invalid under the lock
    /// still cost that wait).
    pub fn last_lock_wait(&self) -> Duration {
        self.last_lock_wait
    }

    /// Whether the last [`CertsReader::lock_and_read`] got as far as
    /// asking for the lock (a missing or unopenable file does not).
    pub fn last_lock_tried(&self) -> bool {
        self.last_lock_tried
    }

    /// Forgets the cached descriptor (e.g. after the VM's certs file was
    /// changed). Outstanding leases keep their own reference.
    pub fn close(&mut self) {
        self.open = None;
    }

    /// The cached descriptor for `path`, or a newly opened one.
    fn file_for(&mut self, path: &Path) -> Result<Arc<File>, CertsFileError> {
        if let Some(open) = &self.open {
            // A live lease shares this description: never lock it twice.
            if open.path == path && Arc::strong_count(&open.file) == 1 {
                return Ok(Arc::clone(&open.file));
            }
        }
        self.open = None;
        let file = Arc::new(open_regular(path)?);
        self.open = Some(OpenCerts {
            path: path.to_owned(),
            file: Arc::clone(&file),
        });
        Ok(file)
    }

    /// Takes the shared lock on `path` (waiting at most `timeout`), makes
    /// sure the path still names the locked file, then reads and validates
    /// it. See the module docs for the steps.
    pub fn lock_and_read(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<LockedCerts<'_>, CertsFileError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut lock_wait = Duration::ZERO;
        let mut reopened = 0;
        self.last_lock_wait = Duration::ZERO;
        self.last_lock_tried = false;
        let (file, acquired, size) = loop {
            let file = self.file_for(path)?;
            self.last_lock_tried = true;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let cancel = self.cancel.as_deref();
            let waited = lock::lock_or_cancel(&file, LockKind::Shared, remaining, cancel).map_err(
                |source| {
                    self.open = None;
                    CertsFileError::Lock {
                        path: path.to_owned(),
                        source: match source {
                            LockError::Timeout { waited } => LockError::Timeout {
                                waited: lock_wait + waited,
                            },
                            other => other,
                        },
                    }
                },
            )?;
            lock_wait += waited;
            self.last_lock_wait = lock_wait;
            let acquired = Instant::now();
            match still_names(path, &file) {
                Ok(Some(size)) => break (file, acquired, size),
                Ok(None) => {
                    drop(Lease { file, acquired });
                    self.open = None;
                    reopened += 1;
                    if reopened > MAX_REOPENS {
                        return Err(CertsFileError::KeepsChanging {
                            path: path.to_owned(),
                            times: reopened,
                        });
                    }
                }
                Err(source) => {
                    drop(Lease { file, acquired });
                    self.open = None;
                    return Err(CertsFileError::Read {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        };
        let lease = Lease { file, acquired };
        match read_all(&lease.file, size, &mut self.buffer) {
            Ok(Ok(())) => {}
            Ok(Err(max)) => {
                return Err(CertsFileError::TooLarge {
                    path: path.to_owned(),
                    max,
                });
            }
            Err(source) => {
                self.open = None;
                return Err(CertsFileError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        if let Err(source) = CertTable::parse(&self.buffer) {
            return Err(CertsFileError::Invalid {
                path: path.to_owned(),
                source,
            });
        }
        Ok(LockedCerts {
            bytes: &self.buffer,
            lease,
            lock_wait,
            reopened,
        })
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
