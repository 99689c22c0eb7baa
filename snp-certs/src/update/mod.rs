//! The writer half of the lock protocol: replacing the content of a live
//! certs file in place, under the exclusive lock.
//!
//! # Protocol
//!
//! Readers (the VMM answering a guest) take a shared OFD lock on the certs
//! file, re-check that the path still names the locked inode, read, and
//! keep the lock until the guest's report request has reached firmware
//! (see [`crate::file`] and [`crate::lock`]). A writer therefore:
//!
//! 1. opens the file read-write (a regular file, or a symlink to one; the
//!    open does not block on FIFOs and does not take a controlling tty);
//! 2. takes the **exclusive** OFD lock on the whole file, waiting at most
//!    the timeout for readers to finish; it announces itself first on the
//!    writer intent byte, so readers arriving meanwhile queue behind it
//!    instead of starving it (see [`crate::lock`]);
//! 3. re-checks that the path still names the locked inode (device and
//!    inode of `stat(path)` against `fstat(fd)`), reopening if not, exactly
//!    as readers do, so that the lock is on the inode guests are served
//!    from;
//! 4. reads and keeps the old content in memory;
//! 5. rewrites the file **in place**: truncate to zero, write the new table
//!    from offset 0, set the length, `fsync`;
//! 6. on any error, writes the old content back the same way before
//!    unlocking, so readers never see a half-written table;
//! 7. unlocks (closing the descriptor would too).
//!
//! # Why in place, never rename
//!
//! Writing a temporary file and renaming it over the certs file is the
//! usual way to replace a file atomically, and it is wrong here. The lock
//! lives on an inode. A VMM that answered a guest a moment ago may still
//! hold its shared lock on the old inode while the guest's request reaches
//! firmware; a rename neither waits for that lock nor is held off by it,
//! so firmware keys and the served certificates can get out of step. And a
//! writer that locked the old inode and then renamed a new one over it
//! holds a lock on a file nobody reads any more: readers that open the
//! path get the new inode, unlocked. The kernel's protocol therefore says
//! that tools update the file in place under the exclusive lock, and
//! readers re-check the inode after locking to notice anyone who renamed
//! anyway.
//!
//! # Crashes
//!
//! While the lock is held, readers are kept out, so they see the old or the
//! new table, never a mix. During the rewrite the calling thread blocks
//! `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGQUIT`; they take effect once the
//! file is whole again. If the process dies anyway (`SIGKILL`, a crash),
//! the kernel drops its lock when the descriptor closes, and the file may
//! hold a prefix of the new table. Because the file is truncated before
//! the new bytes are written, such a prefix is either not a valid table
//! (readers answer the guest "busy" and it retries) or already holds every
//! certificate of the new table: never old certificates under a new
//! header. Run the update again to finish it.

mod error;
mod signals;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::file::{self, CertsFileError};
use crate::lock::{self, LockError, LockKind};
use crate::table::CertTable;

pub use error::UpdateError;

/// How often the file may be found replaced between opening and locking
/// before giving up.
const MAX_REOPENS: u32 = 8;

/// Largest old content kept for restoring (16 MiB). A larger file is not a
/// certs file; the update refuses to touch it.
pub const MAX_OLD_SIZE: u64 = 16 * 1024 * 1024;

/// What to do.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// Maximum time to wait for readers to release their shared locks.
    pub timeout: Duration,
    /// Overwrite a file whose current content is not a certificate table
    /// (normally refused, in case the path names the wrong file). An empty
    /// file is always accepted.
    pub overwrite_non_table: bool,
}

