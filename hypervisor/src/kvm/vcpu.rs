//! The KVM vCPU: running, decoding exits, completing them, kicking.

use std::fmt;
use std::mem::offset_of;
use std::ptr;
use std::sync::Arc;

use kvm_bindings::{kvm_run, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::VmShared;
use super::snp::{KVM_EXIT_SNP_REQ_CERTS, snp_req_certs_ptr};
use super::snp_exits;
use crate::kick::{KickTarget, RunSection};
use crate::{HypervisorError, SnpCertsCompletion, SnpCertsRequest, Vcpu, VcpuKicker, VmExit};

/// The exit that is waiting for an answer from the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    IoIn { port: u16, size: u8 },
    SnpReqCerts,
    Hypercall,
}

/// A KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
    run_size: usize,
    immediate_exit: bool,
    pending: Pending,
    kick: KickTarget,
    // Last: keeps the VM fd and guest memory alive until `fd` is closed.
    _vm: Arc<VmShared>,
}

impl fmt::Debug for KvmVcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmVcpu")
            .field("immediate_exit", &self.immediate_exit)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl KvmVcpu {
    pub(super) fn new(
        fd: VcpuFd,
        run_size: usize,
        vm: Arc<VmShared>,
    ) -> Result<Self, HypervisorError> {
        Ok(Self {
            fd,
            run_size,
            immediate_exit: false,
            pending: Pending::None,
            kick: KickTarget::new()?,
            _vm: vm,
        })
    }

    /// The raw vCPU fd, for operations this crate does not wrap (reading
    /// registers in tests, for instance).
    pub fn vcpu_fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Loads `sregs` and points the vCPU at `entry`, with only the
    /// always-set bit of RFLAGS set (interrupts off).
    fn start_at(&mut self, sregs: &kvm_sregs, entry: u64) -> Result<(), HypervisorError> {
        self.fd
            .set_sregs(sregs)
            .map_err(HypervisorError::Registers)?;
        let mut regs = self.fd.get_regs().map_err(HypervisorError::Registers)?;
        regs.rip = entry;
        regs.rflags = 2;
        self.fd.set_regs(&regs).map_err(HypervisorError::Registers)
    }

    fn decode_snp_req_certs(&mut self) -> VmExit {
        let p = snp_req_certs_ptr(self.fd.get_kvm_run());
        // SAFETY: `p` lies inside the live kvm_run mapping owned by `self.fd`
        // (offsets asserted in `snp`), and the exit reason says the union
        // holds `struct kvm_exit_snp_req_certs`.
        let exit = unsafe { ptr::read_volatile(p) };
        self.pending = Pending::SnpReqCerts;
        VmExit::SnpReqCerts(SnpCertsRequest {
            gpa: exit.gpa,
            npages: exit.npages,
        })
    }
}

impl Vcpu for KvmVcpu {
    fn setup_real_mode(&mut self, entry: u64) -> Result<(), HypervisorError> {
        let mut sregs = self.fd.get_sregs().map_err(HypervisorError::Registers)?;
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        self.start_at(&sregs, entry)
    }

