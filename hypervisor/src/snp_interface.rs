//! The backend-neutral interface of an SEV-SNP VM: the small trait an SNP
//! VM offers on top of [`crate::Vm`] to launch its guest and convert its
//! pages. Every backend builds the commands with
//! [`crate::sev_commands::SnpCommands`].
//!
//! The order the kernel documents (`Documentation/virt/kvm/x86/
//! amd-memory-encryption.rst`) and every backend enforces:
//!
//! 1. `KVM_CREATE_VM` with the SNP type, `KVM_SEV_INIT2`
//!    ([`crate::Hypervisor::create_vm`] with [`crate::VmType::Snp`]);
//! 2. guest memory backed by guest_memfd, all of it private
//!    ([`crate::Vm::map_memory`] on an SNP VM);
//! 3. `KVM_SEV_SNP_ENABLE_REQ_CERTS`, before any vCPU
//!    ([`crate::Vm::enable_snp_req_certs`]);
//! 4. the vCPUs, with their initial registers;
//! 5. [`SnpLaunch::launch_start`] with the guest policy;
//! 6. [`SnpLaunch::launch_update`] for each range the guest starts with:
//!    code and data as normal (measured) pages, zero pages, the secrets
//!    page (and a CPUID page for guests that execute CPUID);
//! 7. [`SnpLaunch::launch_finish`]: the vCPUs' registers go into their
//!    encrypted save areas and the measurement is final; then the vCPUs
//!    run.
//!
//! At run time the guest converts pages between private and shared
//! ([`crate::VmExit::MapGpaRange`], [`crate::VmExit::MemoryFault`]); the
//! VMM answers with [`SnpLaunch::set_private`].

use crate::HypervisorError;

/// What a launch-update range holds (`KVM_SEV_SNP_PAGE_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnpPageType {
    /// Code or data, copied in and measured.
    Normal,
    /// Zero-filled by firmware, measured as such.
    Zero,
    /// Not measured (firmware copies the data in).
    Unmeasured,
    /// The secrets page, filled by firmware (VMPCKs).
    Secrets,
    /// The CPUID page, checked by firmware against the host.
    Cpuid,
}

/// The default guest policy: SMT allowed (bit 16), reserved bit 17 set
/// as the ABI requires, no debugging, no migration agent, ABI 0.0.
pub const DEFAULT_SNP_POLICY: u64 = (1 << 16) | (1 << 17);

/// The launch and conversion commands of an SNP VM.
pub trait SnpLaunch: Send + Sync {
    /// `KVM_SEV_SNP_LAUNCH_START` with the guest `policy`.
    fn launch_start(&self, policy: u64) -> Result<(), HypervisorError>;

    /// `KVM_SEV_SNP_LAUNCH_UPDATE`: encrypts and measures `len` bytes at
    /// `gpa` (page aligned) as `page_type`, taking the bytes from the
    /// VM's shared mapping of guest memory; issued again until the kernel
    /// has processed the whole range.
    fn launch_update(
        &self,
        gpa: u64,
        len: u64,
        page_type: SnpPageType,
    ) -> Result<(), HypervisorError>;

    /// `KVM_SEV_SNP_LAUNCH_FINISH` with the 32 bytes of `host_data` the
    /// guest's reports will carry.
    fn launch_finish(&self, host_data: [u8; 32]) -> Result<(), HypervisorError>;

    /// `KVM_SET_MEMORY_ATTRIBUTES`: makes `len` bytes at `gpa` private or
    /// shared.
    fn set_private(&self, gpa: u64, len: u64, private: bool) -> Result<(), HypervisorError>;
}
