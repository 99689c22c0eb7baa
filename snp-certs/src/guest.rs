//! Guest memory as [`crate::serve`] writes into it.
//!
//! Most VMMs reach guest RAM through their own mapping of it, a
//! [`vm_memory::GuestMemory`], and every such memory is a [`GuestWrite`].
//! Some cannot: on Microsoft's hypervisor (MSHV) the pages an SEV-SNP guest
//! shares with the host are written through the hypervisor (Cloud
//! Hypervisor's `gpa_write`), not through the VMM's mapping. Such a VMM
//! implements [`GuestWrite`] for its own writer and hands that to
//! [`crate::serve`], which then applies exactly the same answer policy.

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Where [`crate::serve`] writes a certificate table.
pub trait GuestWrite {
    /// Writes all of `bytes` at guest-physical address `gpa`. An error
    /// (saying why, for logs and events) means the range is not all guest
    /// memory the host may write: the guest is then answered `EIO`, and
    /// whatever was written before the error is not relied upon.
    fn write_all_at(&self, gpa: u64, bytes: &[u8]) -> Result<(), String>;
}

impl<M: GuestMemory + ?Sized> GuestWrite for M {
    /// Writes only if the whole range is writable guest RAM, so a refused
    /// write leaves guest memory untouched.
    fn write_all_at(&self, gpa: u64, bytes: &[u8]) -> Result<(), String> {
        let addr = GuestAddress(gpa);
        if self.check_range(addr, bytes.len(), Permissions::Write)
            && self.write_slice(bytes, addr).is_ok()
        {
            return Ok(());
        }
        Err(format!(
            "buffer {gpa:#x}+{:#x} is not inside guest RAM",
            bytes.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::serve::{CertsRequest, OutcomeKind, Reason, serve};
    use crate::{BusyBudget, CertsConfig, CertsReader};

    /// A writer that records what it was asked to write, as a VMM writing
    /// through its hypervisor would see it, and refuses one address.
    struct Recorder {
        writes: RefCell<Vec<(u64, Vec<u8>)>>,
        refuse: u64,
    }

    impl GuestWrite for Recorder {
        fn write_all_at(&self, gpa: u64, bytes: &[u8]) -> Result<(), String> {
            if gpa == self.refuse {
                return Err(format!("{gpa:#x} is not shared with the host"));
            }
            self.writes.borrow_mut().push((gpa, bytes.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn guest_memory_writes_inside_ram_and_refuses_outside() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000)]).expect("test memory");
        assert_eq!(mem.write_all_at(0x1000, &[7; 16]), Ok(()));
        let mut back = [0u8; 16];
        mem.read_slice(&mut back, GuestAddress(0x1000))
            .expect("read back");
        assert_eq!(back, [7; 16]);
        let refused = mem.write_all_at(0x1ff8, &[9; 16]);
        assert!(refused.is_err_and(|e| e.contains("0x1ff8")));
        mem.read_slice(&mut back[..8], GuestAddress(0x1ff8))
            .expect("read back");
        assert_eq!(back[..8], [0; 8], "a refused write leaves memory untouched");
    }

    #[test]
    fn serve_writes_through_a_writer_of_its_own_and_fails_on_its_refusal() {
        let writer = Recorder {
            writes: RefCell::new(Vec::new()),
            refuse: 0x5000,
        };
        let config = CertsConfig::default();
        let mut reader = CertsReader::new();
        let budget = BusyBudget::new();
        let served = serve(
            &mut reader,
            &config,
            &budget,
            CertsRequest {
                gpa: 0x3000,
                npages: 1,
            },
            &writer,
        );
        assert_eq!(served.kind, OutcomeKind::Delivered);
        assert_eq!(served.reason, Reason::NoCertsFile);
        assert_eq!(*writer.writes.borrow(), vec![(0x3000, vec![0u8; 24])]);

        let refused = serve(
            &mut reader,
            &config,
            &budget,
            CertsRequest {
                gpa: 0x5000,
                npages: 1,
            },
            &writer,
        );
        assert_eq!(refused.kind, OutcomeKind::Failed);
        assert_eq!(refused.reason, Reason::OutsideGuestRam);
        assert_eq!(
            refused.detail.as_deref(),
            Some("0x5000 is not shared with the host")
        );
    }
}
