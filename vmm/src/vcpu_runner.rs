//! The vCPU loop: run, dispatch each exit, answer certificate requests,
//! and release each lease exactly after KVM has completed the request.
//!
//! # The lease protocol
//!
//! A delivered answer comes with a [`Lease`], the shared lock on the certs
//! file. The VMM must hold it until KVM has passed the guest's report
//! request to the firmware, so that no firmware or key update can happen
//! between copying the certificates and signing the report. KVM does that
//! when the vCPU next enters `KVM_RUN`, before running guest code. So after
//! writing the answer, the runner:
//!
//! 1. sets `immediate_exit`,
//! 2. runs the vCPU: KVM completes the request, then returns `EINTR`
//!    ([`VmExit::Interrupted`]) without running the guest,
//! 3. drops the lease, whatever that run returned,
//! 4. clears `immediate_exit` and carries on.
//!
//! The emulated doorbell goes through the very same steps, so the pipeline
//! is exercised end to end on hosts without SNP.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use event_monitor::EventSender;
use hypervisor::{
    GuestMemoryMmap, HypervisorError, SnpCertsCompletion, SnpCertsRequest, Vcpu, VmExit,
};
use serde_json::json;
use snp_certs::serve::{CertsRequest, Outcome, OutcomeKind, error_chain};
use snp_certs::{CertsReader, Lease};
use vm_memory::{Bytes, GuestAddress};

use crate::attest::{AttestLog, Expected};
use crate::certs_service::{CertsService, RequestSource};
use crate::doorbell::Mailbox;
use crate::exit_dispatch::{ExitAction, VcpuEnd, dispatch};
use crate::guest;
use crate::stop::StopSignal;

/// Why answering an exit failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A hypervisor call failed.
    #[error("Hypervisor call failed")]
    Hypervisor(#[from] HypervisorError),
}

/// What a runner shares with its VM.
#[derive(Debug, Clone)]
pub struct VcpuShared {
    /// Guest RAM.
    pub memory: Arc<GuestMemoryMmap>,
    /// The VM's certificate service.
    pub certs: Arc<CertsService>,
    /// The VM's stop signal.
    pub stop: Arc<StopSignal>,
    /// Reports of the attestation guest.
    pub attest: Arc<AttestLog>,
    /// Event stream.
    pub events: EventSender,
    /// Whether the emulated doorbell is enabled.
    pub doorbell: bool,
    /// Whether to print each guest report on stdout.
    pub print_reports: bool,
}

/// One vCPU and its per-vCPU state, run on its own thread.
pub struct VcpuRunner {
    id: u8,
    vcpu: Box<dyn Vcpu>,
    shared: VcpuShared,
    reader: CertsReader,
    last_delivered: Option<Expected>,
}

impl VcpuRunner {
    /// A runner for vCPU `id`.
    pub fn new(id: u8, vcpu: Box<dyn Vcpu>, shared: VcpuShared) -> VcpuRunner {
        VcpuRunner {
            id,
            vcpu,
            reader: CertsReader::with_cancel(shared.stop.flag()),
            shared,
            last_delivered: None,
        }
    }

    /// The vCPU's kicker.
    pub fn kicker(&self) -> hypervisor::VcpuKicker {
        self.vcpu.kicker()
    }

    /// Runs until the guest halts, the VM is stopped or something fails.
    pub fn run(mut self) -> VcpuEnd {
        let end = self.run_loop();
        match &end {
            VcpuEnd::Failed(why) => log::error!("vcpu {}: {why}", self.id),
            other => log::info!("vcpu {}: {other:?}", self.id),
        }
        end
    }

    fn run_loop(&mut self) -> VcpuEnd {
        // An exit the lease run returned, to handle before running again.
        let mut pending: Option<VmExit> = None;
        loop {
            if self.shared.stop.is_stopped() {
                return VcpuEnd::Stopped;
            }
            let exit = match pending.take().map_or_else(|| self.vcpu.run(), Ok) {
                Ok(exit) => exit,
                Err(e) => return VcpuEnd::Failed(error_chain(&e)),
            };
            let handled = match dispatch(&exit, self.shared.doorbell) {
                ExitAction::ServeCerts(request) => self.answer_kvm(request),
                ExitAction::RingDoorbell { mailbox } => self.answer_doorbell(mailbox),
                ExitAction::GuestReport { gpa } => {
                    self.take_report(gpa);
                    Ok(None)
                }
                ExitAction::Pause { ms } => {
                    if self.shared.stop.pause(Duration::from_millis(u64::from(ms))) {
                        return VcpuEnd::Stopped;
                    }
                    Ok(None)
                }
                ExitAction::AnswerIoIn { size } => self
                    .vcpu
                    .complete_io_in(&vec![0xff; usize::from(size)])
                    .map(|()| None)
                    .map_err(RunnerError::from),
                ExitAction::Continue => Ok(None),
                ExitAction::Ignore(why) => {
                    log::warn!("vcpu {}: ignored: {why}", self.id);
                    Ok(None)
                }
                ExitAction::End(end) => return end,
            };
            match handled {
                Ok(next) => pending = next,
                Err(e) => return VcpuEnd::Failed(error_chain(&e)),
            }
        }
    }