impl Default for UpdateOptions {
    fn default() -> UpdateOptions {
        UpdateOptions {
            timeout: Duration::from_secs(10),
            overwrite_non_table: false,
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    /// The file.
    pub path: PathBuf,
    /// Size before.
    pub old_len: u64,
    /// Size after.
    pub new_len: u64,
    /// The file already held exactly the new content; nothing was written.
    pub unchanged: bool,
    /// Whether the old content was a valid table.
    pub old_was_table: bool,
    /// Time spent waiting for the exclusive lock.
    pub lock_wait_us: u128,
    /// Time the lock was held.
    pub held_us: u128,
    /// How often the file was found replaced and reopened before locking.
    pub reopened: u32,
}

/// The exclusive lock on a certs file, held until dropped or released.
///
/// This is what `snp-certs lock` holds while it runs a firmware or key
/// update command, and what [`rewrite_in_place`] holds while it rewrites.
/// The descriptor is opened close-on-exec, so child processes do not
/// inherit it (a lingering grandchild cannot keep the lock).
#[derive(Debug)]
pub struct ExclusiveLock {
    path: PathBuf,
    file: File,
    lock_wait: Duration,
    acquired: Instant,
    reopened: u32,
}

/// Opens `path` read-write without blocking and checks it is a regular file.
fn open_rw(path: &Path) -> Result<File, UpdateError> {
    file::open_certs(path, true).map_err(|e| match e {
        CertsFileError::Missing { path } => UpdateError::Missing { path },
        CertsFileError::Open { path, source } => UpdateError::Open { path, source },
        CertsFileError::NotRegular { path, file_type } => {
            UpdateError::NotRegular { path, file_type }
        }
        CertsFileError::Read { path, source } => UpdateError::Read { path, source },
        // Opening reports none of these; listed so a new variant is seen.
        other @ (CertsFileError::Lock { .. }
        | CertsFileError::KeepsChanging { .. }
        | CertsFileError::TooLarge { .. }
        | CertsFileError::Invalid { .. }) => UpdateError::Read {
            path: path.to_owned(),
            source: io::Error::other(other.to_string()),
        },
    })
}

/// Whether `path` still names the file open as `file`.
fn still_names(path: &Path, file: &File) -> io::Result<bool> {
    file::still_names(path, file).map(|size| size.is_some())
}

/// Truncates `file` and writes `bytes` from offset 0, then syncs.
fn write_whole(file: &File, bytes: &[u8]) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()
}

impl ExclusiveLock {
    /// Opens `path` read-write and takes the exclusive lock, waiting at
    /// most `timeout` for readers; reopens if the path was replaced
    /// meanwhile (steps 1 to 3 of the protocol).
    pub fn acquire(path: &Path, timeout: Duration) -> Result<ExclusiveLock, UpdateError> {
        let deadline = Instant::now() + timeout;
        let mut lock_wait = Duration::ZERO;
        let mut reopened = 0;
        loop {
            let file = open_rw(path)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let waited = lock::lock(&file, LockKind::Exclusive, remaining).map_err(|source| {
                UpdateError::Lock {
                    path: path.to_owned(),
                    source: match source {
                        LockError::Timeout { waited } => LockError::Timeout {
                            waited: lock_wait + waited,
                        },
                        other => other,
                    },
                }
            })?;
            lock_wait += waited;
            let lock = ExclusiveLock {
                path: path.to_owned(),
                file,
                lock_wait,
                acquired: Instant::now(),
                reopened,
            };
            match still_names(path, &lock.file) {
                Ok(true) => return Ok(lock),
                Ok(false) => {
                    drop(lock);
                    reopened += 1;
                    if reopened > MAX_REOPENS {
                        return Err(UpdateError::KeepsChanging {
                            path: path.to_owned(),
                            times: reopened,
                        });
                    }
                }
                Err(source) => {
                    return Err(UpdateError::Read {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// The path the lock was taken through.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file, open read-write.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Time spent waiting for the lock.
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }

    /// How long the lock has been held.
    pub fn held_for(&self) -> Duration {
        self.acquired.elapsed()
    }

    /// How often the file was found replaced before the lock held.
    pub fn reopened(&self) -> u32 {
        self.reopened
    }

    /// Reads the whole file (at most [`MAX_OLD_SIZE`] bytes).
    pub fn read(&self) -> Result<Vec<u8>, UpdateError> {
        let read_error = |source| UpdateError::Read {
            path: self.path.clone(),
            source,
        };
        let size = self.file.metadata().map_err(read_error)?.len();
        if size > MAX_OLD_SIZE {
            return Err(UpdateError::OldTooLarge {
                path: self.path.clone(),
                size,
            });
        }
        let mut bytes = vec![0; size as usize];
        self.file.read_exact_at(&mut bytes, 0).map_err(read_error)?;
        Ok(bytes)
    }

    /// Replaces the file's content with `new` in place (steps 4 to 6 of the
    /// protocol). `new` is not validated here; [`rewrite_in_place`] does.
    pub fn rewrite(
        &self,
        new: &[u8],
        options: &UpdateOptions,
    ) -> Result<UpdateReport, UpdateError> {
        match still_names(&self.path, &self.file) {
            Ok(true) => {}
            Ok(false) => {
                return Err(UpdateError::Replaced {
                    path: self.path.clone(),
                });
            }
            Err(source) => {
                return Err(UpdateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        let old = self.read()?;
        let old_was_table = match CertTable::parse(&old) {
            Ok(_) => true,
            Err(_) if old.is_empty() || options.overwrite_non_table => false,
            Err(source) => {
                return Err(UpdateError::NotATable {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let unchanged = old == new;
        if !unchanged {
            let _deferred = signals::Deferred::block();
            if let Err(source) = write_whole(&self.file, new) {
                return Err(match write_whole(&self.file, &old) {
                    Ok(()) => UpdateError::Write {
                        path: self.path.clone(),
                        source,
                    },
                    Err(restore) => UpdateError::RestoreFailed {
                        path: self.path.clone(),
                        source,
                        restore,
                    },
                });
            }
        }
        Ok(UpdateReport {
            path: self.path.clone(),
            old_len: old.len() as u64,
            new_len: new.len() as u64,
            unchanged,
            old_was_table,
            lock_wait_us: self.lock_wait.as_micros(),
            held_us: self.held_for().as_micros(),
            reopened: self.reopened,
        })
    }

    /// Releases the lock; returns how long it was held.
    pub fn release(self) -> Duration {
        self.held_for()
    }
}

impl Drop for ExclusiveLock {
    fn drop(&mut self) {
        if let Err(e) = lock::unlock(&self.file) {
            // Closing the descriptor, right after this, releases it anyway.
            log::warn!("Unlocking {} failed: {e}", self.path.display());
        }
    }
}

/// Validates `new` as a certificate table, then replaces the content of
/// the certs file at `path` with it in place under the exclusive lock,
/// waiting at most `timeout` for readers. See the module docs.
pub fn rewrite_in_place(
    path: &Path,
    new: &[u8],
    timeout: Duration,
) -> Result<UpdateReport, UpdateError> {
    rewrite_in_place_with(
        path,
        new,
        &UpdateOptions {
            timeout,
            ..UpdateOptions::default()
        },
    )
}

/// [`rewrite_in_place`] with all options.
pub fn rewrite_in_place_with(
    path: &Path,
    new: &[u8],
    options: &UpdateOptions,
) -> Result<UpdateReport, UpdateError> {
    CertTable::parse(new).map_err(UpdateError::InvalidNew)?;
    let lock = ExclusiveLock::acquire(path, options.timeout)?;
    let report = lock.rewrite(new, options)?;
    let held = lock.release();
    Ok(UpdateReport {
        held_us: held.as_micros(),
        ..report
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
