//! Tests against the real `/dev/kvm`, named `kvm_*`. Where `/dev/kvm` is
//! not usable, `scripts/test.sh` leaves them out and the runner reports
//! them as skipped; run anyway, they fail (a bug in `KvmHypervisor::new`
//! must never pass for a missing device). The one test here that needs no
//! `/dev/kvm` (a missing device path) is not named `kvm_*`, so it runs
//! everywhere.

// Helpers outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hypervisor::kvm::{KvmHypervisor, KvmVcpu, KvmVm};
use hypervisor::{Hypervisor, HypervisorError, PioData, Vcpu, Vm, VmExit, VmType};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const ENTRY: u64 = 0x1000;

fn kvm() -> KvmHypervisor {
    KvmHypervisor::new().unwrap_or_else(|e| panic!("this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e:?})"))
}

/// A default VM with 64 KiB of RAM at 0, `code` at `ENTRY`, one vCPU in
/// real mode at `ENTRY`. The test's own handle on the memory is dropped: the
/// VM must keep the mapping alive.
fn boot(hv: &KvmHypervisor, code: &[u8]) -> (KvmVm, KvmVcpu) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(code, GuestAddress(ENTRY)).unwrap();
    let vm = hv.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::new(mem)).unwrap();
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.setup_real_mode(ENTRY).unwrap();
    (vm, vcpu)
}

#[test]
fn kvm_io_out_in_and_hlt_are_decoded() {
    let hv = kvm();
    assert_eq!(hv.name(), "kvm");
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, 0x41, //       mov al, 0x41
        0xee, //             out dx, al
        0xec, //             in al, dx
        0xba, 0xf9, 0x03, // mov dx, 0x3f9
        0xee, //             out dx, al      (echoes what IN read)
        0xf4, //             hlt
    ];
    let (_vm, mut vcpu) = boot(&hv, &code);
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::IoOut {
            port: 0x3f8,
            data: PioData::from_slice(&[0x41])
        }
    );
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::IoIn {
            port: 0x3f8,
            size: 1
        }
    );
    assert!(matches!(
        vcpu.complete_io_in(&[1, 2]),
        Err(HypervisorError::IoInLength { .. })
    ));
    vcpu.complete_io_in(&[0x99]).unwrap();
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::IoOut {
            port: 0x3f9,
            data: PioData::from_slice(&[0x99])
        }
    );
    assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);
    // Nothing pending after a HLT.
    assert!(matches!(
        vcpu.complete_io_in(&[0]),
        Err(HypervisorError::NoPendingExit(_))
    ));
    assert!(matches!(
        vcpu.complete_snp_req_certs(hypervisor::SnpCertsCompletion::ok()),
        Err(HypervisorError::NoPendingExit(_))
    ));
}

#[test]
fn kvm_immediate_exit_completes_the_in_first() {
    let hv = kvm();
    let code = [
        0xba, 0x60, 0x00, // mov dx, 0x60
        0xec, //             in al, dx
        0xf4, //             hlt
    ];
    let (_vm, mut vcpu) = boot(&hv, &code);
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::IoIn {
            port: 0x60,
            size: 1
        }
    );
    vcpu.complete_io_in(&[0x42]).unwrap();
    vcpu.set_immediate_exit(true);
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    let regs = vcpu.vcpu_fd().get_regs().unwrap();
    assert_eq!(regs.rax & 0xff, 0x42, "IN value not in AL after EINTR");
    assert_eq!(regs.rip, ENTRY + 4, "RIP not past the IN");
    // Still set: interrupted again, no guest code runs.
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    assert_eq!(vcpu.vcpu_fd().get_regs().unwrap().rip, ENTRY + 4);
    vcpu.set_immediate_exit(false);
    assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);
}

/// Runs `vcpu` (spinning in `jmp $`) on its own thread and kicks it
/// `rounds` times from this thread, each time waiting (with a deadline) for
/// the run to come back `Interrupted`.
fn kick_rounds(mut vcpu: KvmVcpu, rounds: usize, kick_first: bool) {
    let kicker = vcpu.kicker();
    if kick_first {
        // Before any thread is bound: must not be lost.
        kicker.kick().unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        for _ in 0..rounds {
            let exit = vcpu.run().unwrap();
            if tx.send(exit).is_err() {
                return;
            }
        }
    });
    let mut worst = Duration::ZERO;
    for round in 0..rounds {
        let start = Instant::now();
        if !(kick_first && round == 0) {
            kicker.kick().unwrap();
        }
        let exit = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: vCPU not interrupted within 20 s ({e})"));
        assert_eq!(exit, VmExit::Interrupted, "round {round}");
        worst = worst.max(start.elapsed());
    }
    runner.join().unwrap();
    eprintln!("{rounds} kicks, slowest {worst:?}");
    assert!(!kicker.is_pending());
}

#[test]
fn kvm_kick_interrupts_a_spinning_vcpu() {
    let hv = kvm();
    let code = [
        0xeb, 0xfe, // jmp $
    ];
    let (_vm, vcpu) = boot(&hv, &code);
    kick_rounds(vcpu, 50, false);
}

