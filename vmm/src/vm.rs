//! One VM: memory, vCPU threads, lifecycle and what the API shows of it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use std::time::Instant;

use event_monitor::EventSender;
use hypervisor::{GuestMemoryMmap, HypervisorError, VcpuKicker, VmType};
use serde_json::json;
use snp_certs::ActiveCerts;
use vm_memory::GuestAddress;
use vmm_api::{SnpCertsInfo, VcpuInfo, VmConfig, VmInfo, VmState};

use crate::backend::Backend;
use crate::certs_service::CertsService;
use crate::exit_dispatch::VcpuEnd;
use crate::payload::{DeviceContext, Payload, PayloadFactory, VcpuStart};
use crate::pio::PioBus;
use crate::shared_pages::SharedPages;
use crate::snp_launch_sequence;
use crate::stop::StopSignal;
use crate::vcpu_runner::{VcpuRunner, VcpuShared};
use crate::vm_error::VmError;

/// How long a shutdown keeps kicking vCPUs that have not stopped yet
/// before it gives up on them (and logs it).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How often a shutdown kicks a vCPU that has not stopped yet: a kick
/// that landed just before the vCPU entered a blocking call is repeated.
const REKICK_INTERVAL: Duration = Duration::from_millis(2);

/// Event source name of VM lifecycle events.
pub const VM_EVENT_SOURCE: &str = "vm";

/// How each vCPU ended, with a condvar to wait for all of them.
#[derive(Debug, Default)]
struct Ends {
    ends: Mutex<Vec<Option<VcpuEnd>>>,
    changed: Condvar,
}

/// A VM.
pub struct Vm {
    config: VmConfig,
    shared: VcpuShared,
    events: EventSender,
    runners: Vec<(VcpuRunner, VcpuStart)>,
    kickers: Vec<VcpuKicker>,
    threads: Vec<JoinHandle<()>>,
    ends: Arc<Ends>,
    booted: bool,
    shut_down: bool,
    _payload: Option<Box<dyn Payload>>,
    // Dropped last: vCPUs must go before the VM.
    _vm: Arc<dyn hypervisor::Vm>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("config", &self.config).finish()
    }
}

