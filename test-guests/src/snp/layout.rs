//! Where the SNP guest keeps its code, page tables and data, and which
//! pages it launches, validates and shares.
//!
//! ```text
//! 0x0_0000 ..= 0x0_0fff   unused, unmapped (a null access faults)
//! 0x0_1000 ..= 0x0_2fff   code (CODE_GPA)                    Normal
//! 0x0_3000 ..= 0x0_6fff   PML4, PDPT, PD, PT                  Normal
//! 0x0_7000 ..= 0x0_7fff   secrets page (firmware fills it)    Secrets
//! 0x0_8000 ..= 0x0_8fff   unused (no CPUID page: the guest never executes CPUID)
//! 0x0_9000 ..= 0x0_9fff   GHCB                                Zero, then shared
//! 0x0_a000 ..= 0x0_afff   guest request message page          Zero, then shared
//! 0x0_b000 ..= 0x0_bfff   guest response message page         Zero, then shared
//! 0x0_c000 ..= 0x0_cfff   report (REPORT_GPA)                 Zero, then shared
//! 0x1_0000 ..= 0x1_7fff   certificate buffer, 8 pages         Zero, then shared
//! ```
//!
//! # Page tables
//!
//! Four levels, identity mapping the first 2 MiB with 4 KiB pages (the
//! first page left unmapped). Every private page is mapped with the C-bit
//! (encryption bit) set in its page-table entry, the shared pages with it
//! clear; the table pointers carry the C-bit too, as the tables themselves
//! are private. The C-bit's position is a parameter ([`DEFAULT_C_BIT`]):
//! on SNP hardware it is CPUID `0x8000_001F` EBX\[5:0\] (AMD APM vol. 2,
//! "Memory Encryption"; 51 on EPYC Milan and Genoa, 47 on older parts),
//! which the host reports and this image bakes in.
//!
//! A second mapping, [`PRIVATE_ALIAS`], maps the same first 2 MiB as one
//! private 2 MiB page. PVALIDATE takes a virtual address, and the guest
//! rescinds the validation of a page it is about to share through this
//! private mapping, as Linux does (it rescinds before it clears the C-bit).

use hypervisor::SnpPageType;
use vmm::payload::LaunchRange;

use super::SnpError;

/// Size of a page, the unit of the certificate `npages`.
pub const PAGE_SIZE: u64 = 4096;

/// Guest-physical (and virtual) address the code is loaded at and entered.
pub const CODE_GPA: u64 = 0x1000;
/// Room for the code: two pages.
pub const CODE_MAX_SIZE: usize = 0x2000;
/// The PML4, the vCPU's CR3.
pub const PML4_GPA: u64 = 0x3000;
/// The page-directory-pointer table.
pub const PDPT_GPA: u64 = 0x4000;
/// The page directory.
pub const PD_GPA: u64 = 0x5000;
/// The page table of the first 2 MiB.
pub const PT_GPA: u64 = 0x6000;
/// Bytes of page tables, from [`PML4_GPA`].
pub const PAGE_TABLES_SIZE: u64 = 4 * PAGE_SIZE;
/// The secrets page (SNP firmware writes the VMPCKs there at launch).
pub const SECRETS_GPA: u64 = 0x7000;
/// The guest-hypervisor communication block.
pub const GHCB_GPA: u64 = 0x9000;
/// The guest request message page (`SW_EXITINFO1` of the request).
pub const REQUEST_GPA: u64 = 0xa000;
/// The guest response message page (`SW_EXITINFO2` of the request).
pub const RESPONSE_GPA: u64 = 0xb000;
/// The report written after each request (a
/// [`GuestReport`](crate::report::GuestReport), then [`FW_ERROR_OFFSET`]).
pub const REPORT_GPA: u64 = 0xc000;
/// Offset in the report of a ninth `u32`: the low 32 bits of
/// `SW_EXITINFO2` after the last request the host passed to firmware (the
/// firmware's error, see [`super::ghcb`]); 0 if none.
pub const FW_ERROR_OFFSET: u64 = 32;
/// The certificate buffer (RAX of the request).
pub const BUFFER_GPA: u64 = 0x1_0000;
/// Pages of the certificate buffer: the same 32 KiB as the real-mode guest,
/// so the same [`AttestMachine`](crate::attest::AttestMachine) decides.
pub const BUFFER_PAGES: u64 = crate::attest::BUFFER_PAGES;
/// Bytes of the certificate buffer.
pub const BUFFER_SIZE: u64 = BUFFER_PAGES * PAGE_SIZE;
/// The least RAM (from GPA 0) the guest needs: up to the end of its buffer.
pub const MIN_MEMORY: u64 = BUFFER_GPA + BUFFER_SIZE;
/// Virtual address of the private 2 MiB alias of guest-physical 0.
pub const PRIVATE_ALIAS: u64 = 0x20_0000;
/// The C-bit position of EPYC Milan and Genoa, which the mock-snp host
/// reports; the VMM fills in the real host's position
/// ([`hypervisor::Hypervisor::snp_c_bit`]).
pub const DEFAULT_C_BIT: u8 = 51;

