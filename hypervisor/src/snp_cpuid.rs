//! The SNP CPUID page: its layout, and the entries firmware refuses.
//!
//! Layout (AMD SEV-SNP firmware ABI, "CPUID page"; Linux `struct
//! snp_cpuid_table`): a 16-byte header (`count` as a `u32`, 12 reserved
//! bytes), then up to [`CPUID_PAGE_MAX_ENTRIES`] entries of 48 bytes:
//! `eax_in`, `ecx_in` (`u32`), `xcr0_in`, `xss_in` (`u64`), `eax`, `ebx`,
//! `ecx`, `edx` (`u32`), 8 reserved bytes.
//!
//! Firmware checks every entry against what the CPU can do; KVM reports
//! its refusal as `-EIO` with firmware error `INVALID_PARAM`, after copying
//! the page firmware rewrote with the values it expected back into the
//! VMM's buffer (`sev_gmem_post_populate` in `arch/x86/kvm/svm/sev.c`).
//! [`QEMU_MASKS`] are the bits KVM can report but the CPU does not have,
//! which QEMU removes before it builds the page
//! (`sev_snp_mask_cpuid_features` in QEMU's `target/i386/sev.c`).

/// Most entries a CPUID page holds.
pub const CPUID_PAGE_MAX_ENTRIES: usize = 64;
/// Size of one entry.
pub const CPUID_ENTRY_SIZE: usize = 48;
/// Size of the header before the entries.
pub const CPUID_HEADER_SIZE: usize = 16;

/// One entry of the CPUID page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidEntry {
    /// `EAX` input (the function).
    pub eax_in: u32,
    /// `ECX` input (the index; 0 for leaves without subleaves).
    pub ecx_in: u32,
    /// `XCR0` input (leaf 0xD subleaves 0 and 1).
    pub xcr0_in: u64,
    /// `XSS` input.
    pub xss_in: u64,
    /// Output `EAX`.
    pub eax: u32,
    /// Output `EBX`.
    pub ebx: u32,
    /// Output `ECX`.
    pub ecx: u32,
    /// Output `EDX`.
    pub edx: u32,
}

/// The output register a mask applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidReg {
    /// `EBX`.
    Ebx,
    /// `ECX`.
    Ecx,
    /// `EDX`.
    Edx,
}

/// Bits KVM may report that the CPU lacks, as QEMU masks them:
/// `(function, index, register, bits)`. `index` is `None` for leaves
/// without subleaves.
pub const QEMU_MASKS: [(u32, Option<u32>, CpuidReg, u32); 4] = [
    // 1.ECX TSC_DEADLINE (bit 24).
    (1, None, CpuidReg::Ecx, 1 << 24),
    // 7.0.EBX TSC_ADJUST (bit 1).
    (7, Some(0), CpuidReg::Ebx, 1 << 1),
    // 7.0.EDX SPEC_CTRL, STIBP, FLUSH_L1D, ARCH_CAPABILITIES,
    // CORE_CAPABILITY, SSBD (bits 26 to 31).
    (7, Some(0), CpuidReg::Edx, 0xfc00_0000),
    // 0x8000_0008.EBX VIRT_SSBD (bit 25).
    (0x8000_0008, None, CpuidReg::Ebx, 1 << 25),
];

/// The leaves whose `ECX` input selects a subleaf (Linux
/// `cpuid_function_is_indexed` and KVM's `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`
/// leaves): only these may carry a non-zero `ecx_in`.
pub fn is_indexed(function: u32) -> bool {
    matches!(
        function,
        4 | 7
            | 0xb
            | 0xd
            | 0xf
            | 0x10
            | 0x12
            | 0x14
            | 0x17
            | 0x18
            | 0x1d
            | 0x1e
            | 0x1f
            | 0x24
            | 0x8000_001d
            | 0x8000_0020
            | 0x8000_0026
    )
}

