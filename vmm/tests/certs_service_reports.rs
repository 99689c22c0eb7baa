//! What a VM's certificate service tells the operator after each answer:
//! the events (each answer with where it came from, the fallback with
//! its streak, the lease release, configuration changes, the monitor's
//! drop count) and the log (a fault when it starts, named by the answer
//! the guest got, and when it clears; a port write nobody listens to at
//! debug level). Logs are captured per thread, so tests running side by
//! side in one process do not see each other's lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_monitor::{EventMonitor, EventSender};
use hypervisor::mock::{MockCompletion, MockHypervisor};
use hypervisor::{GuestMemoryMmap, Hypervisor, VmExit, VmType};
use serde_json::Value;
use snp_certs::serve::CertsRequest;
use snp_certs::{ActiveCerts, CertKind, CertsConfig, CertsReader, TableBuilder};
use vm_memory::GuestAddress;
use vmm::certs_service::{CertsService, RequestSource};
use vmm::exit_dispatch::VcpuEnd;
use vmm::pio::PioBus;
use vmm::stop::StopSignal;
use vmm::vcpu_runner::{VcpuRunner, VcpuShared};

thread_local! {
    static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
    static DEBUG: Cell<bool> = const { Cell::new(false) };
}

/// Records this thread's log lines; debug lines only while [`DEBUG`] is
/// on for the thread (so `log_enabled!(Debug)` answers per thread).
struct ThreadLog;

impl log::Log for ThreadLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info || DEBUG.with(Cell::get)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            LINES.with(|l| {
                l.borrow_mut()
                    .push((record.level(), record.args().to_string()))
            });
        }
    }

    fn flush(&self) {}
}

static LOGGER: ThreadLog = ThreadLog;

/// Captures this thread's log lines from now on, debug lines if `debug`.
fn capture_logs(debug: bool) {
    // Only the first call in the process installs it; all share it.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
    DEBUG.with(|d| d.set(debug));
    LINES.with(|l| l.borrow_mut().clear());
}

fn logged() -> Vec<(log::Level, String)> {
    LINES.with(|l| l.borrow().clone())
}

/// An event monitor writing into memory.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn events(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn certs_file(dir: &Path) -> std::path::PathBuf {
    let mut vcek = vec![0x5a; 1400];
    vcek[0] = 0x30;
    let mut builder = TableBuilder::new();
    builder.add(CertKind::Vcek, vcek).unwrap();
    let path = dir.join("certs.bin");
    std::fs::write(&path, builder.build().unwrap()).unwrap();
    path
}

fn service(config: CertsConfig, events: EventSender) -> CertsService {
    CertsService::new(
        ActiveCerts::validate(config, Duration::ZERO).unwrap(),
        events,
    )
}

/// Serves one request for vCPU `vcpu` from `source` and reports it, as
/// the runner does.
fn ask(service: &CertsService, vcpu: u8, source: RequestSource, npages: u64) -> Value {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut reader = CertsReader::new();
    let request = CertsRequest {
        gpa: 0x8000,
        npages,
    };
    let mut served = service.serve(source, &mut reader, request, &memory, &|_, _| true);
    let held = served.outcome.lease.take().map(|lease| lease.release());
    service.report(vcpu, &served, held);
    serde_json::json!(served.outcome.kind.as_str())
}

#[test]
fn each_answer_is_an_event_naming_its_source_and_the_release_follows() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    let sink = Sink::default();
    let (monitor, sender) = EventMonitor::start_with_writer(sink.clone(), 64).unwrap();
    let service = service(CertsConfig::with_file(&path), sender);
    ask(&service, 3, RequestSource::Kvm, 1);
    ask(&service, 4, RequestSource::Doorbell, 0);
    std::fs::remove_file(&path).unwrap();
    ask(&service, 5, RequestSource::Kvm, 1);
    monitor.shutdown();
    let events = sink.events();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["delivered", "lease-released", "need-pages", "fallback"]
    );
    let p = |i: usize| &events[i]["properties"];
    assert_eq!(
        (p(0)["vcpu"].as_u64(), p(0)["source"].as_str()),
        (Some(3), Some("kvm"))
    );
    assert_eq!(
        (p(0)["ret"].as_u64(), p(0)["reason"].as_str()),
        (Some(0), Some("served"))
    );
    assert_eq!(p(1)["vcpu"], 3);
    assert!(p(1)["held_us"].is_u64());
    assert_eq!(p(2)["source"], "doorbell");
    assert_eq!(p(2)["reply_npages"], 1);
    assert_eq!(
        (p(3)["reason"].as_str(), p(3)["on_error"].as_str()),
        (Some("file-missing"), Some("empty"))
    );
    assert!(p(3)["busy_streak_ms"].is_u64());
    assert!(p(3)["detail"].as_str().unwrap().contains("does not exist"));
    assert_eq!(service.stats().events_dropped, 0);
}

