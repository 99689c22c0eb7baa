//! Step 4 of the module docs: reading a file that is locked and re-checked,
//! into the reader's buffer ([`LockedFile::read`]) or straight into the
//! guest's buffer ([`LockedFile::read_into`]).
//!
//! Reading straight into guest memory saves the copy out of the reader's
//! buffer: the file's bytes are copied once, by the kernel, as QEMU reads
//! them. Only a file that already proved valid goes there: the reader
//! remembers the version (`stat`'s size and change time, under the same
//! open file) whose table last validated in its own buffer, with that
//! table's header, and a file with any other version is first read and
//! validated there, so bytes that are not a valid table never reach a
//! guest. What landed is checked again: its header (entries and
//! terminator, copied out with volatile reads) must be the validated
//! header, byte for byte. A table's validity depends on its header and
//! size alone ([`ValidTable::check_layout`]), so that is the full check,
//! at the cost of a comparison; it catches a file rewritten without its
//! change time moving (a coarse clock). A guest that changes its own
//! buffer meanwhile can only fool itself: a header that differs is not
//! believed but read again from the file into the reader's own buffer
//! ([`LockedFile::read`]), and only that verdict counts. Tables whose
//! header is longer than [`HEADER_COPY`] (more than seven entries; real
//! ones have at most six) always go through the reader's buffer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;

use super::{CertsReader, Lease, LockedCerts, ReadError, Validated, Version};
use crate::table::{ENTRY_SIZE, MAX_TABLE_SIZE, ValidTable};

/// The longest header (seven entries and the terminator) of a table that
/// is read straight into guest memory.
pub const HEADER_COPY: usize = 8 * ENTRY_SIZE;

/// A certs file open, locked and re-checked (steps 1 to 3), not yet read.
/// Holds the lease: dropping it unlocks.
#[derive(Debug)]
pub struct LockedFile<'r> {
    pub(super) reader: &'r mut CertsReader,
    pub(super) lease: Lease,
    /// What `stat` gave under the lock.
    pub(super) version: Version,
    pub(super) lock_wait: Duration,
    pub(super) reopened: u32,
}

impl<'r> LockedFile<'r> {
    /// The file's size, as `stat` gave it under the lock (which a writer
    /// that honours the lock cannot change).
    pub fn size(&self) -> u64 {
        self.version.size
    }

    /// How long the request waited for the lock (see
    /// [`LockedCerts::lock_wait`]).
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }

    /// Reads the whole file into the reader's buffer and validates it.
    pub fn read(self) -> Result<LockedCerts<'r>, ReadError> {
        let LockedFile {
            reader,
            lease,
            version,
            lock_wait,
            reopened,
        } = self;
        let len = match read_all(&lease.file, version.size, &mut reader.buffer) {
            Ok(ReadAll::Read(len)) => len,
            Ok(ReadAll::TooLarge) => return Err(ReadError::TooLarge(MAX_TABLE_SIZE)),
            Err(source) => {
                reader.open = None;
                return Err(ReadError::Read(source));
            }
        };
        let bytes = reader.buffer.get(..len).unwrap_or_default();
        let valid = ValidTable::check(bytes);
        if let Some(open) = &mut reader.open {
            // Only a file read whole at the size `stat` gave counts as that
            // version.
            open.validated = match &valid {
                Ok(table) if len as u64 == version.size => validated(version, table),
                _ => None,
            };
        }
        let table = valid.map_err(ReadError::Invalid)?;
        Ok(LockedCerts {
            bytes,
            table,
            lease,
            lock_wait,
            reopened,
        })
    }

    /// Reads the file straight into `dest` (guest memory at least
    /// [`LockedFile::size`] bytes long) and validates the table there, if
    /// this version of the file validated in the reader's own buffer
    /// before (see the module docs). `Ok(true)`: `dest` starts with the
    /// whole file, a valid table. `Ok(false)`: nothing was read (a version
    /// not validated yet), or it was not confirmed (the file is not the
    /// size `stat` said, or the table in `dest` did not validate):
    /// [`LockedFile::read`] decides, and `dest` holds bytes the caller
    /// overwrites or the guest ignores.
    pub fn read_into<B: BitmapSlice>(
        &mut self,
        dest: &VolatileSlice<'_, B>,
    ) -> Result<bool, ReadError> {
        let Some(proven) = self
            .reader
            .open
            .as_ref()
            .and_then(|open| open.validated)
            .filter(|v| v.version == self.version)
        else {
            return Ok(false);
        };
        let Some(size) = usize::try_from(self.version.size)
            .ok()
            .filter(|s| *s <= MAX_TABLE_SIZE && *s <= dest.len())
        else {
            return Ok(false);
        };
        // One byte more than the size, where the buffer has room, shows
        // the end of the file in the same call.
        let asked = dest.len().min(size + 1);
        let read = match pread_volatile(&self.lease.file, dest, asked) {
            Ok(read) => read,
            Err(source) => {
                self.reader.open = None;
                return Err(ReadError::Read(source));
            }
        };
        let mut landed = [0u8; HEADER_COPY];
        let header = landed.get_mut(..proven.header_len);
        let confirmed = read == size
            && header.is_some_and(|header| {
                dest.subslice(0, header.len())
                    .map(|src| src.copy_to(&mut *header))
                    .is_ok()
                    && *header == proven.header[..header.len()]
            });
        if !confirmed {
            if let Some(open) = &mut self.reader.open {
                open.validated = None;
            }
        }
        Ok(confirmed)
    }

    /// The lease, once the bytes are delivered.
    pub fn into_lease(self) -> Lease {
        self.lease
    }
}

