//! The vCPU runner on the mock backend: every exit path and every
//! completion value, and the lease / immediate-exit order, without KVM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_monitor::EventSender;
use hypervisor::mock::{MockCompletion, MockEvent, MockGuest, MockHypervisor, MockLog};
use hypervisor::{
    GuestMemoryMmap, Hypervisor, SnpCertsCompletion, SnpCertsRequest, VmExit, VmType,
};
use snp_certs::lock::{self, LockKind};
use snp_certs::{ActiveCerts, CertKind, CertsConfig, OnError, TableBuilder};
use vm_memory::{Bytes, GuestAddress};
use vmm::certs_service::CertsService;
use vmm::doorbell::{DOORBELL_PORT, Mailbox};
use vmm::exit_dispatch::VcpuEnd;
use vmm::pio::PioBus;
use vmm::stop::StopSignal;
use vmm::vcpu_runner::{VcpuRunner, VcpuShared};

const MIB: usize = 1 << 20;

/// A port no device is attached to.
const UNCLAIMED_PORT: u16 = 0x5e8;

fn table() -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, len) in [
        (CertKind::Vcek, 1400),
        (CertKind::Ask, 1700),
        (CertKind::Ark, 1700),
    ] {
        let mut d = vec![7u8; len];
        d[0] = 0x30;
        b.add(kind, d).unwrap();
    }
    b.build().unwrap()
}

struct Rig {
    log: MockLog,
    memory: Arc<GuestMemoryMmap>,
    certs: Arc<CertsService>,
}

/// A temporary directory with `certs.bin` holding `bytes`.
fn certs_dir(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Runs `guest` on one mock vCPU with `config` until it ends.
fn run_with(config: CertsConfig, guest: impl MockGuest + 'static) -> (Rig, VcpuEnd) {
    let hv = MockHypervisor::new().with_guest(0, guest);
    let log = hv.log();
    let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB)]).unwrap());
    let vm: Arc<dyn hypervisor::Vm> = Arc::from(hv.create_vm(VmType::Default).unwrap());
    vm.map_memory(Arc::clone(&memory)).unwrap();
    let active = ActiveCerts::validate(config, Duration::ZERO).unwrap();
    let certs = Arc::new(CertsService::new(active, EventSender::disabled()));
    let shared = VcpuShared {
        memory: Arc::clone(&memory),
        certs: Arc::clone(&certs),
        stop: Arc::new(StopSignal::default()),
        bus: Arc::new(PioBus::new()),
        observer: None,
        doorbell: true,
        vm: Arc::clone(&vm),
        shared_pages: None,
    };
    let end = VcpuRunner::new(0, vm.create_vcpu(0).unwrap(), shared).run();
    (Rig { log, memory, certs }, end)
}

/// A guest that replays `exits`, then halts.
fn script(exits: Vec<VmExit>) -> impl MockGuest + 'static {
    let exits = Mutex::new(exits.into_iter());
    move |_: &MockCompletion, _: &GuestMemoryMmap| {
        exits.lock().unwrap().next().unwrap_or(VmExit::Hlt)
    }
}

fn req(gpa: u64, npages: u64) -> VmExit {
    VmExit::SnpReqCerts(SnpCertsRequest { gpa, npages })
}

/// How many runs had immediate exit set.
fn immediate_exit_runs(events: &[MockEvent]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e,
                MockEvent::Run {
                    immediate_exit: true,
                    ..
                }
            )
        })
        .count()
}

fn completions(log: &MockLog) -> Vec<SnpCertsCompletion> {
    log.snp_completions(0).into_iter().map(|(_, c)| c).collect()
}

fn exclusive_free(path: &Path) -> bool {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    lock::try_lock(&f, LockKind::Exclusive).unwrap()
}