impl Vm {
    /// Creates a VM from `config`: validates it (the certs file included,
    /// waiting up to `snp.startup_wait` for a management tool that holds
    /// its lock), builds and loads the payload, maps memory, creates
    /// vCPUs. Nothing runs yet.
    pub fn create(
        backend: &Backend,
        config: VmConfig,
        events: EventSender,
        payloads: &dyn PayloadFactory,
        cancel: Arc<AtomicBool>,
    ) -> Result<Vm, VmError> {
        config.validate()?;
        let snp = config.platform.sev_snp;
        if snp && !backend.hypervisor().snp_supported() {
            return Err(VmError::Hypervisor(HypervisorError::SnpUnsupported {
                reason: "KVM does not offer the SNP VM type (KVM_X86_SNP_VM): see snp-vmm --check-host",
                source: None,
            }));
        }
        let guest = match config.test_guest() {
            Some(guest) if snp => Some(snp_launch_sequence::with_host_c_bit(
                guest,
                backend.hypervisor(),
            )?),
            other => other.cloned(),
        };
        let payload = guest.map(|guest| payloads.build(&guest)).transpose()?;
        if let Some(payload) = &payload {
            if payload.needs_snp() != snp {
                return Err(VmError::PlatformMismatch {
                    payload: payload.name(),
                    snp: payload.needs_snp(),
                });
            }
            if payload.needs_doorbell() && !config.snp.doorbell {
                return Err(VmError::DoorbellNeeded(payload.name()));
            }
            if config.memory.size < payload.min_memory() {
                return Err(VmError::MemoryTooSmall {
                    payload: payload.name(),
                    size: payload.min_memory(),
                });
            }
        }
        let active = validate_certs(&config, cancel)?;
        let certs = Arc::new(CertsService::new(active, events.clone()));
        let size = usize::try_from(config.memory.size).unwrap_or(usize::MAX);
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)])
                .map_err(VmError::Memory)?,
        );
        if let Some(payload) = &payload {
            payload.load(&memory)?;
        }

        let hv = backend.hypervisor();
        let vm: Arc<dyn hypervisor::Vm> =
            Arc::from(hv.create_vm(if snp { VmType::Snp } else { VmType::Default })?);
        vm.map_memory(Arc::clone(&memory))?;
        if snp && !enable_certs_exit(hv, vm.as_ref(), &config)? {
            certs.set_unreachable();
        }
        let stop = Arc::new(StopSignal::default());
        let mut bus = PioBus::new();
        if let Some(payload) = &payload {
            let ctx = DeviceContext {
                memory: Arc::clone(&memory),
                stop: Arc::clone(&stop),
                events: events.clone(),
            };
            payload.attach(&ctx, &mut bus)?;
        }
        let shared = VcpuShared {
            memory,
            certs,
            stop,
            bus: Arc::new(bus),
            observer: payload.as_ref().and_then(|p| p.observer()),
            doorbell: config.snp.doorbell,
            vm: Arc::clone(&vm),
            shared_pages: snp.then(|| Arc::new(SharedPages::new())),
        };
        let mut runners = Vec::new();
        for id in 0..config.cpus.boot_vcpus {
            if let Some(guest) = payload.as_ref().and_then(|p| p.mock_guest(id)) {
                backend.set_mock_guest(id, guest);
            }
            let mut vcpu = vm.create_vcpu(id)?;
            let start = match &payload {
                Some(payload) => payload.setup_vcpu(id, vcpu.as_mut())?,
                None => VcpuStart::Idle,
            };
            runners.push((VcpuRunner::new(id, vcpu, shared.clone()), start));
        }
        if let Some(launch) = vm.snp() {
            let ranges = payload
                .as_ref()
                .map(|p| p.snp_launch_ranges())
                .unwrap_or_default();
            snp_launch_sequence::launch(
                launch,
                &ranges,
                hypervisor::DEFAULT_SNP_POLICY,
                config.host_data().unwrap_or([0; 32]),
            )?;
        }
        events.event(
            VM_EVENT_SOURCE,
            "created",
            [
                ("vcpus", json!(config.cpus.boot_vcpus)),
                ("memory", json!(config.memory.size)),
                ("hypervisor", json!(backend.name())),
                ("payload", json!(payload.as_ref().map(|p| p.name()))),
                ("certs_file", json!(config.snp.certs_file)),
            ],
        );
        Ok(Vm {
            ends: Arc::new(Ends {
                ends: Mutex::new(vec![None; runners.len()]),
                changed: Condvar::new(),
            }),
            kickers: runners.iter().map(|(r, _)| r.kicker()).collect(),
            config,
            shared,
            events,
            runners,
            threads: Vec::new(),
            booted: false,
            shut_down: false,
            _payload: payload,
            _vm: vm,
        })
    }

    /// Starts one thread per vCPU. If one cannot be started, the ones
    /// already running are stopped and joined before the error returns.
    pub fn boot(&mut self) -> Result<(), VmError> {
        let runners: Vec<(VcpuRunner, VcpuStart)> = self.runners.drain(..).collect();
        for (id, (runner, start)) in runners.into_iter().enumerate() {
            let ends = Arc::clone(&self.ends);
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let end =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match start {
                            VcpuStart::Run => runner.run(),
                            VcpuStart::Idle => runner.idle(),
                        }))
                        .unwrap_or_else(|panic| {
                            let why = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            VcpuEnd::Failed(format!("vCPU thread panicked: {why}"))
                        });
                    let mut all = ends.ends.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(slot) = all.get_mut(id) {
                        *slot = Some(end);
                    }
                    ends.changed.notify_all();
                });
            match spawned {
                Ok(thread) => self.threads.push(thread),
                Err(e) => {
                    self.booted = true;
                    self.shutdown();
                    return Err(VmError::Thread(e));
                }
            }
        }
        self.booted = true;
        self.events.event(
            VM_EVENT_SOURCE,
            "booted",
            [("vcpus", json!(self.threads.len()))],
        );
        Ok(())
    }

    /// Whether every vCPU has ended (after boot).
    pub fn all_ended(&self) -> bool {
        self.booted
            && self
                .ends
                .ends
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .all(Option::is_some)
    }

    /// Waits until every vCPU has ended, or `timeout` passes. Returns
    /// whether they all ended.
    pub fn wait_for_end(&self, timeout: Duration) -> bool {
        let guard = self
            .ends
            .ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .ends
            .changed
            .wait_timeout_while(guard, timeout, |ends| ends.iter().any(Option::is_none))
            .unwrap_or_else(PoisonError::into_inner);
        guard.iter().all(Option::is_some)
    }

    /// Stops every vCPU (kicking it out of the guest), joins the threads
    /// and checks that no lease is left held. Does nothing for a VM never
    /// booted or already shut down.
    pub fn shutdown(&mut self) {
        if !self.booted || self.shut_down {
            return;
        }
        self.shut_down = true;
        self.shared.stop.stop();
        // Kick until every vCPU has ended: a kick that lands after a vCPU
        // checked the stop flag but before it entered KVM_RUN or a lock
        // wait would otherwise be lost and the vCPU sit out its timeout.
        let deadline = Instant::now() + SHUTDOWN_DEADLINE;
        loop {
            self.kick_running();
            if self.wait_for_end(REKICK_INTERVAL) {
                break;
            }
            if Instant::now() >= deadline {
                log::error!("vCPUs still running {SHUTDOWN_DEADLINE:?} after the stop");
                break;
            }
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        let leases = self.shared.certs.leases_held();
        if leases != 0 {
            log::error!("{leases} certificate leases still held after shutdown");
        }
        self.events.event(
            VM_EVENT_SOURCE,
            "shutdown",
            [("leases_held", json!(leases))],
        );
    }

    /// Kicks every vCPU that has not ended.
    fn kick_running(&self) {
        let ends = self
            .ends
            .ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (kicker, end) in self.kickers.iter().zip(ends) {
            if end.is_none() {
                // A vCPU whose thread just ended cannot be kicked; fine.
                if let Err(e) = kicker.kick() {
                    log::debug!("kick: {e}");
                }
            }
        }
    }

    /// Lifecycle state, with Cloud Hypervisor's meaning: `Running` from
    /// boot until the VM is stopped or the guest ends itself. A guest that
    /// executed `hlt` is idle, not gone (as a halted guest in Cloud
    /// Hypervisor stays `Running`); one that shut down, terminated or
    /// failed on every vCPU is `Shutdown`.
    pub fn state(&self) -> VmState {
        if !self.booted {
            return VmState::Created;
        }
        if self.shut_down {
            return VmState::Shutdown;
        }
        let ends = self
            .ends
            .ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let all_ended = ends.iter().all(Option::is_some);
        let guest_ended = ends
            .iter()
            .any(|end| !matches!(end, None | Some(VcpuEnd::Halted)));
        if all_ended && guest_ended {
            VmState::Shutdown
        } else {
            VmState::Running
        }
    }

    /// The certificate service.
    pub fn certs(&self) -> &Arc<CertsService> {
        &self.shared.certs
    }

    /// The configuration the VM was created with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The configuration to create this VM again with, to boot it after a
    /// shutdown: the one it was created with, with the certs configuration
    /// in force now (a `PUT vm.snp-certs` outlives a reboot).
    pub fn reboot_config(&self) -> VmConfig {
        let mut config = self.config.clone();
        let active = self.shared.certs.active();
        let certs = &active.config;
        config.snp.certs_file = certs.certs_file.clone();
        config.snp.certs_timeout = certs.certs_timeout;
        config.snp.busy_budget = certs.busy_budget;
        config.snp.on_error = certs.on_error;
        config.snp.allow_large = certs.allow_large;
        config
    }

    /// The certs configuration and statistics as the API shows them.
    pub fn certs_info(&self) -> SnpCertsInfo {
        certs_info(&self.shared.certs)
    }

    /// What `GET vm.info` shows.
    pub fn info(&self) -> VmInfo {
        let ends = self
            .ends
            .ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let vcpus = ends
            .iter()
            .enumerate()
            .map(|(id, end)| VcpuInfo {
                id: id as u8,
                state: match end {
                    None if !self.booted => "created".to_owned(),
                    None => "running".to_owned(),
                    Some(VcpuEnd::Halted) => "halted".to_owned(),
                    Some(VcpuEnd::GuestShutdown) => "guest-shutdown".to_owned(),
                    Some(VcpuEnd::Stopped) => "stopped".to_owned(),
                    Some(VcpuEnd::Failed(why)) => format!("failed: {why}"),
                    Some(VcpuEnd::GuestTerminated {
                        reason_set,
                        reason_code,
                    }) => format!("terminated by the guest (reason {reason_set}:{reason_code})"),
                },
            })
            .collect();
        drop(ends);
        VmInfo {
            config: self.config.clone(),
            state: self.state(),
            vcpus,
            certs: self.certs_info(),
        }
    }
}

