//! The launch commands' refusals, each as `sev.c` makes it, and what a
//! launch update writes back: one condition per case, so that dropping
//! any check of the model lets a case through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kvm_bindings::{
    kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{KernelModel, KernelModelConfig, Slot};
use crate::sev_commands::SevCommand;
use crate::snp_cpuid::{CpuidEntry, encode_page};
use crate::{SevDevice, VmType};

/// A model of `vm_type` and an open fd of its `/dev/sev`.
fn model(vm_type: VmType) -> (KernelModel, SevDevice) {
    let model = KernelModel::new(vm_type, KernelModelConfig::default()).unwrap();
    let dev = SevDevice::open_path(model.device().path()).unwrap();
    (model, dev)
}

/// The errno of a refused command (0: accepted).
fn errno_of(model: &mut KernelModel, fd: u32, command: SevCommand<'_>) -> i32 {
    match model.encrypt_op(fd, command) {
        Ok(()) => 0,
        Err(e) => e.errno.errno(),
    }
}

fn init2(model: &mut KernelModel, fd: u32, change: impl FnOnce(&mut kvm_sev_init)) -> i32 {
    let mut init = kvm_sev_init::default();
    change(&mut init);
    errno_of(model, fd, SevCommand::Init2(&mut init))
}

#[test]
fn kernel_model_init2_refusals() {
    let (mut default, dev) = model(VmType::Default);
    assert_eq!(
        init2(&mut default, dev.sev_fd(), |_| {}),
        libc::EINVAL,
        "not an SNP VM"
    );
    type Change = fn(&mut kvm_sev_init);
    let cases: [(&str, Change); 4] = [
        ("flags", |i| i.flags = 1),
        ("VMSA features", |i| i.vmsa_features = 1),
        ("GHCB version 3", |i| i.ghcb_version = 3),
        ("none", |_| {}),
    ];
    for (what, change) in cases {
        let (mut m, dev) = model(VmType::Snp);
        let expected = if what == "none" { 0 } else { libc::EINVAL };
        assert_eq!(init2(&mut m, dev.sev_fd(), change), expected, "{what}");
    }
    let (mut m, dev) = model(VmType::Snp);
    assert_eq!(init2(&mut m, dev.sev_fd(), |i| i.ghcb_version = 2), 0);
    // Once INIT2 made it an SNP VM, only SNP commands: INIT2 is EPERM.
    assert_eq!(init2(&mut m, dev.sev_fd(), |_| {}), libc::EPERM);
}

fn start(model: &mut KernelModel, fd: u32, policy: u64, flags: u16) -> i32 {
    let mut start = kvm_sev_snp_launch_start {
        policy,
        flags,
        ..Default::default()
    };
    errno_of(model, fd, SevCommand::LaunchStart(&mut start))
}

/// An SNP model past INIT2.
fn initialised() -> (KernelModel, SevDevice) {
    let (mut m, dev) = model(VmType::Snp);
    assert_eq!(init2(&mut m, dev.sev_fd(), |_| {}), 0);
    (m, dev)
}

#[test]
fn kernel_model_launch_start_refusals() {
    let (mut m, dev) = model(VmType::Snp);
    let policy = crate::DEFAULT_SNP_POLICY;
    assert_eq!(
        start(&mut m, dev.sev_fd(), policy, 0),
        libc::ENOTTY,
        "before INIT2"
    );
    let every_known_bit = 0xffff | (1 << 16) | (1 << 17) | (1 << 19) | (1 << 20);
    for (what, policy, flags, expected) in [
        ("flags", policy, 1, libc::EINVAL),
        ("an unknown policy bit", policy | (1 << 18), 0, libc::EINVAL),
        ("bit 17 clear", policy & !(1 << 17), 0, libc::EINVAL),
        ("every known bit", every_known_bit, 0, 0),
        ("debug", (1 << 17) | (1 << 19), 0, 0),
        ("single socket", (1 << 17) | (1 << 20), 0, 0),
    ] {
        let (mut m, dev) = initialised();
        assert_eq!(
            start(&mut m, dev.sev_fd(), policy, flags),
            expected,
            "{what}"
        );
    }
    let (mut m, dev) = initialised();
    assert_eq!(start(&mut m, dev.sev_fd(), policy, 0), 0);
    assert_eq!(
        start(&mut m, dev.sev_fd(), policy, 0),
        libc::EINVAL,
        "twice"
    );
}

const SLOT_GPA: u64 = 0x10000;
const SLOT_SIZE: u64 = 0x4000;

/// A started model with one guest_memfd slot of four private pages at
/// `SLOT_GPA`, and the slot's memory.
fn started(guest_memfd: bool) -> (KernelModel, SevDevice, Arc<GuestMemoryMmap>) {
    let (mut m, dev) = initialised();
    assert_eq!(start(&mut m, dev.sev_fd(), crate::DEFAULT_SNP_POLICY, 0), 0);
    let memory = add_private_slot(&mut m, guest_memfd);
    (m, dev, memory)
}

