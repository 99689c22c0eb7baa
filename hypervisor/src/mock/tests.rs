//! Unit tests of the mock backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::{SnpCertsCompletion, SnpCertsRequest, VmExit};

fn io_out(port: u16, data: &[u8]) -> VmExit {
    VmExit::IoOut {
        port,
        data: crate::PioData::from_slice(data),
    }
}

const REQ: SnpCertsRequest = SnpCertsRequest {
    gpa: 0x2000,
    npages: 1,
};

fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap())
}

#[test]
fn replays_every_exit_kind_and_records_completions() {
    let script = vec![
        io_out(0x80, &[1]),
        VmExit::IoIn {
            port: 0x81,
            size: 2,
        },
        VmExit::SnpReqCerts(REQ),
        VmExit::Interrupted,
        VmExit::Other("mmio".into()),
        VmExit::Hlt,
        VmExit::Shutdown,
    ];
    let hv = MockHypervisor::new().with_script(0, script.clone());
    let log = hv.log();
    assert_eq!(hv.name(), "mock");
    let vm = hv.create_vm(VmType::Snp).unwrap();
    vm.map_memory(memory()).unwrap();
    vm.enable_snp_req_certs().unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.setup_real_mode(0x1000).unwrap();
    launch(vm.as_ref());

    let mut seen = Vec::new();
    for _ in 0..script.len() {
        let exit = vcpu.run().unwrap();
        match &exit {
            VmExit::IoIn { .. } => vcpu.complete_io_in(&[0xab, 0xcd]).unwrap(),
            VmExit::SnpReqCerts(_) => vcpu
                .complete_snp_req_certs(SnpCertsCompletion::need_pages(3))
                .unwrap(),
            _ => {}
        }
        seen.push(exit);
    }
    assert_eq!(seen, script);
    // The script is exhausted: Shutdown for ever.
    assert_eq!(vcpu.run().unwrap(), VmExit::Shutdown);

    let events = log.events();
    assert_eq!(
        &events[..9],
        &[
            MockEvent::CreateVm {
                vm_type: VmType::Snp
            },
            MockEvent::MapMemory {
                regions: vec![(0, 0x10000)],
                guest_memfd: true,
            },
            MockEvent::SetMemoryAttributes {
                gpa: 0,
                len: 0x10000,
                private: true,
            },
            MockEvent::EnableSnpReqCerts { accepted: true },
            MockEvent::CreateVcpu { id: 0 },
            MockEvent::SetupRealMode {
                vcpu: 0,
                entry: 0x1000
            },
            MockEvent::SnpLaunchStart {
                policy: crate::DEFAULT_SNP_POLICY
            },
            MockEvent::SnpLaunchFinish { host_data: [0; 32] },
            MockEvent::Run {
                vcpu: 0,
                immediate_exit: false
            },
        ]
    );
    assert!(events.contains(&MockEvent::IoInCompleted {
        vcpu: 0,
        port: 0x81,
        data: vec![0xab, 0xcd]
    }));
    assert_eq!(
        log.snp_completions(0),
        vec![(REQ, SnpCertsCompletion::need_pages(3))]
    );
    let runs = events
        .iter()
        .filter(|e| matches!(e, MockEvent::Run { .. }))
        .count();
    assert_eq!(runs, script.len() + 1);
}