/// The certs configuration and statistics of `certs` as the API shows them.
pub fn certs_info(certs: &CertsService) -> SnpCertsInfo {
    let active = certs.active();
    let config = &active.config;
    SnpCertsInfo {
        certs_file: config.certs_file.clone(),
        certs_timeout: config.certs_timeout,
        busy_budget: config.busy_budget,
        on_error: config.on_error,
        allow_large: config.allow_large,
        requests_reach_vmm: certs.reaches_vmm(),
        generation: certs.generation(),
        warnings: active.warnings.iter().map(ToString::to_string).collect(),
        stats: certs.stats(),
    }
}

/// Enables the certificate exit on a new SNP VM, before any vCPU, when the
/// host supports it: then a certs file can be set at any time. A host
/// without it is said so loudly; its guests get KVM's own empty table, so
/// a certs file is refused. Returns whether the exit is enabled.
fn enable_certs_exit(
    hv: &dyn hypervisor::Hypervisor,
    vm: &dyn hypervisor::Vm,
    config: &VmConfig,
) -> Result<bool, VmError> {
    if hv.snp_req_certs_supported()? {
        vm.enable_snp_req_certs()?;
        return Ok(true);
    }
    log::warn!(
        "this host's KVM has no SNP certificate requests (Linux 7.0+): guests get KVM's empty table"
    );
    if config.snp.certs_file.is_some() {
        return Err(VmError::NoCertsExit);
    }
    Ok(false)
}

/// Validates the certs part of `config` for a new VM. A management tool
/// may hold the file's exclusive lock for an update: then this waits for
/// it, up to `snp.startup_wait` or until `cancel` is set (the VMM is
/// exiting), saying once who holds it.
fn validate_certs(config: &VmConfig, cancel: Arc<AtomicBool>) -> Result<ActiveCerts, VmError> {
    let certs = config.snp.certs_config();
    let wait = Duration::from_millis(config.snp.startup_wait);
    match ActiveCerts::validate(certs.clone(), Duration::ZERO) {
        Err(snp_certs::config::ConfigError::File(e)) if e.is_lock_timeout() && !wait.is_zero() => {
            let path = certs.certs_file.clone().unwrap_or_default();
            let holders = snp_certs::lock::holders(&path).unwrap_or_default();
            let who = if holders.is_empty() {
                "another process".to_owned()
            } else {
                holders
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            log::warn!(
                "waiting up to {} ms for {} to release the exclusive lock on {} (an update in progress)",
                config.snp.startup_wait,
                who,
                path.display()
            );
            Ok(ActiveCerts::validate_cancellable(
                certs,
                wait,
                Some(cancel),
            )?)
        }
        other => Ok(other?),
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