/// The pages the guest makes shared, in order: the GHCB first (it must be
/// shared before it is registered), then the request and response pages,
/// the report and the buffer.
pub const SHARED_PAGES: [u64; 12] = {
    let mut pages = [0; 12];
    pages[0] = GHCB_GPA;
    pages[1] = REQUEST_GPA;
    pages[2] = RESPONSE_GPA;
    pages[3] = REPORT_GPA;
    let mut i = 0;
    while i < BUFFER_PAGES as usize {
        pages[4 + i] = BUFFER_GPA + i as u64 * PAGE_SIZE;
        i += 1;
    }
    pages
};

/// Page-table entry bits (AMD APM vol. 2, "Long-Mode Page Translation").
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_LARGE: u64 = 1 << 7;

/// Whether `gpa`'s page is one the guest shares.
pub fn is_shared(gpa: u64) -> bool {
    SHARED_PAGES.contains(&(gpa & !(PAGE_SIZE - 1)))
}

/// Checks a C-bit position: above the 32 bits the image's addresses use,
/// at most 51 (the top physical-address bit of a page-table entry).
pub fn check_c_bit(c_bit: u8) -> Result<u64, SnpError> {
    if (32..=51).contains(&c_bit) {
        Ok(1 << c_bit)
    } else {
        Err(SnpError::InvalidCBit(c_bit))
    }
}

/// The four page tables, [`PAGE_TABLES_SIZE`] bytes to load at
/// [`PML4_GPA`], for the C-bit at `c_bit`.
pub fn page_tables(c_bit: u8) -> Result<Vec<u8>, SnpError> {
    let c = check_c_bit(c_bit)?;
    let table = PTE_PRESENT | PTE_WRITABLE | c;
    let mut entries = vec![0u64; 4 * 512];
    // PML4[0] -> PDPT, PDPT[0] -> PD.
    entries[0] = PDPT_GPA | table;
    entries[512] = PD_GPA | table;
    // PD[0] -> PT; PD[1]: the private 2 MiB alias of GPA 0.
    entries[1024] = PT_GPA | table;
    entries[1025] = PTE_LARGE | table;
    // PT: identity, page 0 left out.
    for page in 1..512u64 {
        let gpa = page * PAGE_SIZE;
        let mut entry = gpa | PTE_PRESENT | PTE_WRITABLE;
        if !is_shared(gpa) {
            entry |= c;
        }
        entries[1536 + page as usize] = entry;
    }
    Ok(entries.iter().flat_map(|e| e.to_le_bytes()).collect())
}

/// The ranges the VMM launch-updates, in order.
pub fn launch_ranges() -> Vec<LaunchRange> {
    let range = |gpa: u64, len: u64, page_type| LaunchRange {
        gpa,
        len,
        page_type,
    };
    vec![
        range(CODE_GPA, CODE_MAX_SIZE as u64, SnpPageType::Normal),
        range(PML4_GPA, PAGE_TABLES_SIZE, SnpPageType::Normal),
        range(SECRETS_GPA, PAGE_SIZE, SnpPageType::Secrets),
        range(
            GHCB_GPA,
            REPORT_GPA + PAGE_SIZE - GHCB_GPA,
            SnpPageType::Zero,
        ),
        range(BUFFER_GPA, BUFFER_SIZE, SnpPageType::Zero),
    ]
}

// The layout must hold together; checked at compile time.
const _: () = {
    assert!(CODE_GPA + CODE_MAX_SIZE as u64 <= PML4_GPA);
    assert!(PML4_GPA + PAGE_TABLES_SIZE <= SECRETS_GPA);
    assert!(SECRETS_GPA < GHCB_GPA);
    assert!(REPORT_GPA + FW_ERROR_OFFSET + 4 <= REPORT_GPA + PAGE_SIZE);
    assert!(crate::report::REPORT_SIZE as u64 == FW_ERROR_OFFSET);
    assert!(REPORT_GPA + PAGE_SIZE <= BUFFER_GPA);
    assert!(BUFFER_GPA % PAGE_SIZE == 0);
    // Everything lies in the identity-mapped first 2 MiB, below the alias.
    assert!(MIN_MEMORY <= PRIVATE_ALIAS);
};