/// Adds the slot of four private pages at `SLOT_GPA`; returns its memory.
fn add_private_slot(m: &mut KernelModel, guest_memfd: bool) -> Arc<GuestMemoryMmap> {
    let memory =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(SLOT_GPA), 0x4000)]).unwrap());
    let uaddr = memory.find_region(GuestAddress(SLOT_GPA)).unwrap().as_ptr() as u64;
    m.add_slot(Slot {
        gpa: SLOT_GPA,
        size: SLOT_SIZE,
        uaddr,
        memory: Arc::clone(&memory),
        guest_memfd,
    });
    m.set_private(SLOT_GPA, SLOT_SIZE, true);
    memory
}

fn update(gpa: u64, len: u64, type_: u8, uaddr: u64) -> kvm_sev_snp_launch_update {
    kvm_sev_snp_launch_update {
        gfn_start: gpa >> 12,
        uaddr,
        len,
        type_,
        ..Default::default()
    }
}

const NORMAL: u8 = kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_NORMAL as u8;
const ZERO: u8 = kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_ZERO as u8;
const CPUID: u8 = kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_CPUID as u8;

#[test]
fn kernel_model_launch_update_refusals() {
    // Everything else in place (an SNP VM, a private guest_memfd slot),
    // but no LAUNCH_START.
    let (mut before, dev) = initialised();
    add_private_slot(&mut before, true);
    let mut u = update(SLOT_GPA, 0x1000, NORMAL, 0);
    assert_eq!(
        errno_of(&mut before, dev.sev_fd(), SevCommand::LaunchUpdate(&mut u)),
        libc::EINVAL,
        "before LAUNCH_START"
    );
    let cases: [(&str, u64, u64, u8, u16); 7] = [
        ("a partial page", SLOT_GPA, 0x1001, NORMAL, 0),
        ("flags", SLOT_GPA, 0x1000, NORMAL, 1),
        ("type 0", SLOT_GPA, 0x1000, 0, 0),
        ("type 2 (unused)", SLOT_GPA, 0x1000, 2, 0),
        ("type 7", SLOT_GPA, 0x1000, 7, 0),
        ("below the slot", SLOT_GPA - 0x1000, 0x1000, NORMAL, 0),
        ("past the slot", SLOT_GPA + SLOT_SIZE, 0x1000, NORMAL, 0),
    ];
    for (what, gpa, len, type_, flags) in cases {
        let (mut m, dev, _) = started(true);
        let mut u = update(gpa, len, type_, 0);
        u.flags = flags;
        assert_eq!(
            errno_of(&mut m, dev.sev_fd(), SevCommand::LaunchUpdate(&mut u)),
            libc::EINVAL,
            "{what}"
        );
    }
    let (mut m, dev, _) = started(false);
    let mut u = update(SLOT_GPA, 0x1000, NORMAL, 0);
    assert_eq!(
        errno_of(&mut m, dev.sev_fd(), SevCommand::LaunchUpdate(&mut u)),
        libc::EINVAL,
        "not a guest_memfd slot"
    );
}

#[test]
fn kernel_model_launch_update_stops_at_the_slot_end_and_writes_progress_back() {
    for (type_, advances) in [(NORMAL, true), (ZERO, false)] {
        let (mut m, dev, _) = started(true);
        // Private pages after the slot, which no slot backs: not touched.
        m.set_private(SLOT_GPA + SLOT_SIZE, 0x2000, true);
        // Two pages before the end of the slot, four asked.
        let gpa = SLOT_GPA + 0x2000;
        let mut u = update(gpa, 0x4000, type_, 0x7000_0000);
        assert_eq!(
            errno_of(&mut m, dev.sev_fd(), SevCommand::LaunchUpdate(&mut u)),
            0
        );
        assert_eq!(
            (u.gfn_start, u.len),
            ((gpa >> 12) + 2, 0x2000),
            "type {type_}"
        );
        let uaddr = if advances { 0x7000_2000 } else { 0x7000_0000 };
        assert_eq!(
            u.uaddr, uaddr,
            "type {type_}: the source moves on only with the data"
        );
        assert!(m.populated(gpa, 0x2000));
        assert!(!m.populated(SLOT_GPA, 0x1000));
        assert!(!m.populated(SLOT_GPA + SLOT_SIZE, 0x1000));
    }
}

