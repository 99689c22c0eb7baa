//! Guest memory as [`crate::serve`] writes a table into it.
//!
//! Most VMMs reach guest RAM through their own mapping of it, a
//! [`vm_memory::GuestMemory`], and every such memory is a [`GuestWrite`]:
//! the range check is the mapping's, and a table that validated before is
//! read from the file straight into the guest's buffer (one copy, see
//! [`LockedFile::read_into`]). Some VMMs cannot map what they write: on
//! Microsoft's hypervisor (MSHV) the pages an SEV-SNP guest shares with the
//! host are written through the hypervisor (Cloud Hypervisor's
//! `gpa_write`). Such a VMM implements [`GuestWrite::write_all_at`] for its
//! own writer; [`crate::serve`] then applies exactly the same answer
//! policy, copying the table through the reader's buffer.

use std::fmt;

use vm_memory::bitmap::BS;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, Permissions, VolatileSlice};

use crate::file::{LockedFile, ReadError};

/// A write the guest's memory refused: the range is not all guest memory
/// the host may write. [`crate::serve`] answers the guest `EIO`
/// ([`crate::serve::GuestFault::OutsideRam`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotGuestRam;

impl fmt::Display for NotGuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Not guest memory the host may write")
    }
}

impl std::error::Error for NotGuestRam {}

/// Where [`crate::serve`] writes a certificate table.
pub trait GuestWrite {
    /// Whether all `len` bytes at `gpa` are guest memory the host may
    /// write, checked before anything is written. The default cannot tell
    /// beforehand and says yes: [`GuestWrite::write_all_at`] decides.
    fn writable(&self, gpa: u64, len: usize) -> bool {
        let _ = (gpa, len);
        true
    }

    /// Writes all of `bytes` at guest-physical address `gpa`. On error the
    /// guest is answered `EIO`, and whatever was written before the error
    /// is not relied upon.
    fn write_all_at(&self, gpa: u64, bytes: &[u8]) -> Result<(), NotGuestRam>;

    /// Reads the locked certs file straight into `len` bytes of guest
    /// memory at `gpa`, as [`LockedFile::read_into`] does, where this
    /// memory is one piece the host maps. `None`: not possible here, and
    /// [`crate::serve`] copies the table through the reader's buffer with
    /// [`GuestWrite::write_all_at`] instead. The default is `None`.
    fn read_file_into(
        &self,
        gpa: u64,
        len: usize,
        file: &mut LockedFile<'_>,
    ) -> Option<Result<bool, ReadError>> {
        let _ = (gpa, len, file);
        None
    }
}

impl<M: GuestMemory + ?Sized> GuestWrite for M {
    fn writable(&self, gpa: u64, len: usize) -> bool {
        self.check_range(GuestAddress(gpa), len, Permissions::Write)
    }

    /// Writes only if the whole range is writable guest RAM, so a refused
    /// write leaves guest memory untouched.
    fn write_all_at(&self, gpa: u64, bytes: &[u8]) -> Result<(), NotGuestRam> {
        let addr = GuestAddress(gpa);
        if self.check_range(addr, bytes.len(), Permissions::Write)
            && self.write_slice(bytes, addr).is_ok()
        {
            return Ok(());
        }
        Err(NotGuestRam)
    }

    fn read_file_into(
        &self,
        gpa: u64,
        len: usize,
        file: &mut LockedFile<'_>,
    ) -> Option<Result<bool, ReadError>> {
        let gpa = GuestAddress(gpa);
        // Guest RAM without an IOMMU in front: one lookup.
        match self.physical_memory() {
            Some(physical) => physical
                .get_slice(gpa, len)
                .ok()
                .map(|dest| file.read_into(&dest)),
            None => first_slice(self, gpa, len).map(|dest| file.read_into(&dest)),
        }
    }
}

/// The first piece of guest memory at `gpa`, if it is `len` bytes long.
fn first_slice<M: GuestMemory + ?Sized>(
    memory: &M,
    gpa: GuestAddress,
    len: usize,
) -> Option<VolatileSlice<'_, BS<'_, M::Bitmap>>> {
    let slice = memory
        .get_slices(gpa, len, Permissions::Write)
        .ok()?
        .next()?
        .ok()?;
    (slice.len() == len).then_some(slice)
}

#[cfg(test)]
#[path = "guest_tests.rs"]
mod tests;
