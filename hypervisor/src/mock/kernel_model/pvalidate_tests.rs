//! PVALIDATE as the model's CPU answers it (AMD APM vol. 3): the address
//! translated through the guest's four-level page tables, which must map
//! it present and private (C-bit); the page must be private in the VM;
//! a 2 MiB validation needs a 2 MiB mapping; CF when nothing changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::vmgexit::SevVcpuModel;
use super::{KernelModel, KernelModelConfig};
use crate::VmType;

/// `FAIL_INPUT` and `FAIL_SIZEMISMATCH`.
const FAIL_INPUT: u32 = 1;
const FAIL_SIZEMISMATCH: u32 = 6;

const PML4: u64 = 0x1000;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;

/// Guest memory with page tables at `PML4`: the first 2 MiB in 4 KiB
/// pages (0x5000 private, 0x6000 shared, 0x7000 not present), the
/// second 2 MiB one private large page; and a vCPU whose CR3 is `PML4`.
fn tables(c_bit: u8) -> (GuestMemoryMmap, SevVcpuModel) {
    let c = 1u64 << c_bit;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let entry = |table: u64, index: u64, value: u64| {
        mem.write_obj(value, GuestAddress(table + index * 8))
            .unwrap();
    };
    entry(PML4, 0, 0x2000 | PRESENT);
    entry(0x2000, 0, 0x3000 | PRESENT);
    entry(0x3000, 0, 0x4000 | PRESENT);
    entry(0x3000, 1, 0x20_0000 | c | LARGE | PRESENT);
    entry(0x4000, 5, 0x5000 | c | PRESENT);
    entry(0x4000, 6, 0x6000 | PRESENT);
    entry(0x4000, 7, 0x7000 | c);
    let mut vcpu = SevVcpuModel::default();
    vcpu.page_table = PML4;
    (mem, vcpu)
}

/// An SNP VM model whose pages at `private` (start, length) are private.
fn vm(private: &[(u64, u64)]) -> KernelModel {
    let mut model = KernelModel::new(VmType::Snp, KernelModelConfig::default()).unwrap();
    for &(gpa, len) in private {
        model.set_private(gpa, len, true);
    }
    model
}

#[test]
fn kernel_model_pvalidate_of_a_private_page_sets_cf_when_nothing_changes() {
    let mut model = vm(&[(0x5000, 0x1000)]);
    let c_bit = model.config.c_bit;
    let (mem, vcpu) = tables(c_bit);
    let answers: Vec<(u32, bool)> = [true, true, false, false]
        .into_iter()
        .map(|validate| {
            let a = vcpu.pvalidate(&mut model, &mem, 0x5123, false, validate);
            (a.eax, a.no_update)
        })
        .collect();
    assert_eq!(answers, [(0, false), (0, true), (0, false), (0, true)]);
}

#[test]
fn kernel_model_pvalidate_refusals() {
    let mut model = vm(&[(0x5000, 0x3000), (0x20_0000, 0x20_0000)]);
    let (mem, vcpu) = tables(model.config.c_bit);
    for (what, vaddr, huge, eax) in [
        ("mapped shared", 0x6000, false, FAIL_INPUT),
        ("not present", 0x7000, false, FAIL_INPUT),
        ("not mapped at all", 0x40_0000, false, FAIL_INPUT),
        (
            "2 MiB over a 4 KiB mapping",
            0x5000,
            true,
            FAIL_SIZEMISMATCH,
        ),
    ] {
        let answer = vcpu.pvalidate(&mut model, &mem, vaddr, huge, true);
        assert_eq!(answer.eax, eax, "{what}");
    }
    // A page the VM did not make private.
    let mut shared_vm = vm(&[]);
    let answer = vcpu.pvalidate(&mut shared_vm, &mem, 0x5000, false, true);
    assert_eq!(answer.eax, FAIL_INPUT, "shared in the VM");
}

#[test]
fn kernel_model_pvalidate_through_a_2_mib_mapping() {
    let mut model = vm(&[(0x20_0000, 0x20_0000)]);
    let (mem, vcpu) = tables(model.config.c_bit);
    let huge = vcpu.pvalidate(&mut model, &mem, 0x20_0000, true, true);
    assert_eq!((huge.eax, huge.no_update), (0, false));
    // A 4 KiB page inside it: its own frame.
    let small = vcpu.pvalidate(&mut model, &mem, 0x23_4567, false, true);
    assert_eq!((small.eax, small.no_update), (0, false));
    assert!(model.validated.contains(&0x200));
    assert!(model.validated.contains(&0x234));
}