#[test]
fn kernel_model_each_cpuid_page_is_checked_at_its_own_address() {
    let (mut m, dev, memory) = started(true);
    let good = encode_page(&[CpuidEntry {
        eax_in: 0x8000_0000,
        ..Default::default()
    }])
    .unwrap();
    // An index on a leaf without subleaves: refused.
    let bad = encode_page(&[CpuidEntry {
        eax_in: 0x8000_0000,
        ecx_in: 1,
        ..Default::default()
    }])
    .unwrap();
    memory.write_slice(&good, GuestAddress(SLOT_GPA)).unwrap();
    memory
        .write_slice(&bad, GuestAddress(SLOT_GPA + 0x1000))
        .unwrap();
    let uaddr = memory.find_region(GuestAddress(SLOT_GPA)).unwrap().as_ptr() as u64;
    let mut u = update(SLOT_GPA, 0x2000, CPUID, uaddr);
    // The first page passes; firmware refuses the second, which ends the
    // call early, and leaves its correction there in place.
    assert_eq!(
        errno_of(&mut m, dev.sev_fd(), SevCommand::LaunchUpdate(&mut u)),
        0
    );
    assert_eq!(u.len, 0x1000);
    assert!(m.populated(SLOT_GPA, 0x1000));
    assert!(!m.populated(SLOT_GPA + 0x1000, 0x1000));
    let mut page = vec![0u8; 4096];
    memory
        .read_slice(&mut page, GuestAddress(SLOT_GPA + 0x1000))
        .unwrap();
    assert_eq!(page, good, "firmware's correction, written back in place");
    memory
        .read_slice(&mut page, GuestAddress(SLOT_GPA))
        .unwrap();
    assert_eq!(page, good, "the first page as it was");
    // Asked again, the corrected page passes.
    assert_eq!(
        errno_of(&mut m, dev.sev_fd(), SevCommand::LaunchUpdate(&mut u)),
        0
    );
    assert_eq!(u.len, 0);
    assert!(m.populated(SLOT_GPA, 0x2000));
}

#[test]
fn kernel_model_launch_finish_refusals() {
    let finish = |m: &mut KernelModel, fd: u32, flags: u16| {
        let mut f = kvm_sev_snp_launch_finish {
            flags,
            ..Default::default()
        };
        errno_of(m, fd, SevCommand::LaunchFinish(&mut f))
    };
    let (mut m, dev) = initialised();
    assert_eq!(
        finish(&mut m, dev.sev_fd(), 0),
        libc::EINVAL,
        "before LAUNCH_START"
    );
    // Without vCPUs no save area goes to firmware: only the kept sev_fd
    // counts.
    let (mut m, _dev, _) = started(true);
    assert_eq!(finish(&mut m, 0, 0), 0, "no vCPU");
    let (mut m, dev, _) = started(true);
    assert_eq!(finish(&mut m, dev.sev_fd(), 1), libc::EINVAL, "flags");
    // With vCPUs, their save areas go to firmware through this sev_fd.
    m.vcpu_created();
    let stdin = 0;
    assert_eq!(finish(&mut m, stdin, 0), libc::EBADF, "not the device");
    assert_eq!(finish(&mut m, dev.sev_fd(), 0), 0);
    assert!(m.finished);
}

#[test]
fn kernel_model_firmware_takes_64_cpuid_entries_and_fixes_what_the_cpu_lacks() {
    use super::cpuid::check_page;
    use crate::snp_cpuid::{CPUID_ENTRY_SIZE, CPUID_HEADER_SIZE, decode_page};
    let plain = |eax_in| CpuidEntry {
        eax_in,
        ..Default::default()
    };
    let entries: Vec<CpuidEntry> = (0x8000_0000..0x8000_0040).map(plain).collect();
    let mut page = encode_page(&entries).unwrap();
    assert_eq!(check_page(&page), None, "64 entries");
    // A 65th entry: firmware answers with the count it takes.
    page[..4].copy_from_slice(&65u32.to_le_bytes());
    let at = CPUID_HEADER_SIZE + 64 * CPUID_ENTRY_SIZE;
    page[at..at + 4].copy_from_slice(&0x8000_0040u32.to_le_bytes());
    let fixed = check_page(&page).expect("65 entries refused");
    assert_eq!(decode_page(&fixed).0, 64);

    // Leaf 7.0 EDX with every bit: the ones the CPU lacks go, the rest stay.
    let all = CpuidEntry {
        eax_in: 7,
        edx: u32::MAX,
        ..Default::default()
    };
    let forbidden = all
        .forbidden_bits()
        .iter()
        .map(|(_, bits)| *bits)
        .fold(0, |a, b| a | b);
    assert_ne!(forbidden, 0);
    let (_, fixed) = decode_page(&check_page(&encode_page(&[all]).unwrap()).unwrap());
    assert_eq!(fixed[0].edx, !forbidden);
    // Leaf 0xD subleaves 0 and 1 carry XCR0 1; subleaf 2 is left alone.
    let xsave = |ecx_in| CpuidEntry {
        eax_in: 0xd,
        ecx_in,
        ..Default::default()
    };
    let page = encode_page(&[xsave(0), xsave(1), xsave(2)]).unwrap();
    let (_, fixed) = decode_page(&check_page(&page).unwrap());
    let xcr0: Vec<u64> = fixed.iter().map(|e| e.xcr0_in).collect();
    assert_eq!(xcr0, [1, 1, 0]);
}