    fn setup_long_mode(&mut self, entry: u64, page_table: u64) -> Result<(), HypervisorError> {
        const CR0_PE: u64 = 1;
        const CR0_ET: u64 = 1 << 4;
        const CR0_PG: u64 = 1 << 31;
        const CR4_PAE: u64 = 1 << 5;
        const EFER_LME: u64 = 1 << 8;
        const EFER_LMA: u64 = 1 << 10;
        let mut sregs = self.fd.get_sregs().map_err(HypervisorError::Registers)?;
        let code = kvm_bindings::kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8,
            type_: 0xb, // execute/read, accessed
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_bindings::kvm_segment {
            selector: 0x10,
            type_: 0x3, // read/write, accessed
            db: 1,
            l: 0,
            ..code
        };
        sregs.cs = code;
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            *seg = data;
        }
        sregs.cr3 = page_table;
        sregs.cr4 |= CR4_PAE;
        sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
        self.start_at(&sregs, entry)
    }

    fn run(&mut self) -> Result<VmExit, HypervisorError> {
        self.kick.bind_current_thread();
        self.pending = Pending::None;
        let immediate_exit: *mut u8 = ptr::from_mut(self.fd.get_kvm_run())
            .cast::<u8>()
            .wrapping_add(offset_of!(kvm_run, immediate_exit));
        // SAFETY: `immediate_exit` points into the kvm_run mapping owned by
        // `self.fd`, which outlives this function; the section is dropped
        // below, on this thread.
        let section = unsafe { RunSection::enter(immediate_exit) };
        // Write our own flag first, then look at the pending-kick flag. A
        // kick sets that flag before it signals, so either we see it here,
        // or its handler runs after our write and sets the byte itself: a
        // kick is never overwritten by this store.
        // SAFETY: valid for writes (above). Volatile: the signal handler and
        // the kernel access the byte behind the compiler's back.
        unsafe { immediate_exit.write_volatile(u8::from(self.immediate_exit)) };
        if self.kick.immediate_exit_for_run(false) {
            // SAFETY: as above.
            unsafe { immediate_exit.write_volatile(1) };
        }

        let result = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => Ok(Some(VmExit::IoOut {
                port,
                data: crate::PioData::from_slice(data),
            })),
            Ok(VcpuExit::IoIn(port, data)) => Ok(Some(match u8::try_from(data.len()) {
                Ok(size) => {
                    self.pending = Pending::IoIn { port, size };
                    VmExit::IoIn { port, size }
                }
                Err(_) => VmExit::Other(format!(
                    "string IN of {} bytes on port {port:#x}",
                    data.len()
                )),
            })),
            Ok(VcpuExit::Hlt) => Ok(Some(VmExit::Hlt)),
            Ok(VcpuExit::Hypercall(call)) => {
                Ok(Some(match snp_exits::map_gpa_range(call.nr, &call.args) {
                    Some(exit) => {
                        self.pending = Pending::Hypercall;
                        exit
                    }
                    None => VmExit::Other(format!("Hypercall({call:?})")),
                }))
            }
            Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                Ok(Some(snp_exits::memory_fault(flags, gpa, size)))
            }
            Ok(VcpuExit::SystemEvent(kind, data)) => Ok(Some(
                snp_exits::sev_termination(kind, data)
                    .unwrap_or_else(|| VmExit::Other(format!("SystemEvent({kind}, {data:?})"))),
            )),
            Ok(VcpuExit::Shutdown) => Ok(Some(VmExit::Shutdown)),
            // Decoded below, once the borrow of the exit data has ended.
            Ok(VcpuExit::Unsupported(KVM_EXIT_SNP_REQ_CERTS)) => Ok(None),
            Ok(other) => Ok(Some(VmExit::Other(format!("{other:?}")))),
            Err(e) if e.errno() == libc::EINTR => Ok(Some(VmExit::Interrupted)),
            Err(e) => Err(HypervisorError::Run(e)),
        };
        drop(section);
        // A kick only forces one run; the VMM's own flag persists.
        // SAFETY: as above.
        unsafe { immediate_exit.write_volatile(u8::from(self.immediate_exit)) };

        match result? {
            None => Ok(self.decode_snp_req_certs()),
            Some(VmExit::Interrupted) => {
                self.kick.interrupted(self.immediate_exit);
                Ok(VmExit::Interrupted)
            }
            Some(exit) => Ok(exit),
        }
    }

    fn complete_io_in(&mut self, data: &[u8]) -> Result<(), HypervisorError> {
        let Pending::IoIn { port, size } = self.pending else {
            return Err(HypervisorError::NoPendingExit("I/O IN"));
        };
        if data.len() != usize::from(size) {
            return Err(HypervisorError::IoInLength {
                port,
                expected: usize::from(size),
                got: data.len(),
            });
        }
        let run = self.fd.get_kvm_run();
        // SAFETY: the last run ended with KVM_EXIT_IO (direction IN) and no
        // run happened since, so `io` is the active union member.
        let offset = unsafe { run.__bindgen_anon_1.io }.data_offset;
        let in_bounds = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
            .is_some_and(|end| end <= self.run_size);
        if !in_bounds {
            return Err(HypervisorError::BadIoBuffer);
        }
        let dst = ptr::from_mut(run)
            .cast::<u8>()
            .wrapping_add(offset as usize);
        // SAFETY: [offset, offset + len) lies inside the kvm_run mapping of
        // `run_size` bytes (checked above), owned by `self.fd`; nothing else
        // references those bytes while we hold `&mut self`.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        self.pending = Pending::None;
        Ok(())
    }

    fn complete_snp_req_certs(&mut self, c: SnpCertsCompletion) -> Result<(), HypervisorError> {
        if self.pending != Pending::SnpReqCerts {
            return Err(HypervisorError::NoPendingExit("SNP certificate request"));
        }
        c.validate()?;
        let p = snp_req_certs_ptr(self.fd.get_kvm_run());
        // SAFETY: `p` lies inside the live kvm_run mapping owned by
        // `self.fd`; the last exit was KVM_EXIT_SNP_REQ_CERTS, so the union
        // holds this structure. Raw-pointer field writes create no reference.
        unsafe {
            ptr::addr_of_mut!((*p).npages).write_volatile(c.npages);
            ptr::addr_of_mut!((*p).ret).write_volatile(c.ret);
        }
        self.pending = Pending::None;
        Ok(())
    }

    fn complete_hypercall(&mut self, ret: u64) -> Result<(), HypervisorError> {
        if self.pending != Pending::Hypercall {
            return Err(HypervisorError::NoPendingExit("hypercall"));
        }
        // The last run ended with KVM_EXIT_HYPERCALL and no run happened
        // since, so `hypercall` is the active member of the exit union.
        self.fd.get_kvm_run().__bindgen_anon_1.hypercall.ret = ret;
        self.pending = Pending::None;
        Ok(())
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.immediate_exit = on;
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    fn kicker(&self) -> VcpuKicker {
        self.kick.kicker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmType;
    use crate::kvm::KvmHypervisor;

    /// What `setup_long_mode` gives KVM, read back: on a PVM host the
    /// guest's 64-bit code runs even with some of these wrong
    /// (`tests/kvm_long_mode.rs`), but an SNP guest's save area is built
    /// from exactly these registers. Needs `/dev/kvm` (named `kvm_*`).
    #[test]
    fn kvm_long_mode_registers_read_back_as_set() {
        let hv = KvmHypervisor::new().unwrap_or_else(|e| {
            panic!("this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e})")
        });
        let vm = hv.create_kvm_vm(VmType::Default).unwrap();
        let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
        vcpu.setup_long_mode(0x1000, 0x2000).unwrap();
        let sregs = vcpu.fd.get_sregs().unwrap();
        let segment = |s: &kvm_bindings::kvm_segment| {
            (
                s.base, s.limit, s.selector, s.type_, s.present, s.dpl, s.db, s.s, s.l, s.g,
            )
        };
        assert_eq!(
            segment(&sregs.cs),
            (0, 0xffff_ffff, 0x8, 0xb, 1, 0, 0, 1, 1, 1)
        );
        for data in [sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs] {
            assert_eq!(
                segment(&data),
                (0, 0xffff_ffff, 0x10, 0x3, 1, 0, 1, 1, 0, 1)
            );
        }
        assert_eq!(sregs.cr3, 0x2000);
        assert_eq!(sregs.cr4 & (1 << 5), 1 << 5, "CR4.PAE");
        assert_eq!(sregs.cr0 & 0x8000_0011, 0x8000_0011, "CR0.PG, ET, PE");
        assert_eq!(sregs.efer & 0x500, 0x500, "EFER.LMA, LME");
        assert_eq!(vcpu.fd.get_regs().unwrap().rip, 0x1000);
    }

    /// A page-state change is answered only while one is pending, and
    /// the answer goes to `kvm_run`'s hypercall return value. Needs
    /// `/dev/kvm` (named `kvm_*`).
    #[test]
    fn kvm_a_hypercall_is_completed_only_while_one_is_pending() {
        let hv = KvmHypervisor::new().unwrap_or_else(|e| {
            panic!("this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e})")
        });
        let vm = hv.create_kvm_vm(VmType::Default).unwrap();
        let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
        assert!(matches!(
            vcpu.complete_hypercall(0),
            Err(HypervisorError::NoPendingExit("hypercall"))
        ));
        // As `run` leaves it after a KVM_HC_MAP_GPA_RANGE exit.
        vcpu.pending = Pending::Hypercall;
        vcpu.complete_hypercall(7).unwrap();
        // SAFETY: reading a plain integer of the exit union, which KVM
        // does not touch while the vCPU is not running.
        let ret = unsafe { vcpu.fd.get_kvm_run().__bindgen_anon_1.hypercall.ret };
        assert_eq!(ret, 7);
        assert_eq!(vcpu.pending, Pending::None);
        assert!(vcpu.complete_hypercall(0).is_err(), "answered twice");
    }
}
