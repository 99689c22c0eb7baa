//! What KVM refuses a default VM (named `kvm_*`: where `/dev/kvm` is not
//! usable, `scripts/test.sh` leaves them out and counts them as skipped):
//! SEV commands and the SNP launch, memory attributes, and a run it
//! refuses, which is an error, not an interruption.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::sync::Arc;

use hypervisor::kvm::KvmHypervisor;
use hypervisor::sev_commands::SnpCommands;
use hypervisor::{HypervisorError, SnpLaunch, SnpPageType, Vcpu, Vm, VmType};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn kvm() -> KvmHypervisor {
    KvmHypervisor::new().unwrap_or_else(|e| {
        panic!("this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e})")
    })
}

#[test]
fn kvm_sev_commands_and_the_snp_launch_are_refused_on_a_default_vm() {
    let hv = kvm();
    let vm = hv.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
    ))
    .unwrap();
    // KVM_MEMORY_ENCRYPT_OP itself: no SEV VM, no command.
    let refused = SnpCommands::new(vm.vm_fd(), 0).init2().unwrap_err();
    assert!(
        matches!(refused, HypervisorError::SnpInit(_)),
        "{refused:?}"
    );
    assert!(vm.snp().is_none());
    let launch: &dyn SnpLaunch = &vm;
    for refused in [
        launch.launch_start(hypervisor::DEFAULT_SNP_POLICY),
        launch.launch_update(0x1000, 0x1000, SnpPageType::Normal),
        launch.launch_finish([0; 32]),
    ] {
        assert!(
            matches!(refused, Err(HypervisorError::NotSnpVm)),
            "{refused:?}"
        );
    }
    // A range outside guest memory is refused before anything else.
    let refused = launch.launch_update(0x10000, 0x1000, SnpPageType::Normal);
    assert!(
        matches!(refused, Err(HypervisorError::SnpLaunchOrder(why)) if why.contains("outside guest memory")),
        "{refused:?}"
    );
    // A default VM has no private memory to convert to.
    let refused = launch.set_private(0x1000, 0x1000, true).unwrap_err();
    assert!(
        matches!(refused, HypervisorError::MemoryAttributes { .. }),
        "{refused:?}"
    );
}

#[test]
fn kvm_a_run_kvm_refuses_is_an_error_not_an_interruption() {
    let hv = kvm();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(&[0xf4], GuestAddress(0x1000)).unwrap(); // hlt
    let vm = hv.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::new(mem)).unwrap();
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.setup_real_mode(0x1000).unwrap();
    // A register set KVM does not know asked for in kvm_run: KVM_RUN
    // fails with EINVAL (kvm_arch_vcpu_ioctl_run, KVM_SYNC_X86_VALID_FIELDS).
    set_valid_regs(&vcpu, 1 << 31);
    match vcpu.run() {
        Err(HypervisorError::Run(e)) => assert_eq!(e.errno(), libc::EINVAL),
        other => panic!("expected KVM_RUN to fail with EINVAL, got {other:?}"),
    }
    set_valid_regs(&vcpu, 0);
    assert_eq!(vcpu.run().unwrap(), hypervisor::VmExit::Hlt);
}

/// Writes `kvm_run.kvm_valid_regs` of `vcpu` through a mapping of the
/// vCPU's `kvm_run` page of this test's own.
fn set_valid_regs(vcpu: &hypervisor::kvm::KvmVcpu, regs: u64) {
    let fd = vcpu.vcpu_fd().as_raw_fd();
    // SAFETY: maps the first page of the vCPU fd's kvm_run area, shared;
    // checked for failure below and unmapped before returning.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    let field = std::mem::offset_of!(kvm_bindings::kvm_run, kvm_valid_regs);
    // SAFETY: the field lies in the first page of kvm_run, mapped above,
    // 8-byte aligned; the vCPU is not running.
    unsafe {
        page.cast::<u8>()
            .add(field)
            .cast::<u64>()
            .write_volatile(regs);
        libc::munmap(page, 4096);
    }
}