#[test]
fn req_certs_exit_size_query_then_delivery_with_lease_protocol() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let (rig, end) = run_with(
        CertsConfig::with_file(&path),
        script(vec![req(0x10000, 0), req(0x10000, 2)]),
    );
    assert_eq!(end, VcpuEnd::Halted);
    assert_eq!(
        completions(&rig.log),
        [
            SnpCertsCompletion { ret: 28, npages: 2 },
            SnpCertsCompletion { ret: 0, npages: 2 }
        ]
    );
    let mut got = vec![0; bytes.len()];
    rig.memory
        .read_slice(&mut got, GuestAddress(0x10000))
        .unwrap();
    assert_eq!(got, bytes);

    // After the delivery: immediate exit on, one cut-short run, off again.
    let events = rig.log.events();
    let done = events
        .iter()
        .position(|e| matches!(e, MockEvent::SnpReqCertsCompleted { completion, .. } if completion.ret == 0))
        .unwrap();
    assert_eq!(
        &events[done + 1..done + 5],
        &[
            MockEvent::SetImmediateExit { vcpu: 0, on: true },
            MockEvent::Run {
                vcpu: 0,
                immediate_exit: true
            },
            MockEvent::Exit {
                vcpu: 0,
                exit: VmExit::Interrupted
            },
            MockEvent::SetImmediateExit { vcpu: 0, on: false },
        ]
    );
    // The size answer took no lease, so no immediate-exit run followed it.
    assert_eq!(immediate_exit_runs(&events), 1);
    let stats = rig.certs.stats();
    assert_eq!((stats.leases_held, stats.leases_released), (0, 1));
    assert!(exclusive_free(&path));
}

#[test]
fn lease_is_released_before_the_guest_runs_again() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let probe = path.clone();
    let seen = Arc::new(Mutex::new(None));
    let seen_by_guest = Arc::clone(&seen);
    let mut step = 0;
    let (_rig, end) = run_with(
        CertsConfig::with_file(&path),
        move |last: &MockCompletion, _: &GuestMemoryMmap| {
            step += 1;
            if step == 1 {
                return req(0x10000, 2);
            }
            // The guest's next step: the VMM must have let go of the lock.
            if let MockCompletion::SnpReqCerts {
                completion: Some(c),
                ..
            } = last
            {
                *seen_by_guest.lock().unwrap() = Some((c.ret, exclusive_free(&probe)));
            }
            VmExit::Hlt
        },
    );
    assert_eq!(end, VcpuEnd::Halted);
    assert_eq!(*seen.lock().unwrap(), Some((0, true)));
}

#[test]
fn every_completion_value() {
    let (_dir, path) = certs_dir(&table());
    let (rig, _) = run_with(
        CertsConfig::with_file(&path),
        script(vec![
            req(0x10000, 1),    // too small: ENOSPC 2
            req(0x10001, 2),    // misaligned: EIO
            req(MIB as u64, 2), // outside RAM: EIO
            req(!0xfff, 2),     // overflow: EIO
            req(0x10000, 2),    // delivered: 0
        ]),
    );
    let rets: Vec<_> = completions(&rig.log)
        .iter()
        .map(|c| (c.ret, c.npages))
        .collect();
    assert_eq!(rets, [(28, 2), (5, 2), (5, 2), (5, 2), (0, 2)]);
    let stats = rig.certs.stats();
    assert_eq!(stats.requests.failed, 3);
    assert_eq!(stats.reasons["gpa-misaligned"], 1);
    assert_eq!(stats.reasons["outside-guest-ram"], 1);
    assert_eq!(stats.reasons["buffer-overflows"], 1);
}

#[test]
fn busy_while_another_holder_has_the_lock_then_served() {
    let (_dir, path) = certs_dir(&table());
    let holder = path.clone();
    let mut writer: Option<fs::File> = None;
    let mut step = 0;
    let config = CertsConfig {
        certs_timeout: 20,
        ..CertsConfig::with_file(&path)
    };
    let (rig, _) = run_with(config, move |_: &MockCompletion, _: &GuestMemoryMmap| {
        step += 1;
        match step {
            1 => {
                // A management tool takes the exclusive lock.
                let f = fs::OpenOptions::new().write(true).open(&holder).unwrap();
                lock::lock(&f, LockKind::Exclusive, Duration::ZERO).unwrap();
                writer.replace(f);
                req(0x10000, 2)
            }
            2 => {
                drop(writer.take());
                req(0x10000, 2)
            }
            _ => VmExit::Hlt,
        }
    });
    assert_eq!(
        completions(&rig.log),
        [
            SnpCertsCompletion { ret: 11, npages: 2 },
            SnpCertsCompletion { ret: 0, npages: 2 }
        ]
    );
    let stats = rig.certs.stats();
    assert_eq!(stats.reasons["lock-timeout"], 1);
    assert!(stats.lock_wait_us.max >= 20_000);
}

