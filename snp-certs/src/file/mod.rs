//! Opening, locking, re-checking and reading a certs file.
//!
//! [`CertsReader::lock_and_read`] implements the reader half of the lock
//! protocol (see [`crate::lock`]) for one request:
//!
//! 1. Open the file read-only and non-blocking, and refuse anything that is
//!    not a regular file (a FIFO or device would block or never end) or
//!    that lives on a pseudo file system. The descriptor, the file's device
//!    and inode are kept across requests while the path names the file.
//! 2. Take the shared OFD lock (behind any writer that announced itself,
//!    see [`crate::lock`]), waiting at most the timeout. The timeout counts
//!    from the start of the request, so opening, waiting and reopening
//!    together never take longer.
//! 3. `stat(path)`: the device and inode must be those of the open file.
//!    If the path now names another file (renamed over) or nothing
//!    (unlinked), the lock protects nothing: unlock, reopen and go to 2.
//!    The same `stat` gives the size.
//! 4. Read the whole file and validate it as a certificate table
//!    ([`ValidTable::check`], which allocates nothing). One `pread` asks
//!    for a byte more than the size: a read that stops short at exactly the
//!    size is the end of the file; any other answer (the file grew or
//!    shrank despite the lock, a short read, `EINTR`) reads on to the end
//!    of file. Files larger than [`MAX_TABLE_SIZE`](crate::table::MAX_TABLE_SIZE) are refused without
//!    being read.
//!
//! With the descriptor kept, a request costs four system calls besides
//! the release: `F_OFD_GETLK` (is a writer waiting?), `F_OFD_SETLK`,
//! `stat` and `pread`; no allocation, and the clock is read once (when the
//! lease starts) unless the request has to wait.
//!
//! The result holds a [`Lease`]: the shared lock, released when the lease
//! is dropped. Each reader has its own open file description, so the leases
//! of two readers (two vCPUs) are independent locks; a reader asked to read
//! again while its previous lease is still alive opens a fresh descriptor
//! rather than share (and so later drop) that lock.

mod error;
mod locked;

use std::ffi::CString;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub use error::{CertsFileError, ReadError};
pub use locked::LockedFile;

use crate::lock::{self, LockError, LockKind};
use crate::table::ValidTable;

/// How often a file may be found replaced between opening and locking in
/// one request before giving up (someone is replacing it in a loop).
const MAX_REOPENS: u32 = 8;

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

    /// Releases the lock now; returns how long it was held (read after
    /// the unlock, so the clock is not read inside the lease).
    pub fn release(self) -> Duration {
        let acquired = self.acquired;
        drop(self);
        acquired.elapsed()
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
    /// The same bytes, validated.
    pub table: ValidTable<'a>,
    /// The lock; drop it when the bytes are no longer relied upon.
    pub lease: Lease,
    /// How long the request waited for the lock, counted from its start
    /// (as its deadline is); zero when the lock was free at the first try.
    pub lock_wait: Duration,
    /// How many times the file was found replaced and reopened.
    pub reopened: u32,
}

/// The descriptor a reader keeps, and what names it.
#[derive(Debug)]
struct OpenCerts {
    path: PathBuf,
    /// `path` for `stat(2)`, made once per open.
    c_path: CString,
    file: Arc<File>,
    dev: u64,
    ino: u64,
    /// The file as it was when its table last validated in the reader's
    /// own buffer (see [`LockedFile::read_into`]).
    validated: Option<Validated>,
}

/// A version of the file whose table validated, and that table's header
/// (entries and terminator), which with the size decides its validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validated {
    version: Version,
    header: [u8; locked::HEADER_COPY],
    header_len: usize,
}

/// What `stat` says of a file's content: its size and change time. The
/// change time moves with every write and cannot be set by anyone, so an
/// unchanged version means (as far as the file system can tell) unchanged
/// content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    size: u64,
    ctime: (i64, i64),
}

impl OpenCerts {
    /// The file's version if `path` still names it, `None` if it names
    /// another file or nothing: one `stat`, compared with the device and
    /// inode remembered at open.
    fn version_if_still_named(&self) -> io::Result<Option<Version>> {
        // SAFETY: all-zero is a valid `stat`; `c_path` is NUL-terminated
        // and outlives the call, which only writes into `named`.
        let (ret, named) = unsafe {
            let mut named: libc::stat = std::mem::zeroed();
            (libc::stat(self.c_path.as_ptr(), &mut named), named)
        };
        if ret != 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(error),
            };
        }
        #[allow(clippy::unnecessary_cast)] // The field widths differ by target.
        let (same, ctime) = (
            named.st_dev as u64 == self.dev && named.st_ino as u64 == self.ino,
            (named.st_ctime as i64, named.st_ctime_nsec as i64),
        );
        Ok(same.then(|| Version {
            size: u64::try_from(named.st_size).unwrap_or(0),
            ctime,
        }))
    }
}

/// Reads one certs file under its shared lock, keeping the descriptor and
/// a read buffer across requests. One per vCPU.
#[derive(Debug, Default)]
pub struct CertsReader {
    open: Option<OpenCerts>,
    /// The read buffer; only ever grown (zeroed once), never cleared.
    buffer: Vec<u8>,
    cancel: Option<Arc<AtomicBool>>,
    /// Whether lock waits leave their timer lingering (a vCPU's reader).
    lease_timer: bool,
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
    open_file(path, writable)
        .map(|(file, _)| file)
        .map_err(|e| e.at(path))
}