#[test]
fn kvm_kick_reaches_a_vcpu_inside_kvm_run() {
    let hv = kvm();
    let code = [
        0xff, 0x06, 0x00, 0x05, // loop: inc word [0x500]
        0xeb, 0xfa, //             jmp loop
    ];
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    mem.write_slice(&code, GuestAddress(ENTRY)).unwrap();
    let vm = hv.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::clone(&mem)).unwrap();
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.setup_real_mode(ENTRY).unwrap();
    let kicker = vcpu.kicker();
    let (tx, rx) = mpsc::channel();
    let runner = std::thread::spawn(move || tx.send(vcpu.run().unwrap()));

    // Wait until the guest is demonstrably executing inside KVM_RUN: only
    // the signal can stop it now (the pending flag is checked before entry).
    let deadline = Instant::now() + Duration::from_secs(20);
    while mem.read_obj::<u16>(GuestAddress(0x500)).unwrap() == 0 {
        assert!(Instant::now() < deadline, "guest never started");
        std::thread::yield_now();
    }
    let start = Instant::now();
    kicker.kick().unwrap();
    let exit = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("vCPU not interrupted within 20 s");
    eprintln!("in-guest kick returned after {:?}", start.elapsed());
    assert_eq!(exit, VmExit::Interrupted);
    runner.join().unwrap().unwrap();
}

#[test]
fn kvm_kick_before_the_first_run_is_not_lost() {
    let hv = kvm();
    let code = [
        0xeb, 0xfe, // jmp $
    ];
    let (_vm, vcpu) = boot(&hv, &code);
    kick_rounds(vcpu, 3, true);
}

#[test]
fn kvm_kick_after_the_vcpu_thread_exited_is_harmless() {
    let hv = kvm();
    let code = [
        0xf4, // hlt
    ];
    let (_vm, vcpu) = boot(&hv, &code);
    let kicker = vcpu.kicker();
    let vcpu = std::thread::spawn(move || {
        let mut vcpu = vcpu;
        assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);
        vcpu
    })
    .join()
    .unwrap();
    // The thread is gone but the vCPU lives: no signal may be sent.
    kicker.kick().unwrap();
    assert!(kicker.is_pending());
    drop(vcpu);
    kicker.kick().unwrap();
}

fn host_has_snp() -> bool {
    std::fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp")
        .is_ok_and(|s| s.trim() == "Y" || s.trim() == "1")
}

#[test]
fn kvm_snp_is_reported_missing_on_a_host_without_it() {
    let hv = kvm();
    let supported = hv.snp_req_certs_supported().unwrap();
    if host_has_snp() {
        // An SNP host: the SNP side is checked by tests/snp_host.rs.
        assert!(hv.create_vm(VmType::Snp).is_ok());
        return;
    }
    assert!(!supported);
    let err = hv.create_vm(VmType::Snp).err().unwrap();
    assert!(
        matches!(err, HypervisorError::SnpUnsupported { .. }),
        "unexpected error: {err}"
    );
    assert_eq!(err.errno(), Some(libc::EINVAL), "KVM_CREATE_VM(type 4)");
    eprintln!("SNP VM refused as expected: {err}");
}

#[test]
fn kvm_enable_on_a_default_vm_is_refused() {
    let hv = kvm();
    let vm = hv.create_vm(VmType::Default).unwrap();
    assert!(matches!(
        vm.enable_snp_req_certs(),
        Err(HypervisorError::NotSnpVm)
    ));
}

#[test]
fn missing_kvm_device_is_kvm_unavailable() {
    let err = KvmHypervisor::with_path("/nonexistent/kvm").unwrap_err();
    assert!(matches!(err, HypervisorError::KvmUnavailable { .. }));
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.to_string().contains("/nonexistent/kvm"));
}

#[test]
fn kvm_memory_in_several_slots() {
    let hv = kvm();
    let code = [
        0xb8, 0x00, 0x20, // mov ax, 0x2000
        0x8e, 0xd8, //       mov ds, ax          (ds base 0x20000)
        0xa0, 0x00, 0x00, // mov al, [0]          (reads GPA 0x20000)
        0xba, 0xe9, 0x00, // mov dx, 0xe9
        0xee, //             out dx, al
        0xf4, //             hlt
    ];
    let low = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    low.write_slice(&code, GuestAddress(ENTRY)).unwrap();
    let high = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x20000), 0x1000)]).unwrap();
    high.write_obj(0x77u8, GuestAddress(0x20000)).unwrap();
    let vm = hv.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::new(low)).unwrap();
    vm.map_memory(Arc::new(high)).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.setup_real_mode(ENTRY).unwrap();
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::IoOut {
            port: 0xe9,
            data: PioData::from_slice(&[0x77])
        }
    );
    assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);
    // The kernel refuses an overlapping slot.
    let again = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    assert!(matches!(
        vm.map_memory(Arc::new(again)),
        Err(HypervisorError::MapMemory { .. })
    ));
}

/// The guest_memfd plumbing of an SNP VM on this host's KVM: where the host
/// offers `KVM_CAP_GUEST_MEMFD`, a default VM's memory can be bound to a
/// guest_memfd with `KVM_SET_USER_MEMORY_REGION2`; where it does not, the
/// error says so.
#[test]
fn kvm_guest_memfd_and_memory_region2_bind_where_offered() {
    let hv = kvm();
    let vm = hv.create_kvm_vm(VmType::Default).unwrap();
    let offered = vm
        .vm_fd()
        .check_extension_raw(u64::from(kvm_bindings::KVM_CAP_GUEST_MEMFD))
        > 0;
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    match vm.bind_guest_memfd(mem) {
        Ok(()) => assert!(offered, "bound without KVM_CAP_GUEST_MEMFD"),
        Err(e) => {
            assert!(
                !offered,
                "KVM_CAP_GUEST_MEMFD is offered but binding failed: {e:?}"
            );
            assert!(matches!(e, HypervisorError::GuestMemfd { .. }), "{e:?}");
        }
    }
}