/// A file that disappears is a persistent fault: the guest gets the empty
/// table at once (ret 0, 24 zero bytes), counted as a fallback; with
/// `on_error = busy` it is told busy instead.
#[test]
fn a_missing_file_gets_the_empty_table_or_busy_as_configured() {
    for (on_error, ret) in [(OnError::Empty, 0), (OnError::Busy, 11)] {
        let (_dir, path) = certs_dir(&table());
        let gone = path.clone();
        let mut step = 0;
        let config = CertsConfig {
            on_error,
            ..CertsConfig::with_file(&path)
        };
        let (rig, _) = run_with(config, move |_: &MockCompletion, mem: &GuestMemoryMmap| {
            step += 1;
            if step == 1 {
                fs::remove_file(&gone).unwrap();
                mem.write_slice(&[0xee; 64], GuestAddress(0x10000)).unwrap();
                return req(0x10000, 2);
            }
            VmExit::Hlt
        });
        assert_eq!(
            completions(&rig.log),
            [SnpCertsCompletion { ret, npages: 2 }]
        );
        let stats = rig.certs.stats();
        assert_eq!(stats.reasons["file-missing"], 1);
        assert_eq!(stats.fallbacks["file-missing"], 1);
        let mut got = [0u8; 32];
        rig.memory
            .read_slice(&mut got, GuestAddress(0x10000))
            .unwrap();
        if on_error == OnError::Empty {
            assert_eq!(&got[..24], &[0; 24], "the empty table");
            assert_eq!(&got[24..], &[0xee; 8], "nothing more");
        } else {
            assert_eq!(got, [0xee; 32], "busy writes nothing");
        }
    }
}

#[test]
fn no_certs_file_serves_an_empty_table() {
    let (rig, _) = run_with(
        CertsConfig::default(),
        script(vec![req(0x10000, 0), req(0x10000, 1)]),
    );
    assert_eq!(
        completions(&rig.log),
        [
            SnpCertsCompletion { ret: 0, npages: 0 },
            SnpCertsCompletion { ret: 0, npages: 1 }
        ]
    );
    let mut got = [1u8; 24];
    rig.memory
        .read_slice(&mut got, GuestAddress(0x10000))
        .unwrap();
    assert_eq!(got, [0; 24]);
    assert_eq!(rig.certs.stats().leases_released, 0, "no file, no lease");
}

#[test]
fn doorbell_answers_through_the_mailbox_with_the_same_lease_protocol() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let mut step = 0;
    let (rig, end) = run_with(
        CertsConfig::with_file(&path),
        move |_: &MockCompletion, mem: &GuestMemoryMmap| {
            step += 1;
            let ring = |npages: u64| {
                for (i, v) in [0x10000u64, npages, u64::MAX].iter().enumerate() {
                    mem.write_slice(&v.to_le_bytes(), GuestAddress(0x3000 + 8 * i as u64))
                        .unwrap();
                }
                VmExit::IoOut {
                    port: DOORBELL_PORT,
                    data: hypervisor::PioData::from_slice(&0x3000u32.to_le_bytes()),
                }
            };
            match step {
                1 => ring(0),
                2 => {
                    let m = Mailbox::read(mem, 0x3000).unwrap();
                    assert_eq!((m.ret, m.npages), (28, 2));
                    ring(m.npages)
                }
                3 => {
                    let m = Mailbox::read(mem, 0x3000).unwrap();
                    assert_eq!((m.ret, m.npages), (0, 2));
                    VmExit::IoOut {
                        port: UNCLAIMED_PORT,
                        data: hypervisor::PioData::from_slice(&1u32.to_le_bytes()),
                    }
                }
                _ => VmExit::Hlt,
            }
        },
    );
    assert_eq!(end, VcpuEnd::Halted);
    let events = rig.log.events();
    assert_eq!(
        immediate_exit_runs(&events),
        1,
        "one lease, one immediate-exit run"
    );
    assert!(
        completions(&rig.log).is_empty(),
        "the doorbell never touches the KVM exit"
    );
    assert_eq!(rig.certs.stats().leases_released, 1);
    let mut got = vec![0; bytes.len()];
    rig.memory
        .read_slice(&mut got, GuestAddress(0x10000))
        .unwrap();
    assert_eq!(got, bytes);
}