    /// The one handler every request source goes through.
    fn serve(&mut self, request: CertsRequest, source: RequestSource) -> Outcome {
        let outcome = self.shared.certs.serve(
            self.id,
            source,
            &mut self.reader,
            request,
            &*self.shared.memory,
        );
        if outcome.kind == OutcomeKind::Delivered && outcome.bytes > 0 {
            self.last_delivered = self.delivered_bytes(request.gpa, outcome.bytes);
        }
        outcome
    }

    /// What a correct guest must report for the bytes just written.
    fn delivered_bytes(&self, gpa: u64, len: usize) -> Option<Expected> {
        let mut bytes = vec![0; len];
        self.shared
            .memory
            .read_slice(&mut bytes, GuestAddress(gpa))
            .ok()?;
        guest::expected_report_for(&bytes).ok().map(Expected::from)
    }

    fn answer_kvm(&mut self, request: SnpCertsRequest) -> Result<Option<VmExit>, RunnerError> {
        let outcome = self.serve(
            CertsRequest {
                gpa: request.gpa,
                npages: request.npages,
            },
            RequestSource::Kvm,
        );
        let completed = self.vcpu.complete_snp_req_certs(SnpCertsCompletion {
            ret: outcome.ret(),
            npages: outcome.npages,
        });
        self.finish(outcome.lease, completed.map_err(RunnerError::from))
    }

    fn answer_doorbell(&mut self, mailbox_gpa: u64) -> Result<Option<VmExit>, RunnerError> {
        let mailbox = match Mailbox::read(&*self.shared.memory, mailbox_gpa) {
            Ok(mailbox) => mailbox,
            Err(e) => {
                log::warn!("vcpu {}: doorbell ignored: {e}", self.id);
                return Ok(None);
            }
        };
        let outcome = self.serve(
            CertsRequest {
                gpa: mailbox.gpa,
                npages: mailbox.npages,
            },
            RequestSource::Doorbell,
        );
        if let Err(e) = Mailbox::write_answer(
            &*self.shared.memory,
            mailbox_gpa,
            outcome.ret(),
            outcome.npages,
        ) {
            log::warn!("vcpu {}: doorbell answer lost: {e}", self.id);
        }
        self.finish(outcome.lease, Ok(()))
    }

    /// Steps 1 to 4 of the lease protocol (see the module docs). Returns
    /// a real exit if the immediate-exit run produced one (KVM does not,
    /// but if it did the exit must still be handled, after the release).
    fn finish(
        &mut self,
        lease: Option<Lease>,
        completed: Result<(), RunnerError>,
    ) -> Result<Option<VmExit>, RunnerError> {
        let Some(lease) = lease else {
            return completed.map(|()| None);
        };
        if let Err(e) = completed {
            self.release(lease);
            return Err(e);
        }
        self.vcpu.set_immediate_exit(true);
        let run = self.vcpu.run();
        self.release(lease);
        self.vcpu.set_immediate_exit(false);
        match run? {
            VmExit::Interrupted => Ok(None),
            other => {
                log::warn!(
                    "vcpu {}: the immediate-exit run returned {other:?}, not EINTR",
                    self.id
                );
                Ok(Some(other))
            }
        }
    }

    fn release(&self, lease: Lease) {
        let held = lease.release();
        self.shared.certs.lease_released(self.id, held);
    }

    fn take_report(&mut self, gpa: u64) {
        let report = match guest::read_report(&*self.shared.memory, gpa) {
            Ok(report) => report,
            Err(e) => {
                log::warn!("vcpu {}: unreadable guest report: {e}", self.id);
                return;
            }
        };
        let record = self
            .shared
            .attest
            .record(self.id, &report, self.last_delivered);
        if self.shared.print_reports {
            // A closed stdout must not stop the vCPU (a full pipe still
            // blocks it: reports go to stdout only in command-line runs).
            let _ = writeln!(std::io::stdout().lock(), "{}", record.line());
        }
        log::info!("{}", record.line());
        self.shared.events.event(
            "attest-guest",
            "report",
            [
                ("vcpu", json!(self.id)),
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
