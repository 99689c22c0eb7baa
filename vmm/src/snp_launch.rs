//! Launching a payload in an SEV-SNP VM, in the order the kernel
//! documents (see [`hypervisor::snp_launch`]): after the vCPUs exist,
//! `LAUNCH_START` with the guest policy, `LAUNCH_UPDATE` for each range the
//! payload declares (the CPUID page filled here from the host's supported
//! CPUID first), then `LAUNCH_FINISH`.
//!
//! # The CPUID page
//!
//! The layout the SNP firmware checks (AMD SEV-SNP ABI, "CPUID page"): a
//! 16-byte header (`count` as a `u32`, then 12 reserved bytes) and up to 64
//! entries of 48 bytes: `eax_in`, `ecx_in` (`u32`), `xcr0_in`, `xss_in`
//! (`u64`), `eax`, `ebx`, `ecx`, `edx` (`u32`), 8 reserved bytes. The
//! firmware refuses entries the host does not allow; the launch update
//! then fails with the firmware's error, which is reported.

use hypervisor::{CpuidLeaf, GuestMemoryMmap, SnpLaunch, SnpPageType};
use vm_memory::{Bytes, GuestAddress};

use crate::payload::{LaunchRange, PayloadError};
use crate::vm::VmError;

/// Most entries a CPUID page holds.
pub const CPUID_PAGE_ENTRIES: usize = 64;

/// The CPUID page for `leaves` (the first 64), 4 KiB.
pub fn cpuid_page(leaves: &[CpuidLeaf]) -> Vec<u8> {
    let leaves = &leaves[..leaves.len().min(CPUID_PAGE_ENTRIES)];
    let mut page = Vec::with_capacity(4096);
    // At most 64 entries: the count fits.
    page.extend_from_slice(&(leaves.len() as u32).to_le_bytes());
    page.extend_from_slice(&[0; 12]);
    for leaf in leaves {
        page.extend_from_slice(&leaf.function.to_le_bytes());
        page.extend_from_slice(&leaf.index.to_le_bytes());
        // xcr0_in and xss_in: the inputs for the XSAVE leaves, 0 here.
        page.extend_from_slice(&[0; 16]);
        for value in [leaf.eax, leaf.ebx, leaf.ecx, leaf.edx] {
            page.extend_from_slice(&value.to_le_bytes());
        }
        page.extend_from_slice(&[0; 8]);
    }
    page.resize(4096, 0);
    page
}

/// Runs the launch of `ranges` with `policy` and `host_data`.
pub fn launch(
    snp: &dyn SnpLaunch,
    memory: &GuestMemoryMmap,
    ranges: &[LaunchRange],
    policy: u64,
    host_data: [u8; 32],
) -> Result<(), VmError> {
    snp.launch_start(policy)?;
    for range in ranges {
        if range.page_type == SnpPageType::Cpuid {
            let page = cpuid_page(&snp.supported_cpuid()?);
            memory
                .write_slice(&page, GuestAddress(range.gpa))
                .map_err(|e| VmError::Payload(PayloadError::Load(Box::new(e))))?;
        }
        snp.launch_update(range.gpa, range.len, range.page_type)?;
    }
    snp.launch_finish(host_data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_page_layout() {
        let leaf = CpuidLeaf {
            function: 0x8000_001f,
            index: 0,
            eax: 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
        };
        let page = cpuid_page(&[leaf, leaf]);
        assert_eq!(page.len(), 4096);
        assert_eq!(&page[..4], &2u32.to_le_bytes());
        let entry = &page[16..64];
        assert_eq!(&entry[..4], &0x8000_001fu32.to_le_bytes());
        assert_eq!(
            &entry[24..40],
            &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]
        );
        assert!(page[112..].iter().all(|&b| b == 0));
        let many = vec![leaf; 100];
        assert_eq!(&cpuid_page(&many)[..4], &64u32.to_le_bytes());
    }
}
