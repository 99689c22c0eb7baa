//! The lease window on the mock backend, watched from a second open file
//! description of the certs file (`F_OFD_GETLK`): the shared lock is held
//! when the answer is written, when the immediate-exit run begins and when
//! it returns, with the answer already in place; it is free when the
//! payload's observer hears of the answer and when the guest runs again;
//! and an immediate-exit run that fails still releases it before anything
//! else. For the KVM exit, the doorbell and an SNP guest on the kernel
//! model, whose firmware gets the report request inside that run.
//! (`lease_window_kvm.rs` does the same on `/dev/kvm`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lease_probe;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_monitor::EventSender;
use hypervisor::mock::kernel_model::vmgexit::ghcb;
use hypervisor::mock::{GuestStop, MockCompletion, MockGuest, MockHypervisor, SevCpu, SevGuest};
use hypervisor::{
    DEFAULT_SNP_POLICY, GuestMemoryMmap, Hypervisor, SnpCertsRequest, SnpPageType, Vcpu, VmExit,
    VmType,
};
use lease_probe::{Fault, Probe, ProbedVcpu, Sighting, certs_dir, one_lease, table};
use snp_certs::{ActiveCerts, CertsConfig};
use vm_memory::{Bytes, GuestAddress};
use vmm::certs_service::CertsService;
use vmm::doorbell::DOORBELL_PORT;
use vmm::exit_dispatch::VcpuEnd;
use vmm::pio::PioBus;
use vmm::stop::StopSignal;
use vmm::vcpu_runner::{VcpuRunner, VcpuShared};

const MIB: usize = 1 << 20;
const BUFFER: u64 = 0x10000;
const MAILBOX: u64 = 0x3000;

/// Runs `vcpu` of `vm` (memory `memory`) until it ends, serving
/// `config`, with `probe` as the payload's observer.
fn run(
    vm: Arc<dyn hypervisor::Vm>,
    memory: Arc<GuestMemoryMmap>,
    vcpu: Box<dyn Vcpu>,
    config: CertsConfig,
    probe: &Arc<Probe>,
    doorbell: bool,
) -> (VcpuEnd, Arc<CertsService>) {
    let active = ActiveCerts::validate(config, Duration::ZERO).unwrap();
    let certs = Arc::new(CertsService::new(active, EventSender::disabled()));
    let observer: Arc<dyn vmm::payload::RequestObserver> = Arc::clone(probe) as _;
    let shared = VcpuShared {
        memory,
        certs: Arc::clone(&certs),
        stop: Arc::new(StopSignal::default()),
        bus: Arc::new(PioBus::new()),
        observer: Some(observer),
        doorbell,
        vm,
        shared_pages: None,
    };
    (VcpuRunner::new(0, vcpu, shared).run(), certs)
}

/// A default mock VM with 1 MiB of RAM whose vCPU 0 runs `guest`.
fn default_vm(
    guest: impl MockGuest + 'static,
) -> (Arc<dyn hypervisor::Vm>, Arc<GuestMemoryMmap>, Box<dyn Vcpu>) {
    let hv = MockHypervisor::new().with_guest(0, guest);
    let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB)]).unwrap());
    let vm: Arc<dyn hypervisor::Vm> = Arc::from(hv.create_vm(VmType::Default).unwrap());
    vm.map_memory(Arc::clone(&memory)).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    (vm, memory, vcpu)
}

/// A guest that replays `exits`, then halts.
fn script(exits: Vec<VmExit>) -> impl MockGuest + 'static {
    let exits = Mutex::new(exits.into_iter());
    move |_: &MockCompletion, _: &GuestMemoryMmap| {
        exits.lock().unwrap().next().unwrap_or(VmExit::Hlt)
    }
}

fn read(memory: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
    let mut got = vec![0; len];
    memory.read_slice(&mut got, GuestAddress(gpa)).unwrap();
    got
}

#[test]
fn the_lock_is_held_through_the_immediate_exit_run_of_the_certs_exit() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let request = VmExit::SnpReqCerts(SnpCertsRequest {
        gpa: BUFFER,
        npages: 2,
    });
    let (vm, memory, vcpu) = default_vm(script(vec![request]));
    let probe = Probe::new(&path, None);
    let vcpu = Box::new(ProbedVcpu::new(vcpu, Arc::clone(&probe), Fault::None));
    let config = CertsConfig::with_file(&path);
    let (end, certs) = run(vm, Arc::clone(&memory), vcpu, config, &probe, false);
    assert_eq!(end, VcpuEnd::Halted);
    let mut expected = vec![Sighting::GuestRunEntered { locked: false }];
    expected.extend(one_lease(true, false));
    assert_eq!(probe.seen(), expected);
    assert_eq!(read(&memory, BUFFER, bytes.len()), bytes);
    let stats = certs.stats();
    assert_eq!((stats.leases_held, stats.leases_released), (0, 1));
}

