//! The lease window on `/dev/kvm` (tests named `kvm_*`: where it is not
//! usable, `scripts/test.sh` leaves them out and counts them as skipped;
//! run anyway, they fail). A real-mode guest rings the emulated doorbell;
//! the runner answers through the mailbox and makes the immediate-exit
//! `KVM_RUN`. Seen from a second open file description of the certs file
//! (`F_OFD_GETLK`): the lock is held with the answer in the mailbox when
//! that run enters KVM, still held when KVM returns `EINTR`, and free when
//! the payload hears of the answer and when the guest runs on.
//!
//! What this can and cannot see: the probe looks just before the runner's
//! thread enters `KVM_RUN` and just after it leaves, on that thread, so
//! nothing else on it can release the lease in between; the lock is held
//! for the whole run. It does not look inside the kernel: on a host
//! without SNP the immediate-exit run completes the `OUT` and sends
//! nothing to firmware (the kernel model's test in `lease_window.rs`
//! sees the firmware get the request inside that run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lease_probe;

use std::sync::Arc;
use std::time::Duration;

use event_monitor::EventSender;
use hypervisor::kvm::KvmHypervisor;
use hypervisor::{GuestMemoryMmap, Hypervisor, Vcpu, VmType};
use lease_probe::{Fault, Probe, ProbedVcpu, Sighting, certs_dir, one_lease, table};
use snp_certs::{ActiveCerts, CertsConfig};
use vm_memory::{Bytes, GuestAddress};
use vmm::certs_service::CertsService;
use vmm::exit_dispatch::VcpuEnd;
use vmm::pio::PioBus;
use vmm::stop::StopSignal;
use vmm::vcpu_runner::{VcpuRunner, VcpuShared};

const ENTRY: u64 = 0x1000;
const MAILBOX: u64 = 0x3000;
const BUFFER: u64 = 0x10000;

/// Rings the doorbell with the mailbox at 0x3000, then halts.
const DOORBELL_GUEST: [u8; 12] = [
    0xba, 0xe0, 0x05, //                   mov dx, 0x5e0     (the doorbell)
    0x66, 0xb8, 0x00, 0x30, 0x00, 0x00, // mov eax, 0x3000   (the mailbox)
    0x66, 0xef, //                         out dx, eax
    0xf4, //                               hlt
];

fn kvm() -> KvmHypervisor {
    KvmHypervisor::new().unwrap_or_else(|e| {
        panic!("this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e})")
    })
}

#[test]
fn kvm_the_lock_is_held_through_the_immediate_exit_run_of_the_doorbell() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let hv = kvm();
    let memory =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    memory
        .write_slice(&DOORBELL_GUEST, GuestAddress(ENTRY))
        .unwrap();
    for (i, v) in [BUFFER, 2, u64::MAX].into_iter().enumerate() {
        memory
            .write_obj(v, GuestAddress(MAILBOX + 8 * i as u64))
            .unwrap();
    }
    let vm: Arc<dyn hypervisor::Vm> = Arc::from(hv.create_vm(VmType::Default).unwrap());
    vm.map_memory(Arc::clone(&memory)).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.setup_real_mode(ENTRY).unwrap();
    let probe = Probe::new(&path, Some((Arc::clone(&memory), MAILBOX)));
    let vcpu: Box<dyn Vcpu> = Box::new(ProbedVcpu::new(vcpu, Arc::clone(&probe), Fault::None));

    let active = ActiveCerts::validate(CertsConfig::with_file(&path), Duration::ZERO).unwrap();
    let certs = Arc::new(CertsService::new(active, EventSender::disabled()));
    let observer: Arc<dyn vmm::payload::RequestObserver> = Arc::clone(&probe) as _;
    let shared = VcpuShared {
        memory: Arc::clone(&memory),
        certs: Arc::clone(&certs),
        stop: Arc::new(StopSignal::default()),
        bus: Arc::new(PioBus::new()),
        observer: Some(observer),
        doorbell: true,
        vm,
        shared_pages: None,
    };
    let end = VcpuRunner::new(0, vcpu, shared).run();
    assert_eq!(end, VcpuEnd::Halted);

    // KVM returned EINTR from the immediate-exit run (one_lease says so),
    // with the lock held on entry and on return.
    let mut expected = vec![Sighting::GuestRunEntered { locked: false }];
    expected.extend(one_lease(false, false));
    assert_eq!(probe.seen(), expected);
    let mut got = vec![0; bytes.len()];
    memory.read_slice(&mut got, GuestAddress(BUFFER)).unwrap();
    assert_eq!(got, bytes);
    let ret: u64 = memory.read_obj(GuestAddress(MAILBOX + 16)).unwrap();
    assert_eq!(ret, 0);
    let stats = certs.stats();
    assert_eq!((stats.leases_held, stats.leases_released), (0, 1));
}
