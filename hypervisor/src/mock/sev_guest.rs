//! The guest side of an SEV-SNP vCPU on the mock backend: a program that
//! runs until it leaves the guest (VMGEXIT), or executes PVALIDATE, whose
//! answer the (modelled) CPU gives.
//!
//! Two programs implement [`SevGuest`]: the SNP test guest's Rust twin,
//! and, in the test guests' tests only, its real machine code in an x86-64
//! emulator. Both speak the GHCB protocol through guest memory and the GHCB
//! MSR ([`SevCpu::ghcb_msr`]); the kernel model
//! ([`super::kernel_model::vmgexit`]) answers them as KVM does.

use vm_memory::GuestMemoryMmap;

/// The answer of PVALIDATE (AMD APM vol. 3, "PVALIDATE"): `EAX` and
/// whether `RFLAGS.CF` is set (the page's validation did not change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvalidateAnswer {
    /// 0 on success; `FAIL_INPUT` (1), `FAIL_SIZEMISMATCH` (6).
    pub eax: u32,
    /// CF: nothing was updated.
    pub no_update: bool,
}

/// The vCPU state a guest shares with the host model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevCpu {
    /// The GHCB MSR (`MSR_AMD64_SEV_ES_GHCB`, 0xC001_0130): what the
    /// guest's `rdmsr` reads and `wrmsr` writes.
    pub ghcb_msr: u64,
    /// The answer to the guest's last PVALIDATE, for it to pick up when it
    /// runs on.
    pub pvalidate: Option<PvalidateAnswer>,
}

/// Why a guest stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestStop {
    /// VMGEXIT: the GHCB MSR holds an MSR-protocol request or the GHCB's
    /// address.
    Vmgexit,
    /// PVALIDATE of the page at virtual address `vaddr` (`huge`: 2 MiB),
    /// `validate` (or rescind); the answer goes into
    /// [`SevCpu::pvalidate`].
    Pvalidate {
        /// The virtual address (RAX).
        vaddr: u64,
        /// 2 MiB page (ECX 1) rather than 4 KiB.
        huge: bool,
        /// Validate (EDX 1) or rescind (EDX 0).
        validate: bool,
    },
    /// Something an SNP guest without a #VC handler cannot survive (an
    /// instruction that raises #VC, a fault): the vCPU is dead.
    Fault(String),
}

/// A program for an SEV-SNP vCPU of the mock backend.
pub trait SevGuest: Send {
    /// Runs guest code until the next VMGEXIT, PVALIDATE or fault.
    fn run(&mut self, cpu: &mut SevCpu, memory: &GuestMemoryMmap) -> GuestStop;
}
