//! What SNP firmware makes of a CPUID page at `SNP_LAUNCH_UPDATE`
//! (`sev_gmem_post_populate` in `arch/x86/kvm/svm/sev.c` copies the page
//! in, issues the command, and on `INVALID_PARAM` copies the page firmware
//! rewrote back into the VMM's buffer).
//!
//! The model's firmware refuses, with `INVALID_PARAM` and the corrected
//! page, a page with more than 64 entries, an entry that advertises a bit
//! the CPU lacks ([`crate::snp_cpuid::QEMU_MASKS`]), an `ecx_in` on a leaf
//! without subleaves, and a leaf 0xD subleaf 0 or 1 without `xcr0_in` 1.
//! Real firmware checks against the CPU it runs on; these are the checks
//! QEMU's page builder is written to pass.

use crate::snp_cpuid::{self, CPUID_PAGE_MAX_ENTRIES, CpuidEntry, CpuidReg};

/// Firmware error `INVALID_PARAM` (`SEV_RET_INVALID_PARAM`,
/// `include/uapi/linux/psp-sev.h`).
pub const SEV_RET_INVALID_PARAM: u32 = 0x16;

/// The page firmware would accept instead of `page`, or `None` if it
/// accepts `page` as it is.
pub fn check_page(page: &[u8]) -> Option<Vec<u8>> {
    let (count, entries) = snp_cpuid::decode_page(page);
    let too_many = usize::try_from(count).map_or(true, |c| c > CPUID_PAGE_MAX_ENTRIES);
    let fixed: Vec<CpuidEntry> = entries.iter().map(fix_entry).collect();
    if !too_many && fixed == entries {
        return None;
    }
    let mut out = snp_cpuid::encode_page(&fixed)?;
    if too_many {
        // Firmware reports the count it can take.
        out[..4].copy_from_slice(&(CPUID_PAGE_MAX_ENTRIES as u32).to_le_bytes());
    }
    Some(out)
}

fn fix_entry(e: &CpuidEntry) -> CpuidEntry {
    let mut f = *e;
    for (reg, bits) in e.forbidden_bits() {
        match reg {
            CpuidReg::Ebx => f.ebx &= !bits,
            CpuidReg::Ecx => f.ecx &= !bits,
            CpuidReg::Edx => f.edx &= !bits,
        }
    }
    if !snp_cpuid::is_indexed(f.eax_in) {
        f.ecx_in = 0;
    }
    if f.eax_in == 0xd && f.ecx_in <= 1 {
        f.xcr0_in = 1;
    }
    f
}