#[test]
fn immediate_exit_completes_then_interrupts_without_asking_the_guest() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, s) = (Arc::clone(&calls), Arc::clone(&seen));
    let guest = move |last: &MockCompletion, _mem: &GuestMemoryMmap| {
        s.lock().unwrap().push(last.clone());
        match c.fetch_add(1, Ordering::SeqCst) {
            0 => VmExit::SnpReqCerts(REQ),
            1 => VmExit::IoIn {
                port: 0x60,
                size: 1,
            },
            _ => VmExit::Hlt,
        }
    };
    let hv = MockHypervisor::new().with_guest(0, guest);
    let log = hv.log();
    let vm = hv.create_vm(VmType::Snp).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    launch(vm.as_ref());

    assert_eq!(vcpu.run().unwrap(), VmExit::SnpReqCerts(REQ));
    vcpu.complete_snp_req_certs(SnpCertsCompletion::ok())
        .unwrap();
    // The lease-release run: completes the request, runs no guest code.
    vcpu.set_immediate_exit(true);
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The request was completed by that run: nothing left to answer.
    assert!(matches!(
        vcpu.complete_snp_req_certs(SnpCertsCompletion::busy()),
        Err(HypervisorError::NoPendingExit(_))
    ));
    vcpu.set_immediate_exit(false);
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::IoIn {
            port: 0x60,
            size: 1
        }
    );
    vcpu.complete_io_in(&[7]).unwrap();
    vcpu.set_immediate_exit(true);
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    vcpu.set_immediate_exit(false);
    assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);

    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            MockCompletion::Nothing,
            MockCompletion::SnpReqCerts {
                request: REQ,
                completion: Some(SnpCertsCompletion::ok())
            },
            MockCompletion::IoIn {
                port: 0x60,
                data: Some(vec![7])
            },
        ]
    );
    let flags: Vec<bool> = log
        .events()
        .iter()
        .filter_map(|e| match e {
            MockEvent::Run { immediate_exit, .. } => Some(*immediate_exit),
            _ => None,
        })
        .collect();
    assert_eq!(flags, [false, true, true, false, true, false]);
}

#[test]
fn uncompleted_exits_reach_the_guest_as_none() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let mut step = 0;
    let guest = move |last: &MockCompletion, _mem: &GuestMemoryMmap| {
        s.lock().unwrap().push(last.clone());
        step += 1;
        match step {
            1 => VmExit::IoIn { port: 1, size: 1 },
            2 => VmExit::SnpReqCerts(REQ),
            _ => VmExit::Hlt,
        }
    };
    let hv = MockHypervisor::new().with_guest(3, guest);
    let vm = hv.create_vm(VmType::Snp).unwrap();
    let mut vcpu = vm.create_vcpu(3).unwrap();
    launch(vm.as_ref());
    for _ in 0..3 {
        vcpu.run().unwrap();
    }
    assert_eq!(
        seen.lock().unwrap()[1..],
        [
            MockCompletion::IoIn {
                port: 1,
                data: None
            },
            MockCompletion::SnpReqCerts {
                request: REQ,
                completion: None
            },
        ]
    );
}

#[test]
fn completions_are_checked() {
    let hv = MockHypervisor::new().with_script(
        0,
        [
            VmExit::IoIn {
                port: 0x70,
                size: 4,
            },
            VmExit::SnpReqCerts(REQ),
        ],
    );
    let vm = hv.create_vm(VmType::Snp).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    launch(vm.as_ref());
    assert!(matches!(
        vcpu.complete_io_in(&[0]),
        Err(HypervisorError::NoPendingExit(_))
    ));
    vcpu.run().unwrap();
    assert!(matches!(
        vcpu.complete_io_in(&[0; 2]),
        Err(HypervisorError::IoInLength {
            port: 0x70,
            expected: 4,
            got: 2
        })
    ));
    assert!(matches!(
        vcpu.complete_snp_req_certs(SnpCertsCompletion::ok()),
        Err(HypervisorError::NoPendingExit(_))
    ));
    vcpu.complete_io_in(&[0; 4]).unwrap();
    assert!(matches!(
        vcpu.complete_io_in(&[0; 4]),
        Err(HypervisorError::NoPendingExit(_))
    ));
    vcpu.run().unwrap();
    assert!(matches!(
        vcpu.complete_snp_req_certs(SnpCertsCompletion { ret: 22, npages: 0 }),
        Err(HypervisorError::InvalidSnpRet(22))
    ));
    vcpu.complete_snp_req_certs(SnpCertsCompletion::guest_fault())
        .unwrap();
}

