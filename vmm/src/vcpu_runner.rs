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
//! Nothing else happens between taking the lock and dropping the lease:
//! the lock, the read, the copy into guest memory, completing the exit and
//! the immediate-exit run. Counting, logging and events
//! ([`CertsService::report`]) and the payload's [`RequestObserver`] come
//! only after step 3. The emulated doorbell goes through the very same
//! steps, so the pipeline is exercised end to end on hosts without SNP.

use std::sync::Arc;
use std::time::Duration;

use hypervisor::{
    GuestMemoryMmap, HypervisorError, SnpCertsCompletion, SnpCertsRequest, Vcpu, VmExit,
};
use snp_certs::serve::CertsRequest;
use snp_certs::{CertsReader, Lease};
use vmm_api::error_chain;

use crate::certs_service::{CertsService, RequestSource, Served};
use crate::doorbell::Mailbox;
use crate::exit_dispatch::{ExitAction, VcpuEnd, dispatch};
use crate::payload::{Answered, RequestObserver};
use crate::pio::PioBus;
use crate::shared_pages::SharedPages;
use crate::stop::StopSignal;

/// Why answering an exit failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A hypervisor call failed.
    #[error("Hypervisor call failed")]
    Hypervisor(#[from] HypervisorError),
    /// The guest faulted on memory that could not be converted.
    #[error("Cannot convert {len:#x} bytes at {gpa:#x} the guest faulted on")]
    Conversion {
        /// First address.
        gpa: u64,
        /// Bytes.
        len: u64,
    },
}

/// What a runner shares with its VM.
#[derive(Clone)]
pub struct VcpuShared {
    /// Guest RAM.
    pub memory: Arc<GuestMemoryMmap>,
    /// The VM's certificate service.
    pub certs: Arc<CertsService>,
    /// The VM's stop signal.
    pub stop: Arc<StopSignal>,
    /// The VM's port-I/O devices.
    pub bus: Arc<PioBus>,
    /// Told of each certificate request after its lease is released.
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// Whether the emulated doorbell is enabled.
    pub doorbell: bool,
    /// The hypervisor's VM (for an SNP VM's page conversions).
    pub vm: Arc<dyn hypervisor::Vm>,
    /// On an SNP VM: the pages the guest shared with the host.
    pub shared_pages: Option<Arc<SharedPages>>,
}

impl std::fmt::Debug for VcpuShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuShared")
            .field("doorbell", &self.doorbell)
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

/// One vCPU and its per-vCPU state, run on its own thread.
pub struct VcpuRunner {
    id: u8,
    vcpu: Box<dyn Vcpu>,
    shared: VcpuShared,
    reader: CertsReader,
}

