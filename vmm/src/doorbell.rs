//! The emulated guest-request doorbell: SNP certificate requests on hosts
//! without SNP.
//!
//! On an SNP host the guest's certificate request reaches the VMM as
//! `KVM_EXIT_SNP_REQ_CERTS`. On an ordinary KVM host there is no such exit,
//! so a test guest rings this doorbell instead, and the VMM answers it with
//! the same handler and the same lease / immediate-exit sequence. It is a
//! development and test feature, enabled only on request and never on SNP
//! VMs.
//!
//! # Protocol
//!
//! * [`DOORBELL_PORT`] takes a 32-bit `OUT` (`out dx, eax`): the guest writes the GPA of a [`Mailbox`] (8-byte
//!   aligned, below 4 GiB). The mailbox has the layout of
//!   `struct kvm_exit_snp_req_certs`: `gpa`, `npages`, `ret`, three
//!   little-endian `u64`s. The VMM reads `gpa` and `npages`, answers the
//!   request, and writes `ret` and `npages` back into the mailbox before the
//!   guest runs again: `ret` is 0, `ENOSPC` (28, with `npages` set to the
//!   pages needed), `EAGAIN` (11) or `EIO` (5), exactly as KVM would pass
//!   them to an SNP guest. A mailbox the VMM cannot read or write is
//!   ignored (logged); the guest then sees its own values unchanged.
//!
//! Every other port belongs to the VM's port-I/O bus ([`crate::pio`]),
//! where a payload attaches its own devices (the test guests' report and
//! delay ports, for instance).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Port the guest rings with the GPA of its [`Mailbox`].
pub const DOORBELL_PORT: u16 = 0x5e0;

/// Size of a [`Mailbox`] in guest memory.
pub const MAILBOX_SIZE: usize = 24;
/// Byte offset of `gpa` in the mailbox.
pub const MAILBOX_GPA: u64 = 0;
/// Byte offset of `npages` in the mailbox.
pub const MAILBOX_NPAGES: u64 = 8;
/// Byte offset of `ret` in the mailbox.
pub const MAILBOX_RET: u64 = 16;

/// The request mailbox as the guest lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// Guest-physical address of the certificate buffer.
    pub gpa: u64,
    /// Buffer size in 4 KiB pages; on `ENOSPC`, the pages needed.
    pub npages: u64,
    /// The answer.
    pub ret: u64,
}

/// Why a mailbox could not be accessed.
#[derive(Debug, thiserror::Error)]
pub enum DoorbellError {
    /// The structure is not inside guest RAM.
    #[error("{what} at {gpa:#x} is not inside guest RAM")]
    OutsideRam {
        /// What was accessed.
        what: &'static str,
        /// Its address.
        gpa: u64,
    },
}

fn read_u64<M: GuestMemory + ?Sized>(memory: &M, gpa: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    memory.read_slice(&mut b, GuestAddress(gpa)).ok()?;
    Some(u64::from_le_bytes(b))
}

impl Mailbox {
    /// Reads the mailbox the guest put at `gpa`.
    pub fn read<M: GuestMemory + ?Sized>(memory: &M, gpa: u64) -> Result<Mailbox, DoorbellError> {
        let outside = DoorbellError::OutsideRam {
            what: "mailbox",
            gpa,
        };
        let field = |offset: u64| gpa.checked_add(offset).and_then(|a| read_u64(memory, a));
        match (
            field(MAILBOX_GPA),
            field(MAILBOX_NPAGES),
            field(MAILBOX_RET),
        ) {
            (Some(gpa), Some(npages), Some(ret)) => Ok(Mailbox { gpa, npages, ret }),
            _ => Err(outside),
        }
    }

    /// Writes the answer (`ret`, `npages`) into the mailbox at `gpa`.
    pub fn write_answer<M: GuestMemory + ?Sized>(
        memory: &M,
        gpa: u64,
        ret: u64,
        npages: u64,
    ) -> Result<(), DoorbellError> {
        let outside = || DoorbellError::OutsideRam {
            what: "mailbox",
            gpa,
        };
        gpa.checked_add(MAILBOX_SIZE as u64).ok_or_else(outside)?;
        if !memory.check_range(
            GuestAddress(gpa),
            MAILBOX_SIZE,
            vm_memory::Permissions::Write,
        ) {
            return Err(outside());
        }
        for (offset, value) in [(MAILBOX_NPAGES, npages), (MAILBOX_RET, ret)] {
            memory
                .write_slice(&value.to_le_bytes(), GuestAddress(gpa + offset))
                .map_err(|_| outside())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    #[test]
    fn mailbox_round_trip_and_bounds() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        for (i, v) in [0x8000u64, 0, 99].iter().enumerate() {
            mem.write_slice(&v.to_le_bytes(), GuestAddress(0x3000 + 8 * i as u64))
                .unwrap();
        }
        assert_eq!(
            Mailbox::read(&mem, 0x3000).unwrap(),
            Mailbox {
                gpa: 0x8000,
                npages: 0,
                ret: 99
            }
        );
        Mailbox::write_answer(&mem, 0x3000, 28, 2).unwrap();
        let m = Mailbox::read(&mem, 0x3000).unwrap();
        assert_eq!((m.gpa, m.npages, m.ret), (0x8000, 2, 28));
        assert!(Mailbox::read(&mem, 0x10000 - 16).is_err());
        assert!(Mailbox::write_answer(&mem, 0x10000 - 16, 0, 0).is_err());
        assert!(Mailbox::read(&mem, u64::MAX - 4).is_err());
        assert!(Mailbox::write_answer(&mem, u64::MAX - 4, 0, 0).is_err());
    }
}
