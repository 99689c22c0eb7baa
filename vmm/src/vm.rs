//! One VM: memory, vCPU threads, lifecycle and what the API shows of it.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use api_server::types::{PayloadConfig, SnpCertsInfo, VcpuInfo, VmConfig, VmInfo, VmState};
use event_monitor::EventSender;
use hypervisor::{GuestMemoryMmap, HypervisorError, VcpuKicker, VmType};
use serde_json::json;
use vm_memory::{Bytes, GuestAddress};

use crate::attest::AttestLog;
use crate::backend::Backend;
use crate::certs_service::CertsService;
use crate::exit_dispatch::VcpuEnd;
use crate::guest::{self, AttestParams};
use crate::stop::StopSignal;
use crate::vcpu_runner::{VcpuRunner, VcpuShared};

/// Where vCPUs other than 0 start: a single `hlt` (0xf4).
const HALT_STUB_GPA: u64 = 0x500;

/// Event source name of VM lifecycle events.
pub const VM_EVENT_SOURCE: &str = "vm";

/// Why a VM could not be created or booted.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is structurally invalid.
    #[error("Invalid VM configuration")]
    Config(#[from] api_server::types::ConfigError),
    /// The certs configuration was refused.
    #[error("Invalid certs configuration")]
    Certs(#[from] snp_certs::config::ConfigError),
    /// The attestation guest needs the doorbell on this host.
    #[error(
        "The attest payload needs snp doorbell=on: this VM has no other way to ask for certificates"
    )]
    DoorbellNeeded,
    /// Memory is too small for the guest.
    #[error("Memory size must be at least {0} bytes for the attest payload")]
    MemoryTooSmall(u64),
    /// Guest memory could not be allocated.
    #[error("Cannot allocate guest memory")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    /// The guest program could not be built.
    #[error("Cannot build the guest program")]
    GuestProgram(#[source] guest::GuestError),
    /// The guest program could not be copied into guest memory.
    #[error("Cannot load the guest program")]
    GuestLoad(#[source] vm_memory::GuestMemoryError),
    /// A hypervisor call failed.
    #[error("Hypervisor call failed")]
    Hypervisor(#[from] HypervisorError),
    /// A vCPU thread could not be started.
    #[error("Cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
}

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
    runners: Vec<VcpuRunner>,
    kickers: Vec<VcpuKicker>,
    threads: Vec<JoinHandle<()>>,
    ends: Arc<Ends>,
    booted: bool,
    shut_down: bool,
    // Dropped last: vCPUs must go before the VM.
    _vm: Box<dyn hypervisor::Vm>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("config", &self.config).finish()
    }
}

fn attest_params(config: &VmConfig) -> AttestParams {
    match &config.payload {
        PayloadConfig::Attest {
            requests,
            interval_ms,
        } => AttestParams {
            requests: *requests,
            interval_ms: *interval_ms,
            ..AttestParams::default()
        },
    }
}

impl Vm {
    /// Creates a VM from `config`: validates it (the certs file included),
    /// maps memory, loads the guest, creates vCPUs. Nothing runs yet.
    pub fn create(
        backend: &Backend,
        config: VmConfig,
        events: EventSender,
        print_reports: bool,
    ) -> Result<Vm, VmError> {
        config.validate()?;
        if !config.snp.doorbell {
            return Err(VmError::DoorbellNeeded);
        }
        if config.memory.size < guest::MIN_MEMORY {
            return Err(VmError::MemoryTooSmall(guest::MIN_MEMORY));
        }
        let certs = Arc::new(CertsService::new(
            config.snp.certs_config(),
            events.clone(),
        )?);
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), config.memory.size as usize)])
                .map_err(VmError::Memory)?,
        );
        let params = attest_params(&config);
        let code = guest::program(&params).map_err(VmError::GuestProgram)?;
        memory
            .write_slice(&code, GuestAddress(guest::CODE_GPA))
            .map_err(VmError::GuestLoad)?;
        memory
            .write_slice(&[0xf4], GuestAddress(HALT_STUB_GPA))
            .map_err(VmError::GuestLoad)?;

        let hv = backend.hypervisor();
        let vm = hv.create_vm(VmType::Default)?;
        vm.map_memory(Arc::clone(&memory))?;
        let shared = VcpuShared {
            memory,
            certs,
            stop: Arc::new(StopSignal::default()),
            attest: Arc::new(AttestLog::default()),
            events: events.clone(),
            doorbell: config.snp.doorbell,
            print_reports,
        };
        let mut runners = Vec::new();
        for id in 0..config.cpus.boot {
            let first = id == 0;
            backend.install_mock_guest(id, first.then_some(params));
            let mut vcpu = vm.create_vcpu(id)?;
            vcpu.setup_real_mode(if first {
                guest::CODE_GPA
            } else {
                HALT_STUB_GPA
            })?;
            runners.push(VcpuRunner::new(id, vcpu, shared.clone()));
        }
        events.event(
            VM_EVENT_SOURCE,
            "created",
            [
                ("vcpus", json!(config.cpus.boot)),
                ("memory", json!(config.memory.size)),
                ("hypervisor", json!(backend.name())),
                ("certs_file", json!(config.snp.certs_file)),
            ],
        );
        Ok(Vm {
            ends: Arc::new(Ends {
                ends: Mutex::new(vec![None; runners.len()]),
                changed: Condvar::new(),
            }),
            kickers: runners.iter().map(VcpuRunner::kicker).collect(),
            config,
            shared,
            runners,
            threads: Vec::new(),
            booted: false,
            shut_down: false,
            _vm: vm,
        })
    }

    /// Starts one thread per vCPU. If one cannot be started, the ones
    /// already running are stopped and joined before the error returns.
    pub fn boot(&mut self) -> Result<(), VmError> {
        let runners: Vec<VcpuRunner> = self.runners.drain(..).collect();
        for (id, runner) in runners.into_iter().enumerate() {
            let ends = Arc::clone(&self.ends);
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let end =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run()))
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
        self.shared.events.event(
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
        for kicker in &self.kickers {
            // A vCPU whose thread already ended cannot be kicked; fine.
            if let Err(e) = kicker.kick() {
                log::debug!("kick: {e}");
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
        self.shared.events.event(
            VM_EVENT_SOURCE,
            "shutdown",
            [("leases_held", json!(leases))],
        );
    }

    /// Lifecycle state.
    pub fn state(&self) -> VmState {
        if !self.booted {
            VmState::Created
        } else if self.shut_down || self.all_ended() {
            VmState::Shutdown
        } else {
            VmState::Running
        }
    }

    /// The certificate service.
    pub fn certs(&self) -> &Arc<CertsService> {
        &self.shared.certs
    }

    /// The attestation guest's reports.
    pub fn attest(&self) -> &Arc<AttestLog> {
        &self.shared.attest
    }

    /// The configuration the VM was created with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The certs configuration and statistics as the API shows them.
    pub fn certs_info(&self) -> SnpCertsInfo {
        let certs = &self.shared.certs;
        let config = certs.config();
        SnpCertsInfo {
            certs_file: config.certs_file.clone(),
            certs_timeout: config.certs_timeout,
            generation: certs.generation(),
            warnings: certs.warnings(),
            stats: certs.stats(),
        }
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

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