#[test]
fn the_lock_is_held_through_the_immediate_exit_run_of_the_doorbell() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let mut rung = false;
    let guest = move |_: &MockCompletion, mem: &GuestMemoryMmap| {
        if std::mem::replace(&mut rung, true) {
            return VmExit::Hlt;
        }
        for (i, v) in [BUFFER, 2, u64::MAX].into_iter().enumerate() {
            mem.write_obj(v, GuestAddress(MAILBOX + 8 * i as u64))
                .unwrap();
        }
        VmExit::IoOut {
            port: DOORBELL_PORT,
            data: hypervisor::PioData::from_slice(&(MAILBOX as u32).to_le_bytes()),
        }
    };
    let (vm, memory, vcpu) = default_vm(guest);
    let probe = Probe::new(&path, Some((Arc::clone(&memory), MAILBOX)));
    let vcpu = Box::new(ProbedVcpu::new(vcpu, Arc::clone(&probe), Fault::None));
    let config = CertsConfig::with_file(&path);
    let (end, certs) = run(vm, Arc::clone(&memory), vcpu, config, &probe, true);
    assert_eq!(end, VcpuEnd::Halted);
    let mut expected = vec![Sighting::GuestRunEntered { locked: false }];
    expected.extend(one_lease(false, false));
    assert_eq!(probe.seen(), expected);
    assert_eq!(read(&memory, BUFFER, bytes.len()), bytes);
    assert_eq!(read(&memory, MAILBOX + 16, 8), 0u64.to_le_bytes());
    assert_eq!(certs.stats().leases_released, 1);
}

#[test]
fn a_failed_immediate_exit_run_still_releases_the_lease_before_the_report() {
    let (_dir, path) = certs_dir(&table());
    let request = VmExit::SnpReqCerts(SnpCertsRequest {
        gpa: BUFFER,
        npages: 2,
    });
    let (vm, memory, vcpu) = default_vm(script(vec![request]));
    let probe = Probe::new(&path, None);
    let vcpu = Box::new(ProbedVcpu::new(vcpu, Arc::clone(&probe), Fault::LeaseRun));
    let config = CertsConfig::with_file(&path);
    let (end, certs) = run(vm, memory, vcpu, config, &probe, false);
    assert!(
        matches!(&end, VcpuEnd::Failed(why) if why.contains("Bad address")),
        "{end:?}"
    );
    let seen = probe.seen();
    assert_eq!(
        seen[..4],
        [
            Sighting::GuestRunEntered { locked: false },
            Sighting::Completed { locked: true },
            Sighting::LeaseRunEntered {
                locked: true,
                answered: true,
                firmware: false
            },
            Sighting::LeaseRunReturned {
                locked: true,
                firmware: false,
                exit: Err("Failed to run vCPU".into())
            },
        ],
        "{seen:?}"
    );
    // Released (and counted) before the report and the observer, and the
    // guest never ran again.
    assert_eq!(seen[4..], [Sighting::Observed { locked: false }]);
    let stats = certs.stats();
    assert_eq!((stats.leases_held, stats.leases_released), (0, 1));
}

#[test]
fn a_failed_completion_releases_the_lease_before_the_report() {
    let (_dir, path) = certs_dir(&table());
    let request = VmExit::SnpReqCerts(SnpCertsRequest {
        gpa: BUFFER,
        npages: 2,
    });
    let (vm, memory, vcpu) = default_vm(script(vec![request]));
    let probe = Probe::new(&path, None);
    let vcpu = Box::new(ProbedVcpu::new(vcpu, Arc::clone(&probe), Fault::Completion));
    let config = CertsConfig::with_file(&path);
    let (end, certs) = run(vm, memory, vcpu, config, &probe, false);
    assert!(
        matches!(&end, VcpuEnd::Failed(why) if why.contains("SNP certificate request")),
        "{end:?}"
    );
    // No immediate-exit run for a request KVM never took; the lease is
    // released (and counted) before the report and the observer.
    assert_eq!(
        probe.seen(),
        [
            Sighting::GuestRunEntered { locked: false },
            Sighting::Completed { locked: true },
            Sighting::Observed { locked: false },
        ]
    );
    let stats = certs.stats();
    assert_eq!((stats.leases_held, stats.leases_released), (0, 1));
}

/// One step of an SNP guest, ending in a VMGEXIT.
type Step = Box<dyn FnMut(&mut SevCpu, &GuestMemoryMmap) -> GuestStop + Send>;

/// An SNP guest made of steps.
struct Steps(VecDeque<Step>);

