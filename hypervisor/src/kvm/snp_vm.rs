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
        c_bit_from(__cpuid(0x8000_0000).eax, || {
            let leaf = __cpuid(0x8000_001f);
            (leaf.eax, leaf.ebx)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// [`host_c_bit`] from the highest extended CPUID leaf and a way to read
/// leaf `0x8000_001F` (`EAX`, `EBX`), called only if it exists.
fn c_bit_from(max_extended: u32, leaf_8000_001f: impl FnOnce() -> (u32, u32)) -> Option<u8> {
    if max_extended < 0x8000_001f {
        return None;
    }
    let (eax, ebx) = leaf_8000_001f();
    let snp = eax & (1 << 4) != 0;
    // The mask keeps six bits: the value fits a u8.
    snp.then_some((ebx & 0x3f) as u8)
}

/// The mapping among `memory` of one region holding `len` bytes at `gpa`.
fn mapping_holding(
    memory: &[Arc<GuestMemoryMmap>],
    gpa: u64,
    len: u64,
) -> Option<Arc<GuestMemoryMmap>> {
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

impl KvmVm {
    /// The SEV commands of this VM, with its `/dev/sev`.
    pub(super) fn snp_commands(&self) -> Result<SnpCommands<'_>, HypervisorError> {
        let sev = self.shared.sev.as_ref().ok_or(HypervisorError::NotSnpVm)?;
        Ok(SnpCommands::new(&self.shared.fd, sev.sev_fd()))
    }

    /// The mapping of guest memory holding `len` bytes at `gpa`.
    fn mapping_of(&self, gpa: u64, len: u64) -> Option<Arc<GuestMemoryMmap>> {
        let memory = self.shared.memory.lock().unwrap_or_else(|e| e.into_inner());
        mapping_holding(&memory, gpa, len)
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

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;

    #[test]
    fn the_c_bit_comes_from_an_snp_host_leaf_only() {
        let never = || -> (u32, u32) { panic!("leaf 0x8000_001f read where it does not exist") };
        assert_eq!(c_bit_from(0x8000_001e, never), None);
        // SNP (EAX bit 4) with the C-bit in EBX[5:0].
        assert_eq!(c_bit_from(0x8000_001f, || (0x1f, 0x1733)), Some(0x33));
        assert_eq!(c_bit_from(0x8000_0026, || (0x10, 0x2f)), Some(0x2f));
        // No SNP: no C-bit, whatever EBX says.
        assert_eq!(c_bit_from(0x8000_0026, || (0x0f, 0x33)), None);
    }

    #[test]
    fn the_c_bit_is_found_exactly_on_hosts_whose_kernel_lists_sev_snp() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let snp = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|flag| flag == "sev_snp"));
        assert_eq!(host_c_bit().is_some(), snp, "{:?}", host_c_bit());
    }

    #[test]
    fn a_range_is_found_in_the_one_mapping_that_holds_it_all() {
        let low =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap());
        let high = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10000), 0x2000)]).unwrap(),
        );
        let memory = [Arc::clone(&low), Arc::clone(&high)];
        let found = |gpa, len| mapping_holding(&memory, gpa, len).map(|m| Arc::ptr_eq(&m, &high));
        assert_eq!(found(0, 0x4000), Some(false));
        assert_eq!(
            found(0x10000, 0x2000),
            Some(true),
            "to the end of the region"
        );
        assert_eq!(found(0x11000, 0x1001), None, "past its end");
        assert_eq!(found(0x3000, 0x2000), None, "across two mappings");
        assert_eq!(found(0x8000, 1), None, "between them");
        assert_eq!(found(u64::MAX, 2), None, "overflowing");
    }
}