#[test]
fn io_in_gets_all_ones_and_unknown_exits_fail_the_vcpu() {
    let (rig, end) = run_with(
        CertsConfig::default(),
        script(vec![
            VmExit::IoIn {
                port: 0x60,
                size: 2,
            },
            VmExit::Other("mmio write".into()),
        ]),
    );
    assert!(
        matches!(end, VcpuEnd::Failed(ref why) if why.contains("mmio")),
        "{end:?}"
    );
    assert!(rig.log.events().contains(&MockEvent::IoInCompleted {
        vcpu: 0,
        port: 0x60,
        data: vec![0xff, 0xff]
    }));
}

/// A vCPU whose certificate completions fail (as `KVM_RUN` preconditions
/// or a bad `ret` could make them), recording whether the certs file was
/// still locked by the VMM at that moment.
struct FailingCompletion {
    inner: Box<dyn hypervisor::Vcpu>,
    path: PathBuf,
    locked_at_failure: Arc<Mutex<Option<bool>>>,
}

impl hypervisor::Vcpu for FailingCompletion {
    fn setup_real_mode(&mut self, entry: u64) -> Result<(), hypervisor::HypervisorError> {
        self.inner.setup_real_mode(entry)
    }

    fn setup_long_mode(
        &mut self,
        entry: u64,
        page_table: u64,
    ) -> Result<(), hypervisor::HypervisorError> {
        self.inner.setup_long_mode(entry, page_table)
    }

    fn run(&mut self) -> Result<VmExit, hypervisor::HypervisorError> {
        self.inner.run()
    }

    fn complete_io_in(&mut self, data: &[u8]) -> Result<(), hypervisor::HypervisorError> {
        self.inner.complete_io_in(data)
    }

    fn complete_snp_req_certs(
        &mut self,
        _c: SnpCertsCompletion,
    ) -> Result<(), hypervisor::HypervisorError> {
        *self.locked_at_failure.lock().unwrap() = Some(!exclusive_free(&self.path));
        Err(hypervisor::HypervisorError::NoPendingExit(
            "SNP certificate request",
        ))
    }

    fn complete_hypercall(&mut self, ret: u64) -> Result<(), hypervisor::HypervisorError> {
        self.inner.complete_hypercall(ret)
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.inner.set_immediate_exit(on);
    }

    fn kicker(&self) -> hypervisor::VcpuKicker {
        self.inner.kicker()
    }
}

#[test]
fn the_lease_is_released_when_completing_the_exit_fails() {
    let bytes = table();
    let (_dir, path) = certs_dir(&bytes);
    let hv = MockHypervisor::new().with_guest(0, script(vec![req(0x10000, 2)]));
    let log = hv.log();
    let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB)]).unwrap());
    let vm: Arc<dyn hypervisor::Vm> = Arc::from(hv.create_vm(VmType::Default).unwrap());
    vm.map_memory(Arc::clone(&memory)).unwrap();
    let active = ActiveCerts::validate(CertsConfig::with_file(&path), Duration::ZERO).unwrap();
    let certs = Arc::new(CertsService::new(active, EventSender::disabled()));
    let shared = VcpuShared {
        memory: Arc::clone(&memory),
        certs: Arc::clone(&certs),
        stop: Arc::new(StopSignal::default()),
        bus: Arc::new(PioBus::new()),
        observer: None,
        doorbell: false,
        vm: Arc::clone(&vm),
        shared_pages: None,
    };
    let locked_at_failure = Arc::new(Mutex::new(None));
    let vcpu = Box::new(FailingCompletion {
        inner: vm.create_vcpu(0).unwrap(),
        path: path.clone(),
        locked_at_failure: Arc::clone(&locked_at_failure),
    });
    let end = VcpuRunner::new(0, vcpu, shared).run();
    match &end {
        VcpuEnd::Failed(why) => assert!(why.contains("SNP certificate request"), "{why}"),
        other => panic!("expected the vCPU to fail, got {other:?}"),
    }
    // The answer was a delivery under the lease, which was still held when
    // the completion failed...
    assert_eq!(*locked_at_failure.lock().unwrap(), Some(true));
    // ...and released through the service (counted), with no
    // immediate-exit run for a request KVM never took.
    let stats = certs.stats();
    assert_eq!((stats.leases_held, stats.leases_released), (0, 1));
    assert_eq!(immediate_exit_runs(&log.events()), 0);
    assert!(exclusive_free(&path));
}