impl VcpuRunner {
    /// A runner for vCPU `id`.
    pub fn new(id: u8, vcpu: Box<dyn Vcpu>, shared: VcpuShared) -> VcpuRunner {
        VcpuRunner {
            id,
            vcpu,
            reader: CertsReader::for_vcpu(shared.stop.flag()),
            shared,
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

    /// An idle vCPU: runs no guest code, waits for the VM to stop.
    pub fn idle(self) -> VcpuEnd {
        self.shared.stop.wait();
        VcpuEnd::Stopped
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
                ExitAction::PioWrite { port, data } => {
                    if !self.shared.bus.write(self.id, port, data) {
                        log::debug!("vcpu {}: OUT to port {port:#x} with no device", self.id);
                    }
                    Ok(None)
                }
                ExitAction::PioRead { port, size } => self.port_in(port, size),
                ExitAction::ConvertPages {
                    gpa,
                    len,
                    private,
                    hypercall,
                } => self.convert(gpa, len, private, hypercall),
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

    /// Answers an `IN` from the port-I/O bus (at most 8 bytes, as an x86
    /// `IN` moves at most 4: nothing to allocate).
    fn port_in(&mut self, port: u16, size: u8) -> Result<Option<VmExit>, RunnerError> {
        let mut buffer = [0u8; 8];
        let data = &mut buffer[..usize::from(size).min(8)];
        self.shared.bus.read(self.id, port, data);
        self.vcpu
            .complete_io_in(data)
            .map(|()| None)
            .map_err(RunnerError::from)
    }

    /// The one handler every request source goes through: answers inside
    /// the lease window, nothing more.
    fn serve(&mut self, request: CertsRequest, source: RequestSource) -> Served {
        let shared_pages = self.shared.shared_pages.as_deref();
        let is_shared = |gpa, len| shared_pages.is_none_or(|pages| pages.is_shared(gpa, len));
        self.shared.certs.serve(
            source,
            &mut self.reader,
            request,
            &*self.shared.memory,
            &is_shared,
        )
    }

    fn answer_kvm(&mut self, request: SnpCertsRequest) -> Result<Option<VmExit>, RunnerError> {
        let request = CertsRequest {
            gpa: request.gpa,
            npages: request.npages,
        };
        let mut served = self.serve(request, RequestSource::Kvm);
        let completed = self.vcpu.complete_snp_req_certs(SnpCertsCompletion {
            ret: served.outcome.ret(),
            npages: served.outcome.npages,
        });
        let lease = served.outcome.lease.take();
        let (next, held) = self.finish(lease, completed.map_err(RunnerError::from));
        self.after_release(&served, held);
        next
    }

    fn answer_doorbell(&mut self, mailbox_gpa: u64) -> Result<Option<VmExit>, RunnerError> {
        let mailbox = match Mailbox::read(&*self.shared.memory, mailbox_gpa) {
            Ok(mailbox) => mailbox,
            Err(e) => {
                log::warn!("vcpu {}: doorbell ignored: {e}", self.id);
                return Ok(None);
            }
        };
        let request = CertsRequest {
            gpa: mailbox.gpa,
            npages: mailbox.npages,
        };
        let mut served = self.serve(request, RequestSource::Doorbell);
        let answered = Mailbox::write_answer(
            &*self.shared.memory,
            mailbox_gpa,
            served.outcome.ret(),
            served.outcome.npages,
        );
        let lease = served.outcome.lease.take();
        let (next, held) = self.finish(lease, Ok(()));
        if let Err(e) = answered {
            log::warn!("vcpu {}: doorbell answer lost: {e}", self.id);
        }
        self.after_release(&served, held);
        next
    }

    /// Converts guest pages between private and shared, as an SNP guest
    /// asked (a page-state change) or touched them (a memory fault).
    fn convert(
        &mut self,
        gpa: u64,
        len: u64,
        private: bool,
        hypercall: bool,
    ) -> Result<Option<VmExit>, RunnerError> {
        let done = match (self.shared.vm.snp(), len) {
            (Some(snp), 1..) => snp
                .set_private(gpa, len, private)
                .map_err(|e| error_chain(&e)),
            _ => Err("not an SNP VM, or an empty or overflowing range".to_owned()),
        };
        if let Err(why) = &done {
            log::warn!(
                "vcpu {}: page conversion of {len:#x} bytes at {gpa:#x} refused: {why}",
                self.id
            );
        }
        if done.is_ok() {
            if let Some(pages) = &self.shared.shared_pages {
                pages.convert(gpa, len, private);
            }
        }
        if hypercall {
            let ret = if done.is_ok() {
                0
            } else {
                libc::EINVAL.unsigned_abs().into()
            };
            self.vcpu.complete_hypercall(ret)?;
        } else if done.is_err() {
            // Running again would fault again.
            return Err(RunnerError::Conversion { gpa, len });
        }
        Ok(None)
    }

    /// What follows the release: the service counts, logs and reports
    /// the answer, then the payload's observer hears of it.
    fn after_release(&self, served: &Served, held: Option<Duration>) {
        self.shared.certs.report(self.id, served, held);
        if let Some(observer) = &self.shared.observer {
            let outcome = &served.outcome;
            observer.answered(&Answered {
                vcpu: self.id,
                request: served.request,
                kind: outcome.kind,
                reason: outcome.reason,
                bytes: outcome.bytes,
            });
        }
    }

    /// Steps 1 to 4 of the lease protocol (see the module docs). Returns
    /// a real exit if the immediate-exit run produced one (KVM does not,
    /// but if it did the exit must still be handled, after the release),
    /// and how long the lease was held, if there was one.
    fn finish(
        &mut self,
        lease: Option<Lease>,
        completed: Result<(), RunnerError>,
    ) -> (Result<Option<VmExit>, RunnerError>, Option<Duration>) {
        let Some(lease) = lease else {
            return (completed.map(|()| None), None);
        };
        if let Err(e) = completed {
            return (Err(e), Some(lease.release()));
        }
        self.vcpu.set_immediate_exit(true);
        let run = self.vcpu.run();
        let held = lease.release();
        self.vcpu.set_immediate_exit(false);
        let next = match run {
            Ok(VmExit::Interrupted) => Ok(None),
            Ok(other) => {
                log::warn!(
                    "vcpu {}: the immediate-exit run returned {other:?}, not EINTR",
                    self.id
                );
                Ok(Some(other))
            }
            Err(e) => Err(RunnerError::from(e)),
        };
        (next, Some(held))
    }
}
