//! The KVM implementation of the SNP interface ([`crate::SnpLaunch`]):
//! the launch commands go through [`SnpCommands`] with the VM's
//! `/dev/sev`, conversions through `KVM_SET_MEMORY_ATTRIBUTES`; and the
//! host's C-bit position.

use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::KvmVm;
use super::private_memory::set_attributes;
use crate::sev_commands::SnpCommands;
use crate::{HypervisorError, SnpLaunch, SnpPageType};

/// The C-bit position the host reports: CPUID `0x8000_001F` EBX\[5:0\],
/// when the leaf exists and says SEV-SNP is supported (EAX bit 4).
pub(super) fn host_c_bit() -> Option<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let max_extended = __cpuid(0x8000_0000).eax;
        if max_extended < 0x8000_001f {
            return None;
        }
        let leaf = __cpuid(0x8000_001f);
        let snp = leaf.eax & (1 << 4) != 0;
        // The mask keeps six bits: the value fits a u8.
        snp.then_some((leaf.ebx & 0x3f) as u8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

impl KvmVm {
    /// The SEV commands of this VM, with its `/dev/sev`.
    pub(super) fn snp_commands(&self) -> Result<SnpCommands<'_>, HypervisorError> {
        let sev = self.shared.sev.as_ref().ok_or(HypervisorError::NotSnpVm)?;
        Ok(SnpCommands::new(&self.shared.fd, sev.sev_fd()))
    }

    /// The mapping of guest memory holding `len` bytes at `gpa`.
    fn mapping_of(&self, gpa: u64, len: u64) -> Option<Arc<GuestMemoryMmap>> {
        let memory = self.shared.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory
            .iter()
            .find(|m| {
                m.iter().any(|r| {
                    let start = r.start_addr().0;
                    gpa >= start
                        && gpa
                            .checked_add(len)
                            .is_some_and(|end| end <= start.saturating_add(r.len()))
                })
            })
            .cloned()
    }
}

impl SnpLaunch for KvmVm {
    fn launch_start(&self, policy: u64) -> Result<(), HypervisorError> {
        self.snp_commands()?.launch_start(policy)
    }

    fn launch_update(
        &self,
        gpa: u64,
        len: u64,
        page_type: SnpPageType,
    ) -> Result<(), HypervisorError> {
        let memory = self
            .mapping_of(gpa, len)
            .ok_or(HypervisorError::SnpLaunchOrder(
                "LAUNCH_UPDATE of a range outside guest memory",
            ))?;
        self.snp_commands()?
            .launch_update(&memory, gpa, len, page_type)
    }

    fn launch_finish(&self, host_data: [u8; 32]) -> Result<(), HypervisorError> {
        self.snp_commands()?.launch_finish(host_data)
    }

    fn set_private(&self, gpa: u64, len: u64, private: bool) -> Result<(), HypervisorError> {
        set_attributes(&self.shared.fd, gpa, len, private)
    }
}