impl SevGuest for Steps {
    fn run(&mut self, cpu: &mut SevCpu, memory: &GuestMemoryMmap) -> GuestStop {
        match self.0.pop_front() {
            Some(mut step) => step(cpu, memory),
            None => GuestStop::Fault("no more steps".into()),
        }
    }
}

impl MockGuest for Steps {
    fn next_exit(&mut self, _: &MockCompletion, _: &GuestMemoryMmap) -> VmExit {
        VmExit::Shutdown
    }

    fn sev_guest(&mut self) -> Option<&mut dyn SevGuest> {
        Some(self)
    }
}

const GHCB: u64 = 0x9000;
const REQUEST: u64 = 0xa000;
const RESPONSE: u64 = 0xb000;

/// Registers its GHCB, asks for a report with certificates (an extended
/// guest request whose message is `SNP_MSG_REPORT_REQ`, two pages at
/// `BUFFER`), then asks to be terminated with reason code 7.
fn snp_guest() -> Steps {
    Steps(VecDeque::from([
        Box::new(|cpu: &mut SevCpu, _: &GuestMemoryMmap| {
            // GHCB MSR protocol: register the GHCB's page.
            cpu.ghcb_msr = GHCB | 0x012;
            GuestStop::Vmgexit
        }) as Step,
        Box::new(|cpu: &mut SevCpu, mem: &GuestMemoryMmap| {
            // msg_type of struct snp_guest_msg_hdr: SNP_MSG_REPORT_REQ.
            mem.write_obj(5u8, GuestAddress(REQUEST + 0x34)).unwrap();
            mem.write_slice(&[0xee; 4096], GuestAddress(RESPONSE))
                .unwrap();
            ghcb::write_valid_fields(
                mem,
                GHCB,
                &[
                    (ghcb::SW_EXIT_CODE, 0x8000_0012),
                    (ghcb::SW_EXIT_INFO_1, REQUEST),
                    (ghcb::SW_EXIT_INFO_2, RESPONSE),
                    (ghcb::RAX, BUFFER),
                    (ghcb::RBX, 2),
                ],
            )
            .unwrap();
            cpu.ghcb_msr = GHCB;
            GuestStop::Vmgexit
        }),
        Box::new(|cpu: &mut SevCpu, _: &GuestMemoryMmap| {
            // GHCB MSR protocol: termination, reason set 0, code 7.
            cpu.ghcb_msr = (7 << 16) | 0x100;
            GuestStop::Vmgexit
        }),
    ]))
}

#[test]
fn the_lock_is_held_while_the_kernel_model_sends_the_report_request_to_firmware() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let hv = MockHypervisor::new().with_guest(0, snp_guest());
    let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB)]).unwrap());
    let vm: Arc<dyn hypervisor::Vm> = Arc::from(hv.create_vm(VmType::Snp).unwrap());
    vm.map_memory(Arc::clone(&memory)).unwrap();
    vm.enable_snp_req_certs().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let snp = vm.snp().unwrap();
    snp.launch_start(DEFAULT_SNP_POLICY).unwrap();
    snp.launch_update(0x1000, 0x4000, SnpPageType::Normal)
        .unwrap();
    snp.launch_finish([0; 32]).unwrap();
    // The model's firmware answers the guest request by writing the
    // response page (`snp_handle_guest_req`), which the guest filled.
    let firmware_memory = Arc::clone(&memory);
    let firmware = Box::new(move || {
        firmware_memory
            .read_obj::<u64>(GuestAddress(RESPONSE))
            .unwrap()
            == 0
    });
    let probe = Probe::with_firmware(&path, None, Some(firmware));
    let vcpu = Box::new(ProbedVcpu::new(vcpu, Arc::clone(&probe), Fault::None));
    let config = CertsConfig::with_file(&path);
    let (end, certs) = run(vm, Arc::clone(&memory), vcpu, config, &probe, false);
    assert_eq!(
        end,
        VcpuEnd::GuestTerminated {
            reason_set: 0,
            reason_code: 7
        }
    );
    let mut expected = vec![Sighting::GuestRunEntered { locked: false }];
    expected.extend(one_lease(true, true));
    assert_eq!(probe.seen(), expected);
    assert_eq!(read(&memory, BUFFER, bytes.len()), bytes);
    assert_eq!(certs.stats().leases_released, 1);
    // The report request went to firmware once, with the certificates.
    let info_2: u64 = memory
        .read_obj(GuestAddress(GHCB + ghcb::SW_EXIT_INFO_2))
        .unwrap();
    assert_eq!(
        info_2,
        u64::from(hypervisor::mock::kernel_model::SEV_RET_INVALID_PARAM)
    );
}