#[test]
fn enable_is_refused_after_a_vcpu_exists() {
    let hv = MockHypervisor::new();
    let log = hv.log();
    let vm = hv.create_vm(VmType::Snp).unwrap();
    vm.enable_snp_req_certs().unwrap();
    let _vcpu = vm.create_vcpu(0).unwrap();
    assert!(matches!(
        vm.enable_snp_req_certs(),
        Err(HypervisorError::VcpusAlreadyCreated)
    ));
    assert!(log.events().ends_with(&[
        MockEvent::CreateVcpu { id: 0 },
        MockEvent::EnableSnpReqCerts { accepted: false }
    ]));

    let vm = hv.create_vm(VmType::Default).unwrap();
    assert!(matches!(
        vm.enable_snp_req_certs(),
        Err(HypervisorError::NotSnpVm)
    ));
}

#[test]
fn host_capabilities_are_configurable() {
    let hv = MockHypervisor::new();
    assert!(hv.snp_req_certs_supported().unwrap());

    let hv = MockHypervisor::new().with_snp_req_certs(false);
    assert!(!hv.snp_req_certs_supported().unwrap());
    let vm = hv.create_vm(VmType::Snp).unwrap();
    let err = vm.enable_snp_req_certs().unwrap_err();
    assert!(matches!(err, HypervisorError::SnpReqCertsRejected(_)));
    assert_eq!(err.errno(), Some(libc::EINVAL));

    let hv = MockHypervisor::new().with_snp(false);
    assert!(!hv.snp_req_certs_supported().unwrap());
    assert!(matches!(
        hv.create_vm(VmType::Snp),
        Err(HypervisorError::SnpUnsupported { .. })
    ));
    hv.create_vm(VmType::Default).unwrap();
}

#[test]
fn kick_interrupts_the_next_ordinary_run_once() {
    let hv = MockHypervisor::new().with_script(0, [VmExit::Hlt, VmExit::Hlt]);
    let log = hv.log();
    let vm = hv.create_vm(VmType::Default).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let kicker = vcpu.kicker();

    // Before the vCPU ever ran: remembered.
    kicker.kick().unwrap();
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    assert!(!kicker.is_pending());
    assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);

    // From another thread, after the vCPU thread is bound (signal sent to
    // this thread, whose handler has nothing to do outside a run).
    let k = kicker.clone();
    std::thread::spawn(move || k.kick().unwrap())
        .join()
        .unwrap();
    // A run with the VMM's flag set does not consume the kick ...
    vcpu.set_immediate_exit(true);
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    assert!(kicker.is_pending());
    vcpu.set_immediate_exit(false);
    // ... the next ordinary run reports it.
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    assert_eq!(vcpu.run().unwrap(), VmExit::Hlt);
    assert!(log.events().contains(&MockEvent::Run {
        vcpu: 0,
        immediate_exit: true
    }));
}

#[test]
fn reactive_guest_uses_memory_and_the_answer() {
    // A guest that posts a certificate request, first asking for the size
    // (npages = 0), then with a buffer of the size it was told.
    let mut state = 0;
    let guest = move |last: &MockCompletion, mem: &GuestMemoryMmap| {
        state += 1;
        match (state, last) {
            (1, _) => VmExit::SnpReqCerts(SnpCertsRequest {
                gpa: 0x3000,
                npages: 0,
            }),
            (
                2,
                MockCompletion::SnpReqCerts {
                    completion: Some(c),
                    ..
                },
            ) if c.ret == SnpCertsCompletion::RET_ENOSPC => VmExit::SnpReqCerts(SnpCertsRequest {
                gpa: 0x3000,
                npages: c.npages,
            }),
            (3, MockCompletion::SnpReqCerts { .. }) => {
                let byte: u8 = mem.read_obj(GuestAddress(0x3000)).unwrap();
                VmExit::IoOut {
                    port: 0xe9,
                    data: crate::PioData::from_slice(&[byte]),
                }
            }
            _ => VmExit::Shutdown,
        }
    };
    let hv = MockHypervisor::new().with_guest(0, guest);
    let vm = hv.create_vm(VmType::Snp).unwrap();
    let mem = memory();
    vm.map_memory(Arc::clone(&mem)).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    launch(vm.as_ref());

    let VmExit::SnpReqCerts(r) = vcpu.run().unwrap() else {
        panic!("expected a certificate request");
    };
    assert_eq!(r.npages, 0);
    vcpu.complete_snp_req_certs(SnpCertsCompletion::need_pages(2))
        .unwrap();
    let VmExit::SnpReqCerts(r) = vcpu.run().unwrap() else {
        panic!("expected a certificate request");
    };
    assert_eq!(r.npages, 2);
    mem.write_obj(0x5au8, GuestAddress(r.gpa)).unwrap();
    vcpu.complete_snp_req_certs(SnpCertsCompletion::ok())
        .unwrap();
    assert_eq!(vcpu.run().unwrap(), io_out(0xe9, &[0x5a]));
}