/// [`open_certs`] without naming the path in errors, with the file's
/// metadata.
fn open_file(path: &Path, writable: bool) -> Result<(File, Metadata), ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ReadError::Missing,
            _ => ReadError::Open(source),
        })?;
    let meta = file.metadata().map_err(ReadError::Read)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(file_type_name(meta.file_type())));
    }
    if let Some(name) = pseudo_file_system(&file) {
        return Err(ReadError::NotRegular(name));
    }
    Ok((file, meta))
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

    /// A vCPU thread's reader: [`CertsReader::with_cancel`], and its lock
    /// waits take the lock as [`lock::lock_for_lease`] does, leaving their
    /// timeout timer armed for the next wait instead of paying its system
    /// calls on every one. The thread may see one `EINTR` (for a vCPU, one
    /// more kick) up to `certs-timeout` after a wait.
    pub fn for_vcpu(cancel: Arc<AtomicBool>) -> CertsReader {
        CertsReader {
            cancel: Some(cancel),
            lease_timer: true,
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

    /// Makes sure the cached descriptor is one for `path` that no lease
    /// shares, opening it if not (the request's clock starts before an
    /// open: it counts against the timeout).
    fn open_for(&mut self, path: &Path, since: &mut Option<Instant>) -> Result<(), ReadError> {
        // A live lease shares the cached description: never lock it twice.
        let reusable = self.open.as_ref().is_some_and(|open| {
            open.path.as_os_str().as_bytes() == path.as_os_str().as_bytes()
                && Arc::strong_count(&open.file) == 1
        });
        if !reusable {
            self.open = None;
            since.get_or_insert_with(Instant::now);
            let (file, meta) = open_file(path, false)?;
            let c_path = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| ReadError::Open(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            self.open = Some(OpenCerts {
                path: path.to_owned(),
                c_path,
                file: Arc::new(file),
                dev: meta.dev(),
                ino: meta.ino(),
                validated: None,
            });
        }
        Ok(())
    }

    /// Takes the shared lock on `path` (waiting at most `timeout`), makes
    /// sure the path still names the locked file, then reads and validates
    /// it. See the module docs for the steps.
    pub fn lock_and_read(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<LockedCerts<'_>, CertsFileError> {
        self.read_locked(path, timeout).map_err(|e| e.at(path))
    }

    /// [`CertsReader::lock_and_read`] with errors that do not name the
    /// path (so a failing request allocates nothing).
    pub fn read_locked(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<LockedCerts<'_>, ReadError> {
        self.lock(path, timeout)?.read()
    }

    /// Steps 1 to 3 of the module docs: the file open, locked and
    /// re-checked, with its size, not read yet.
    pub fn lock(&mut self, path: &Path, timeout: Duration) -> Result<LockedFile<'_>, ReadError> {
        let mut since = None;
        let mut waited = false;
        let mut reopened = 0;
        self.last_lock_wait = Duration::ZERO;
        self.last_lock_tried = false;
        let (lease, version) = loop {
            self.open_for(path, &mut since)?;
            let cancel = self.cancel.as_deref();
            let Some(open) = self.open.as_ref() else {
                return Err(ReadError::Read(io::ErrorKind::NotFound.into()));
            };
            let file = Arc::clone(&open.file);
            self.last_lock_tried = true;
            let locked = lock::lock_since(
                &file,
                LockKind::Shared,
                timeout,
                &mut since,
                cancel,
                self.lease_timer,
            );
            let still_named = match locked {
                Ok(blocked) => {
                    waited |= blocked;
                    Ok(open.version_if_still_named())
                }
                Err(e) => Err(e),
            };
            match still_named {
                Ok(still_named) => {
                    let acquired = Instant::now();
                    if waited {
                        self.last_lock_wait = since.map_or(Duration::ZERO, |s| acquired - s);
                    }
                    let lease = Lease { file, acquired };
                    match still_named {
                        Ok(Some(version)) => break (lease, version),
                        Ok(None) => {
                            drop(lease);
                            self.open = None;
                            reopened += 1;
                            if reopened > MAX_REOPENS {
                                return Err(ReadError::KeepsChanging(reopened));
                            }
                        }
                        Err(source) => {
                            drop(lease);
                            self.open = None;
                            return Err(ReadError::Read(source));
                        }
                    }
                }
                Err(source) => {
                    self.last_lock_wait = source_wait(&source);
                    self.forget_if_stale(&source);
                    return Err(ReadError::Lock(source));
                }
            }
        };
        Ok(LockedFile {
            lock_wait: self.last_lock_wait,
            reader: self,
            lease,
            version,
            reopened,
        })
    }

    /// After a failed lock: keeps the descriptor if the path still names
    /// it (the next request tries the same file again without reopening),
    /// forgets it otherwise, so a file replaced while its old inode stays
    /// locked is not waited for again.
    fn forget_if_stale(&mut self, error: &LockError) {
        let keep = matches!(
            error,
            LockError::Timeout { .. } | LockError::Cancelled { .. }
        ) && self
            .open
            .as_ref()
            .is_some_and(|open| matches!(open.version_if_still_named(), Ok(Some(_))));
        if !keep {
            self.open = None;
        }
    }
}

/// How long a failed lock call waited.
fn source_wait(error: &LockError) -> Duration {
    match error {
        LockError::Timeout { waited } | LockError::Cancelled { waited } => *waited,
        LockError::Fcntl(_) | LockError::Timer(_) => Duration::ZERO,
    }
}

#[cfg(test)]
mod locked_tests;
#[cfg(test)]
mod reader_tests;
#[cfg(test)]
mod tests;
