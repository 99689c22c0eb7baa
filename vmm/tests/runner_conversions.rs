//! An SNP guest's page conversions through the vCPU runner, on the mock
//! backend: a page-state change (`KVM_HC_MAP_GPA_RANGE`) is applied to the
//! VM (`KVM_SET_MEMORY_ATTRIBUTES`) and to the pages the VMM may write,
//! then answered 0; one the VM cannot apply is answered `EINVAL`; a memory
//! fault that cannot be converted ends the vCPU, since running again
//! would fault again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_monitor::EventSender;
use hypervisor::mock::{MockCompletion, MockEvent, MockHypervisor, MockLog};
use hypervisor::{
    DEFAULT_SNP_POLICY, GuestMemoryMmap, Hypervisor, SnpPageType, Vm, VmExit, VmType,
};
use snp_certs::{ActiveCerts, CertsConfig};
use vm_memory::GuestAddress;
use vmm::certs_service::CertsService;
use vmm::exit_dispatch::VcpuEnd;
use vmm::pio::PioBus;
use vmm::shared_pages::SharedPages;
use vmm::stop::StopSignal;
use vmm::vcpu_runner::{VcpuRunner, VcpuShared};

/// Runs `exits` (then `hlt`) on vCPU 0 of a mock VM of `vm_type` (an SNP
/// VM is launched first), tracking shared pages; returns how the vCPU
/// ended, the mock's log and the shared pages.
fn run(vm_type: VmType, exits: Vec<VmExit>) -> (VcpuEnd, MockLog, Arc<SharedPages>) {
    let exits = Mutex::new(exits.into_iter());
    let hv = MockHypervisor::new().with_guest(0, move |_: &MockCompletion, _: &GuestMemoryMmap| {
        exits.lock().unwrap().next().unwrap_or(VmExit::Hlt)
    });
    let log = hv.log();
    let memory =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let vm: Arc<dyn Vm> = Arc::from(hv.create_vm(vm_type).unwrap());
    vm.map_memory(Arc::clone(&memory)).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    if let Some(snp) = vm.snp() {
        snp.launch_start(DEFAULT_SNP_POLICY).unwrap();
        snp.launch_update(0x1000, 0x1000, SnpPageType::Normal)
            .unwrap();
        snp.launch_finish([0; 32]).unwrap();
    }
    let pages = Arc::new(SharedPages::new());
    let active = ActiveCerts::validate(CertsConfig::default(), Duration::ZERO).unwrap();
    let shared = VcpuShared {
        memory,
        certs: Arc::new(CertsService::new(active, EventSender::disabled())),
        stop: Arc::new(StopSignal::default()),
        bus: Arc::new(PioBus::new()),
        observer: None,
        doorbell: false,
        vm,
        shared_pages: Some(Arc::clone(&pages)),
    };
    (VcpuRunner::new(0, vcpu, shared).run(), log, pages)
}

fn hypercall_answers(log: &MockLog) -> Vec<u64> {
    log.events()
        .into_iter()
        .filter_map(|e| match e {
            MockEvent::HypercallCompleted { ret, .. } => Some(ret),
            _ => None,
        })
        .collect()
}

#[test]
fn a_page_state_change_is_applied_then_answered() {
    let (end, log, pages) = run(
        VmType::Snp,
        vec![
            VmExit::MapGpaRange {
                gpa: 0x20000,
                npages: 2,
                private: false,
            },
            VmExit::MapGpaRange {
                gpa: 0x21000,
                npages: 1,
                private: true,
            },
        ],
    );
    assert_eq!(end, VcpuEnd::Halted);
    assert_eq!(hypercall_answers(&log), [0, 0]);
    assert!(pages.is_shared(0x20000, 0x1000));
    assert!(!pages.is_shared(0x21000, 0x1000), "made private again");
}

#[test]
fn a_change_the_vm_cannot_apply_is_answered_einval_and_changes_nothing() {
    let exits = vec![
        // Overflowing: converted to nothing.
        VmExit::MapGpaRange {
            gpa: u64::MAX - 0xfff,
            npages: 2,
            private: false,
        },
    ];
    let (end, log, _) = run(VmType::Snp, exits);
    assert_eq!(end, VcpuEnd::Halted);
    assert_eq!(hypercall_answers(&log), [libc::EINVAL as u64]);
    // Not an SNP VM: nothing to convert.
    let page = vec![VmExit::MapGpaRange {
        gpa: 0x20000,
        npages: 1,
        private: false,
    }];
    let (end, log, pages) = run(VmType::Default, page);
    assert_eq!(end, VcpuEnd::Halted);
    assert_eq!(hypercall_answers(&log), [libc::EINVAL as u64]);
    assert!(!pages.is_shared(0x20000, 0x1000));
}

#[test]
fn a_memory_fault_is_converted_or_ends_the_vcpu() {
    let fault = VmExit::MemoryFault {
        gpa: 0x20000,
        size: 0x1000,
        private: false,
    };
    let (end, log, pages) = run(VmType::Snp, vec![fault.clone()]);
    assert_eq!(end, VcpuEnd::Halted);
    assert!(pages.is_shared(0x20000, 0x1000));
    assert!(
        hypercall_answers(&log).is_empty(),
        "a fault is no hypercall"
    );
    let (end, _, _) = run(VmType::Default, vec![fault]);
    assert!(
        matches!(&end, VcpuEnd::Failed(why) if why.contains("Cannot convert 0x1000 bytes at 0x20000")),
        "{end:?}"
    );
}
