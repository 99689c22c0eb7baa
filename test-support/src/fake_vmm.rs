//! A test double for the VMM and helpers to start the real server on a
//! socket in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_server::{ApiClient, ApiServer};
use snp_certs_types::CertsConfig;
use snp_certs_types::{OutcomeKind, Reason};
use vmm_api::{
    ApiError, PingResponse, SnpCertsInfo, VcpuInfo, VmConfig, VmCounters, VmInfo, VmState,
    VmmAction, VmmApi, VmmData,
};

/// A gate calls wait at while it is closed.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Gate {
    /// Closes the gate: later calls of [`Gate::pass`] wait.
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    /// Opens the gate, letting every waiting call through.
    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.changed.notify_all();
    }

    /// Returns once the gate is open.
    pub fn pass(&self) {
        let closed = self.closed.lock().unwrap();
        drop(self.changed.wait_while(closed, |c| *c).unwrap());
    }
}

/// A fake VMM: one VM with a lifecycle, a certs configuration that is
/// replaced only if the new file exists, and fixed counters. Deleting
/// without a VM succeeds, as in Cloud Hypervisor; creating answers the
/// configuration's warnings.
#[derive(Default)]
pub struct FakeVmm {
    /// The VM, the certs configuration and whether the VMM was shut down.
    pub state: Mutex<FakeState>,
    /// Every action received, in order.
    pub actions: Mutex<Vec<VmmAction>>,
    /// While set, `vm.shutdown` blocks until it is cleared (a slow VMM
    /// call the test controls, rather than one that sleeps).
    pub hold_shutdown: Gate,
}

/// What the fake VMM holds.
#[derive(Default)]
pub struct FakeState {
    /// The VM, once created, with its state.
    pub vm: Option<(VmConfig, VmState)>,
    /// The certs configuration.
    pub certs: CertsConfig,
    /// How many times the certs configuration was replaced.
    pub generation: u64,
    /// Whether `vmm.shutdown` was called.
    pub vmm_shutdown: bool,
}

/// The fixed counters the fake VMM reports: one size query and one
/// delivery of 4096 bytes.
pub fn counters() -> VmCounters {
    let mut c = VmCounters::default();
    c.record(OutcomeKind::NeedPages, Reason::SizeQuery);
    c.record(OutcomeKind::Delivered, Reason::Served);
    c.bytes_delivered = 4096;
    c.lock_wait_us.count = 1;
    c.lock_wait_us.max = 12;
    c.leases_released = 1;
    c
}

impl FakeVmm {
    fn certs_info(state: &FakeState) -> SnpCertsInfo {
        SnpCertsInfo {
            certs_file: state.certs.certs_file.clone(),
            certs_timeout: state.certs.certs_timeout,
            busy_budget: state.certs.busy_budget,
            on_error: state.certs.on_error,
            allow_large: state.certs.allow_large,
            requests_reach_vmm: true,
            generation: state.generation,
            warnings: Vec::new(),
            stats: counters(),
        }
    }
}

impl VmmApi for FakeVmm {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ApiError> {
        self.actions.lock().unwrap().push(action.clone());
        let no_vm = || ApiError::not_found("No VM has been created");
        if action == VmmAction::ShutdownVm {
            self.hold_shutdown.pass();
        }
        let mut s = self.state.lock().unwrap();
        match action {
            VmmAction::Ping => Ok(VmmData::Ping(PingResponse {
                build_version: "0.1.0-test".into(),
                version: "0.1.0".into(),
                features: vec!["mock".into()],
                pid: std::process::id(),
                hypervisor: "mock".into(),
                snp_req_certs_supported: false,
            })),
            VmmAction::ShutdownVmm => {
                s.vmm_shutdown = true;
                Ok(VmmData::Empty)
            }
            VmmAction::CreateVm(config) => {
                if s.vm.is_some() {
                    return Err(ApiError::conflict("A VM already exists"));
                }
                s.certs = config.snp.certs_config();
                let warnings = config.warnings();
                s.vm = Some((*config, VmState::Created));
                Ok(VmmData::with_warnings(warnings))
            }
            VmmAction::BootVm => match &mut s.vm {
                None => Err(no_vm()),
                Some((_, state @ VmState::Created)) => {
                    *state = VmState::Running;
                    Ok(VmmData::Empty)
                }
                Some((_, state)) => Err(ApiError::conflict(format!(
                    "The VM is {state:?}, not Created"
                ))),
            },
            VmmAction::VmInfo => {
                let (config, state) = s.vm.clone().ok_or_else(no_vm)?;
                let vcpus = (0..config.cpus.boot_vcpus)
                    .map(|id| VcpuInfo {
                        id,
                        state: "running".into(),
                    })
                    .collect();
                Ok(VmmData::VmInfo(Box::new(VmInfo {
                    config,
                    state,
                    vcpus,
                    certs: Self::certs_info(&s),
                })))
            }
            VmmAction::ShutdownVm => match &mut s.vm {
                None => Err(no_vm()),
                Some((_, state)) => {
                    *state = VmState::Shutdown;
                    Ok(VmmData::Empty)
                }
            },
            VmmAction::DeleteVm => {
                s.vm = None;
                Ok(VmmData::Empty)
            }
            VmmAction::GetSnpCerts => {
                s.vm.as_ref().ok_or_else(no_vm)?;
                Ok(VmmData::SnpCerts(Box::new(Self::certs_info(&s))))
            }
            VmmAction::PutSnpCerts(update) => {
                s.vm.as_ref().ok_or_else(no_vm)?;
                let new = update.apply(&s.certs);
                if let Some(path) = &new.certs_file {
                    if !path.is_file() {
                        return Err(ApiError::bad_request(format!(
                            "certs-file {} is missing or not a regular file",
                            path.display()
                        )));
                    }
                }
                s.certs = new;
                s.generation += 1;
                Ok(VmmData::SnpCerts(Box::new(Self::certs_info(&s))))
            }
            VmmAction::VmCounters => {
                s.vm.as_ref().ok_or_else(no_vm)?;
                Ok(VmmData::Counters(counters().counter_map()))
            }
        }
    }
}

/// A running server with its fake VMM in a temporary directory.
pub struct Harness {
    /// Declared first so it is dropped (shut down) before the directory.
    pub server: Option<ApiServer>,
    /// The temporary directory holding the socket.
    pub dir: tempfile::TempDir,
    /// The API socket.
    pub socket: PathBuf,
    /// The fake VMM behind the server.
    pub vmm: Arc<FakeVmm>,
}

impl Harness {
    /// Starts the server with a new fake VMM on `api.sock` in a new
    /// temporary directory.
    pub fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let vmm = Arc::new(FakeVmm::default());
        let server = ApiServer::start(&socket, vmm.clone()).unwrap();
        Harness {
            dir,
            socket,
            vmm,
            server: Some(server),
        }
    }

    /// A client of the server, with a 10 s limit per call.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.socket)
            .unwrap()
            .with_timeout(Duration::from_secs(10))
    }

    /// Creates and boots a VM with defaults.
    pub fn boot(&self) {
        let client = self.client();
        client.create_vm(&VmConfig::default()).unwrap();
        client.boot_vm().unwrap();
    }

    /// `name` in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Writes a file to use as a certs file (the fake VMM checks only that it
/// exists).
pub fn write_file(path: &Path) {
    std::fs::write(path, b"certs").unwrap();
}
