//! `setup_long_mode` on `/dev/kvm` (named `kvm_*`: where it is not usable,
//! `scripts/test.sh` leaves them out and counts them as skipped). An SNP
//! guest starts in 64-bit mode from the registers the VMM gives its save
//! area; on a default VM the same registers run a 64-bit guest here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use hypervisor::kvm::KvmHypervisor;
use hypervisor::{Vcpu, Vm, VmExit, VmType};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const ENTRY: u64 = 0x1000;
const PML4: u64 = 0x2000;

/// 64-bit code: only in long mode does `mov rax, imm64` load all eight
/// bytes (elsewhere 0x48 is `dec eax` and the rest other instructions).
const CODE: [u8; 20] = [
    0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rax, 0x1122334455667788
    0x48, 0xc1, 0xe8, 0x20, //                                     shr rax, 32
    0x66, 0xba, 0xe8, 0x05, //                                     mov dx, 0x5e8
    0xef, //                                                       out dx, eax
    0xf4, //                                                       hlt
];

#[test]
fn kvm_long_mode_registers_run_64_bit_code() {
    let hv = KvmHypervisor::new().unwrap_or_else(|e| {
        panic!("this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e})")
    });
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(&CODE, GuestAddress(ENTRY)).unwrap();
    // Identity map of the first 2 MiB: PML4 -> PDPT -> one large page.
    mem.write_obj(0x3000u64 | 0x3, GuestAddress(PML4)).unwrap();
    mem.write_obj(0x4000u64 | 0x3, GuestAddress(0x3000))
        .unwrap();
    mem.write_obj(0x83u64, GuestAddress(0x4000)).unwrap();
    let vm = hv.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::new(mem)).unwrap();
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.setup_long_mode(ENTRY, PML4).unwrap();
    let state = format!("{vcpu:?}");
    assert!(
        state.starts_with("KvmVcpu { immediate_exit: false, pending: None"),
        "{state}"
    );
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::IoOut {
            port: 0x5e8,
            data: hypervisor::PioData::from_slice(&0x1122_3344u32.to_le_bytes())
        }
    );
    assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);
}