#[test]
fn a_configuration_change_is_an_event_and_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    let sink = Sink::default();
    let (monitor, sender) = EventMonitor::start_with_writer(sink.clone(), 64).unwrap();
    let service = service(CertsConfig::default(), sender);
    assert_eq!(service.generation(), 0);
    assert_eq!(service.active().config.certs_file, None);
    let now = service
        .update(true, |_| CertsConfig {
            certs_timeout: 250,
            ..CertsConfig::with_file(&path)
        })
        .unwrap();
    assert_eq!(now.config.certs_file.as_deref(), Some(path.as_path()));
    assert_eq!(service.active().config.certs_timeout, 250);
    assert_eq!(service.generation(), 1);
    monitor.shutdown();
    let events = sink.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let p = &events[0]["properties"];
    assert_eq!(events[0]["event"], "config-changed");
    assert_eq!(p["certs_file"], path.to_str().unwrap());
    assert_eq!(p["previous_certs_file"], Value::Null);
    assert_eq!(
        (p["certs_timeout"].as_u64(), p["generation"].as_u64()),
        (Some(250), Some(1))
    );
}

#[test]
fn a_full_event_queue_shows_in_the_counters() {
    // A monitor whose writer never returns: its queue of one fills.
    struct Stuck(std::sync::mpsc::Receiver<()>);
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (unstick, stuck) = std::sync::mpsc::channel();
    let (monitor, sender) = EventMonitor::start_with_writer(Stuck(stuck), 1).unwrap();
    let service = service(CertsConfig::default(), sender);
    for _ in 0..8 {
        ask(&service, 6, RequestSource::Kvm, 1);
    }
    let dropped = service.stats().events_dropped;
    assert!(dropped > 0, "a queue of one took eight events");
    assert_eq!(dropped, monitor.dropped());
    drop(unstick);
    monitor.shutdown();
}

#[test]
fn a_fault_is_logged_when_it_starts_and_when_it_clears() {
    capture_logs(false);
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    let service = service(CertsConfig::with_file(&path), EventSender::disabled());
    let moved = dir.path().join("moved");
    std::fs::rename(&path, &moved).unwrap();
    ask(&service, 7, RequestSource::Kvm, 1);
    ask(&service, 7, RequestSource::Kvm, 1);
    std::fs::rename(&moved, &path).unwrap();
    ask(&service, 7, RequestSource::Kvm, 1);
    let lines = logged();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].0, log::Level::Warn);
    assert!(
        lines[0].1.starts_with(
            "vcpu 7: certificate requests answered with the fallback (on-error=empty), ret 0: file-missing ("
        ),
        "{lines:?}"
    );
    assert_eq!(lines[1].0, log::Level::Warn);
    assert!(
        lines[1]
            .1
            .starts_with("vcpu 7: certificate requests are answered normally again: file-missing cleared after 2 requests over "),
        "{lines:?}"
    );
}

#[test]
fn a_busy_fault_is_logged_as_busy() {
    capture_logs(false);
    let dir = tempfile::tempdir().unwrap();
    let path = certs_file(dir.path());
    let config = CertsConfig {
        certs_timeout: 0,
        ..CertsConfig::with_file(&path)
    };
    let service = service(config, EventSender::disabled());
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    snp_certs::lock::lock(
        &writer,
        snp_certs::lock::LockKind::Exclusive,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(ask(&service, 8, RequestSource::Kvm, 1), "busy");
    let lines = logged();
    assert!(
        lines.iter().any(|(_, l)| l
            .starts_with("vcpu 8: certificate requests answered busy, ret 11: lock-timeout")),
        "{lines:?}"
    );
}

#[test]
fn a_write_to_a_port_without_a_device_is_logged_at_debug_level() {
    capture_logs(true);
    let mut step = 0;
    let hv = MockHypervisor::new().with_guest(0, move |_: &MockCompletion, _: &GuestMemoryMmap| {
        step += 1;
        match step {
            1 => VmExit::IoOut {
                port: 0x5e8,
                data: hypervisor::PioData::from_slice(&[1]),
            },
            _ => VmExit::Hlt,
        }
    });
    let memory =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    let vm: Arc<dyn hypervisor::Vm> = Arc::from(hv.create_vm(VmType::Default).unwrap());
    vm.map_memory(Arc::clone(&memory)).unwrap();
    let shared = VcpuShared {
        memory,
        certs: Arc::new(service(CertsConfig::default(), EventSender::disabled())),
        stop: Arc::new(StopSignal::default()),
        bus: Arc::new(PioBus::new()),
        observer: None,
        doorbell: false,
        vm: Arc::clone(&vm),
        shared_pages: None,
    };
    assert!(format!("{shared:?}").contains("doorbell: false"));
    let end = VcpuRunner::new(9, vm.create_vcpu(0).unwrap(), shared).run();
    assert_eq!(end, VcpuEnd::Halted);
    let lines = logged();
    assert!(
        lines.contains(&(
            log::Level::Debug,
            "vcpu 9: OUT to port 0x5e8 with no device".to_owned()
        )),
        "{lines:?}"
    );
}

#[test]
fn a_vm_whose_requests_never_reach_the_vmm_says_so() {
    let service = service(CertsConfig::default(), EventSender::disabled());
    assert!(service.reaches_vmm());
    service.set_unreachable();
    assert!(!service.reaches_vmm());
    assert_eq!(service.leases_held(), 0);
}