#[test]
fn overlapping_maps_fail_and_all_regions_reach_the_guest() {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let guest = move |_: &MockCompletion, mem: &GuestMemoryMmap| {
        s.store(
            vm_memory::GuestMemoryBackend::num_regions(mem),
            Ordering::SeqCst,
        );
        VmExit::Hlt
    };
    let hv = MockHypervisor::new().with_guest(0, guest);
    let vm = hv.create_vm(VmType::Default).unwrap();
    vm.map_memory(memory()).unwrap();
    let high = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0x100000), 0x1000)]).unwrap());
    vm.map_memory(high).unwrap();
    let err = vm.map_memory(memory()).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.run().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[test]
fn vcpu_without_a_guest_shuts_down() {
    let hv = MockHypervisor::new();
    let vm = hv.create_vm(VmType::Default).unwrap();
    let mut vcpu = vm.create_vcpu(1).unwrap();
    assert_eq!(vcpu.run().unwrap(), VmExit::Shutdown);
}

/// Launches an SNP VM (start, finish), so its vCPUs may run.
fn launch(vm: &dyn Vm) {
    let snp = vm.snp().unwrap();
    snp.launch_start(crate::DEFAULT_SNP_POLICY).unwrap();
    snp.launch_finish([0; 32]).unwrap();
}

#[test]
fn snp_launch_order_is_enforced() {
    let hv = MockHypervisor::new();
    let default = hv.create_vm(VmType::Default).unwrap();
    assert!(default.snp().is_none());
    let vm = hv.create_vm(VmType::Snp).unwrap();
    let snp = vm.snp().unwrap();
    assert!(matches!(
        snp.launch_update(0, 4096, crate::SnpPageType::Normal),
        Err(HypervisorError::SnpLaunchOrder(_))
    ));
    vm.map_memory(memory()).unwrap();
    snp.launch_start(crate::DEFAULT_SNP_POLICY).unwrap();
    assert!(
        snp.launch_start(crate::DEFAULT_SNP_POLICY).is_err(),
        "twice"
    );
    assert!(
        snp.launch_update(0, 100, crate::SnpPageType::Normal)
            .is_err()
    );
    snp.launch_update(0, 8192, crate::SnpPageType::Zero)
        .unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    assert!(matches!(
        vcpu.run(),
        Err(HypervisorError::SnpLaunchOrder(_))
    ));
    snp.launch_finish([7; 32]).unwrap();
    assert!(
        snp.launch_update(0, 4096, crate::SnpPageType::Normal)
            .is_err()
    );
    vcpu.run().unwrap();
    let events = hv.log().events();
    assert!(events.contains(&MockEvent::SnpLaunchFinish { host_data: [7; 32] }));
}

#[test]
fn a_log_limit_keeps_the_most_recent_events() {
    let hv = MockHypervisor::new().with_log_limit(10);
    let log = hv.log();
    for _ in 0..100 {
        hv.create_vm(VmType::Default).unwrap();
    }
    let events = log.events();
    assert!(!events.is_empty() && events.len() <= 10, "{}", events.len());
    assert!(events.iter().all(|e| *e
        == MockEvent::CreateVm {
            vm_type: VmType::Default
        }));
    // Without a limit, everything is kept.
    let all = MockHypervisor::new();
    for _ in 0..100 {
        all.create_vm(VmType::Default).unwrap();
    }
    assert_eq!(all.log().events().len(), 100);
}