impl CpuidEntry {
    /// The bits of this entry that one of [`QEMU_MASKS`] forbids, per
    /// register: `(register, bits)` pairs with bits set.
    pub fn forbidden_bits(&self) -> Vec<(CpuidReg, u32)> {
        QEMU_MASKS
            .iter()
            .filter(|(f, i, _, _)| *f == self.eax_in && i.is_none_or(|i| i == self.ecx_in))
            .filter_map(|&(_, _, reg, bits)| {
                let value = match reg {
                    CpuidReg::Ebx => self.ebx,
                    CpuidReg::Ecx => self.ecx,
                    CpuidReg::Edx => self.edx,
                };
                (value & bits != 0).then_some((reg, value & bits))
            })
            .collect()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.eax_in.to_le_bytes());
        out.extend_from_slice(&self.ecx_in.to_le_bytes());
        out.extend_from_slice(&self.xcr0_in.to_le_bytes());
        out.extend_from_slice(&self.xss_in.to_le_bytes());
        for value in [self.eax, self.ebx, self.ecx, self.edx] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&[0; 8]);
    }

    fn decode(b: &[u8]) -> CpuidEntry {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        CpuidEntry {
            eax_in: u32_at(0),
            ecx_in: u32_at(4),
            xcr0_in: u64_at(8),
            xss_in: u64_at(16),
            eax: u32_at(24),
            ebx: u32_at(28),
            ecx: u32_at(32),
            edx: u32_at(36),
        }
    }
}

/// A CPUID page's 4096 bytes for `entries`, or `None` for more than
/// [`CPUID_PAGE_MAX_ENTRIES`] (QEMU refuses those too; never truncated).
pub fn encode_page(entries: &[CpuidEntry]) -> Option<Vec<u8>> {
    if entries.len() > CPUID_PAGE_MAX_ENTRIES {
        return None;
    }
    let mut page = Vec::with_capacity(4096);
    page.extend_from_slice(&u32::try_from(entries.len()).ok()?.to_le_bytes());
    page.extend_from_slice(&[0; 12]);
    for entry in entries {
        entry.encode(&mut page);
    }
    page.resize(4096, 0);
    Some(page)
}

/// The count and entries of a CPUID page (`page` is at least 4096 bytes;
/// a count above 64 is reported as it is, with the 64 entries there are).
pub fn decode_page(page: &[u8]) -> (u32, Vec<CpuidEntry>) {
    if page.len() < 4096 {
        return (0, Vec::new());
    }
    let count = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let n = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(CPUID_PAGE_MAX_ENTRIES);
    let entries = (0..n)
        .map(|i| {
            let at = CPUID_HEADER_SIZE + i * CPUID_ENTRY_SIZE;
            CpuidEntry::decode(&page[at..at + CPUID_ENTRY_SIZE])
        })
        .collect();
    (count, entries)
}

/// The entries that differ between what the VMM provided and what
/// firmware wrote back: `(provided, expected)` pairs, for the log.
pub fn mismatches(provided: &[u8], written_back: &[u8]) -> Vec<(CpuidEntry, CpuidEntry)> {
    let (_, old) = decode_page(provided);
    let (_, new) = decode_page(written_back);
    old.into_iter().zip(new).filter(|(a, b)| a != b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_layout_round_trips() {
        let e = CpuidEntry {
            eax_in: 0xd,
            ecx_in: 1,
            xcr0_in: 1,
            xss_in: 0,
            eax: 1,
            ebx: 0x240,
            ecx: 3,
            edx: 4,
        };
        let page = encode_page(&[e, e]).unwrap();
        assert_eq!(page.len(), 4096);
        assert_eq!(&page[..4], &2u32.to_le_bytes());
        assert_eq!(&page[16..20], &0xdu32.to_le_bytes());
        assert_eq!(&page[24..32], &1u64.to_le_bytes());
        assert_eq!(&page[44..48], &0x240u32.to_le_bytes());
        assert_eq!(decode_page(&page), (2, vec![e, e]));
        assert!(encode_page(&vec![e; 65]).is_none(), "more than 64 refused");
    }

    #[test]
    fn masks_find_what_the_cpu_lacks() {
        let leaf7 = CpuidEntry {
            eax_in: 7,
            ebx: 0b10,
            edx: 1 << 31,
            ..Default::default()
        };
        assert_eq!(
            leaf7.forbidden_bits(),
            [(CpuidReg::Ebx, 0b10), (CpuidReg::Edx, 1 << 31)]
        );
        let leaf7_1 = CpuidEntry { ecx_in: 1, ..leaf7 };
        assert!(leaf7_1.forbidden_bits().is_empty(), "only subleaf 0");
        assert!(is_indexed(0xd) && !is_indexed(1) && !is_indexed(0x8000_0008));
    }
}