/// One `pread` of `len` bytes from offset 0 into `dest`; `EINTR` retried.
pub(super) fn pread_volatile<B: BitmapSlice>(
    file: &File,
    dest: &VolatileSlice<'_, B>,
    len: usize,
) -> io::Result<usize> {
    let len = len.min(dest.len());
    let guard = dest.ptr_guard_mut();
    loop {
        // SAFETY: `guard` points to `dest.len()` bytes of mapped guest
        // memory that stay mapped while the guard lives (vm-memory's
        // guarantee), and `len` is at most that; the kernel writes into
        // them like any device would, whatever the guest does meanwhile.
        let n = unsafe { libc::pread(file.as_raw_fd(), guard.as_ptr().cast(), len, 0) };
        if n >= 0 {
            let n = n.unsigned_abs();
            dest.bitmap().mark_dirty(0, n);
            return Ok(n);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// What the reader keeps of a version whose table validated: the header,
/// if it fits [`HEADER_COPY`].
fn validated(version: Version, table: &ValidTable<'_>) -> Option<Validated> {
    let header_len = table.header_len();
    let mut header = [0u8; HEADER_COPY];
    header
        .get_mut(..header_len)?
        .copy_from_slice(table.as_bytes().get(..header_len)?);
    Some(Validated {
        version,
        header,
        header_len,
    })
}

/// What [`read_all`] found.
pub(super) enum ReadAll {
    /// The whole file: this many bytes at the start of the buffer.
    Read(usize),
    /// More than [`MAX_TABLE_SIZE`] bytes.
    TooLarge,
}

/// Reads all of `file` from offset 0 into `buffer`, refusing more than
/// [`MAX_TABLE_SIZE`] bytes. `size` is the size `stat` gave under the lock;
/// see the module docs for why one `pread` usually suffices. The buffer is
/// only grown (and zeroed) when a file needs more than it ever had.
pub(super) fn read_all(file: &File, size: u64, buffer: &mut Vec<u8>) -> io::Result<ReadAll> {
    // One byte more than the limit tells "too large" from "exactly at it".
    let cap = MAX_TABLE_SIZE + 1;
    let Some(size) = usize::try_from(size).ok().filter(|s| *s <= MAX_TABLE_SIZE) else {
        return Ok(ReadAll::TooLarge);
    };
    let mut want = size + 1;
    let mut filled = 0;
    loop {
        if filled == want {
            if want >= cap {
                return Ok(ReadAll::TooLarge);
            }
            want = want.saturating_mul(2).min(cap);
        }
        if buffer.len() < want {
            buffer.resize(want, 0);
        }
        let Some(free) = buffer.get_mut(filled..want) else {
            return Ok(ReadAll::TooLarge);
        };
        let asked = free.len();
        match file.read_at(free, filled as u64) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if n < asked && filled == size {
                    // Stopped short at the size the lock holder cannot
                    // change: the end of the file.
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(ReadAll::Read(filled))
}
