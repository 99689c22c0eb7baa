//! The test guests' devices: the report and delay ports on the port-I/O
//! bus, and the observer that notes what each vCPU was delivered. Both
//! guests attach the same set ([`ReportDevices`]).
//!
//! The observer runs after the request's lease was released (see
//! [`vmm::payload::RequestObserver`]): reading the guest's buffer back and
//! hashing it never happens while the certs file is locked.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use event_monitor::EventSender;
use hypervisor::GuestMemoryMmap;
use serde_json::json;
use snp_certs::OutcomeKind;
use vm_memory::{Bytes, GuestAddress};
use vmm::payload::{Answered, DeviceContext, PayloadError, RequestObserver};
use vmm::pio::{PioBus, PioDevice};
use vmm::stop::StopSignal;

use crate::attest::expected_report_for;
use crate::report::{DELAY_PORT, PORTS, REPORT_PORT, read_report};
use crate::report_check::{AttestLog, Expected};

/// Event source name of the test guests' reports.
pub const EVENT_SOURCE: &str = "attest-guest";

/// The devices of a test guest's payload, all recording into one log: the
/// report and delay ports ([`GuestPorts`]) and, once attached, the
/// [`DeliveryObserver`] the vCPU loop calls after each answer.
pub struct ReportDevices {
    log: Arc<AttestLog>,
    print_reports: bool,
    observer: OnceLock<Arc<DeliveryObserver>>,
}

impl ReportDevices {
    /// Devices recording into `log` and, if `print_reports`, printing each
    /// report on stdout.
    pub fn new(log: Arc<AttestLog>, print_reports: bool) -> ReportDevices {
        ReportDevices {
            log,
            print_reports,
            observer: OnceLock::new(),
        }
    }

    /// The log the devices record into.
    pub fn log(&self) -> &Arc<AttestLog> {
        &self.log
    }

    /// Puts the ports on `bus` and makes the observer for the VM of `ctx`
    /// (what [`vmm::payload::Payload::attach`] does for a test guest).
    pub fn attach(&self, ctx: &DeviceContext, bus: &mut PioBus) -> Result<(), PayloadError> {
        let ports = GuestPorts::new(
            Arc::clone(&ctx.memory),
            Arc::clone(&ctx.stop),
            ctx.events.clone(),
            Arc::clone(&self.log),
            self.print_reports,
        );
        bus.attach(PORTS.0, PORTS.1, Arc::new(ports))?;
        let observer = DeliveryObserver::new(Arc::clone(&ctx.memory), Arc::clone(&self.log));
        let _ = self.observer.set(Arc::new(observer));
        Ok(())
    }

    /// The observer made by [`Self::attach`], if it ran.
    pub fn observer(&self) -> Option<Arc<dyn RequestObserver>> {
        self.observer
            .get()
            .map(|o| Arc::clone(o) as Arc<dyn RequestObserver>)
    }
}

/// The report and delay ports of one VM.
pub struct GuestPorts {
    memory: Arc<GuestMemoryMmap>,
    stop: Arc<StopSignal>,
    events: EventSender,
    log: Arc<AttestLog>,
    print_reports: bool,
}

impl GuestPorts {
    /// The ports of a VM with guest RAM `memory`, recording into `log` and,
    /// if `print_reports`, printing each report on stdout.
    pub fn new(
        memory: Arc<GuestMemoryMmap>,
        stop: Arc<StopSignal>,
        events: EventSender,
        log: Arc<AttestLog>,
        print_reports: bool,
    ) -> GuestPorts {
        GuestPorts {
            memory,
            stop,
            events,
            log,
            print_reports,
        }
    }

    fn report(&self, vcpu: u8, gpa: u64) {
        let report = match read_report(&*self.memory, gpa) {
            Ok(report) => report,
            Err(e) => {
                log::warn!("vcpu {vcpu}: unreadable guest report at {gpa:#x}: {e}");
                return;
            }
        };
        let record = self
            .log
            .record(vcpu, &report, self.log.last_delivered(vcpu));
        if self.print_reports {
            // A closed stdout must not stop the vCPU.
            let _ = writeln!(std::io::stdout().lock(), "{}", record.line());
        }
        log::info!("{}", record.line());
        self.events.event(
            EVENT_SOURCE,
            "report",
            [
                ("vcpu", json!(vcpu)),
                ("seq", json!(record.report.seq)),
                ("status", json!(record.status)),
                ("ret", json!(record.report.ret)),
                ("entries", json!(record.report.entries)),
                ("table_len", json!(record.report.table_len)),
                ("checksum", json!(record.report.checksum)),
                ("busy_retries", json!(record.report.busy_retries)),
                ("matches", json!(record.matches)),
            ],
        );
    }
}

impl PioDevice for GuestPorts {
    fn write(&self, vcpu: u8, port: u16, data: &[u8]) {
        let Ok(value) = <[u8; 4]>::try_from(data).map(u32::from_le_bytes) else {
            log::warn!(
                "vcpu {vcpu}: {}-byte write to test-guest port {port:#x} (needs 4)",
                data.len()
            );
            return;
        };
        match port {
            REPORT_PORT => self.report(vcpu, u64::from(value)),
            DELAY_PORT => {
                // A stop cuts the pause short; the vCPU loop then sees it.
                self.stop.pause(Duration::from_millis(u64::from(value)));
            }
            _ => log::debug!("vcpu {vcpu}: write to unused test-guest port {port:#x}"),
        }
    }
}

/// Notes what each vCPU was delivered, after the lease is released.
pub struct DeliveryObserver {
    memory: Arc<GuestMemoryMmap>,
    log: Arc<AttestLog>,
}

impl DeliveryObserver {
    /// An observer reading `memory` and noting into `log`.
    pub fn new(memory: Arc<GuestMemoryMmap>, log: Arc<AttestLog>) -> DeliveryObserver {
        DeliveryObserver { memory, log }
    }
}

impl RequestObserver for DeliveryObserver {
    fn answered(&self, answered: &Answered) {
        if answered.kind != OutcomeKind::Delivered || answered.bytes == 0 {
            return;
        }
        let mut bytes = vec![0; answered.bytes];
        if self
            .memory
            .read_slice(&mut bytes, GuestAddress(answered.request.gpa))
            .is_err()
        {
            return;
        }
        if let Ok(expected) = expected_report_for(&bytes) {
            self.log.delivered(answered.vcpu, Expected::from(expected));
        }
    }
}
