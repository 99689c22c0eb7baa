//! The VMM's side of the API: one VM at most, driven by [`VmmAction`]s.
//!
//! The API server calls [`Vmm::handle`] from its blocking pool; a mutex
//! serialises actions on the VM. Certificate configuration changes go
//! through the VM's [`crate::certs_service::CertsService`], which swaps the
//! configuration atomically with respect to requests in flight.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use api_server::types::{
    ApiError, PingResponse, SnpCertsUpdate, VmConfig, VmState, VmmAction, VmmApi, VmmData,
};
use event_monitor::EventSender;
use serde_json::json;
use snp_certs::CertsFileError;
use snp_certs::config::ConfigError;
use snp_certs::lock::LockError;
use snp_certs::serve::error_chain;

use crate::backend::Backend;
use crate::vm::{VM_EVENT_SOURCE, Vm, VmError};

/// The VMM: a backend and at most one VM.
#[derive(Debug)]
pub struct Vmm {
    backend: Backend,
    snp_req_certs_supported: bool,
    events: EventSender,
    print_reports: bool,
    vm: Mutex<Option<Vm>>,
    exit_requested: Mutex<bool>,
    exit_wake: Condvar,
}

fn vm_error(e: VmError) -> ApiError {
    match e {
        VmError::Config(_)
        | VmError::Certs(_)
        | VmError::DoorbellNeeded
        | VmError::MemoryTooSmall(_) => ApiError::bad_request(error_chain(&e)),
        VmError::Memory(_)
        | VmError::GuestProgram(_)
        | VmError::GuestLoad(_)
        | VmError::Hypervisor(_)
        | VmError::Thread(_) => ApiError::internal(error_chain(&e)),
    }
}

/// A refused certs configuration: 409 while a management tool holds or
/// replaces the file (try again), 500 for host faults, 400 for everything
/// wrong with the input.
fn config_error(e: ConfigError) -> ApiError {
    let message = error_chain(&e);
    match e {
        ConfigError::File(CertsFileError::Lock {
            source: LockError::Timeout { .. },
            ..
        })
        | ConfigError::File(CertsFileError::KeepsChanging { .. }) => {
            ApiError::conflict(format!("{message} (an update is in progress: retry)"))
        }
        ConfigError::File(CertsFileError::Lock { .. } | CertsFileError::Read { .. }) => {
            ApiError::internal(message)
        }
        ConfigError::TimeoutTooLarge(_)
        | ConfigError::RelativePath(_)
        | ConfigError::File(
            CertsFileError::Missing { .. }
            | CertsFileError::Open { .. }
            | CertsFileError::NotRegular { .. }
            | CertsFileError::TooLarge { .. }
            | CertsFileError::Invalid { .. },
        ) => ApiError::bad_request(message),
    }
}

fn no_vm() -> ApiError {
    ApiError::not_found("No VM: create one with PUT /api/v1/vm.create")
}

impl Vmm {
    /// A VMM on `backend`.
    pub fn new(backend: Backend, events: EventSender, print_reports: bool) -> Vmm {
        let snp_req_certs_supported = backend
            .hypervisor()
            .snp_req_certs_supported()
            .unwrap_or(false);
        Vmm {
            backend,
            snp_req_certs_supported,
            events,
            print_reports,
            vm: Mutex::new(None),
            exit_requested: Mutex::new(false),
            exit_wake: Condvar::new(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn vm(&self) -> MutexGuard<'_, Option<Vm>> {
        self.vm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the VM, or fails with 404.
    pub fn with_vm<T>(
        &self,
        f: impl FnOnce(&mut Vm) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match self.vm().as_mut() {
            Some(vm) => f(vm),
            None => Err(no_vm()),
        }
    }

    /// Creates the VM.
    pub fn create_vm(&self, config: VmConfig) -> Result<(), ApiError> {
        let mut slot = self.vm();
        if slot.is_some() {
            return Err(ApiError::conflict("A VM already exists: delete it first"));
        }
        let vm = Vm::create(
            &self.backend,
            config,
            self.events.clone(),
            self.print_reports,
        )
        .map_err(vm_error)?;
        *slot = Some(vm);
        Ok(())
    }

    /// Boots the VM.
    pub fn boot_vm(&self) -> Result<(), ApiError> {
        self.with_vm(|vm| match vm.state() {
            VmState::Created => vm.boot().map_err(vm_error),
            state => Err(ApiError::conflict(format!(
                "The VM is {state:?}: only a created VM can boot"
            ))),
        })
    }

    /// Applies a certs update. The new file is validated (under its shared
    /// lock, waiting at most the timeout) without holding the VMM's lock, so
    /// other API calls go on meanwhile; the swap itself is atomic.
    fn put_snp_certs(&self, update: SnpCertsUpdate) -> Result<VmmData, ApiError> {
        let certs = self.with_vm(|vm| Ok(Arc::clone(vm.certs())))?;
        let result = match (&update.certs_file, update.certs_timeout) {
            // A new (or the same, named again) file: validate it.
            (Some(_), _) => certs
                .replace_with(|current| update.apply(current))
                .map(drop),
            (None, Some(timeout)) => certs.set_timeout(timeout),
            (None, None) => Ok(()),
        };
        result.map_err(config_error)?;
        self.with_vm(|vm| Ok(VmmData::SnpCerts(Box::new(vm.certs_info()))))
    }

    /// Asks the process to exit (after `vmm.shutdown`).
    pub fn request_exit(&self) {
        if let Some(mut vm) = self.vm().take() {
            vm.shutdown();
            self.events.event(VM_EVENT_SOURCE, "deleted", []);
        }
        *self
            .exit_requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.exit_wake.notify_all();
    }

    /// Blocks until [`Vmm::request_exit`].
    pub fn wait_for_exit_request(&self) {
        let guard = self
            .exit_requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _guard = self
            .exit_wake
            .wait_while(guard, |requested| !*requested)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

impl VmmApi for Vmm {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ApiError> {
        match action {
            VmmAction::Ping => Ok(VmmData::Ping(PingResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                hypervisor: self.backend.name().to_owned(),
                snp_req_certs_supported: self.snp_req_certs_supported,
            })),
            VmmAction::ShutdownVmm => {
                self.request_exit();
                Ok(VmmData::Empty)
            }
            VmmAction::CreateVm(config) => self.create_vm(*config).map(|()| VmmData::Empty),
            VmmAction::BootVm => self.boot_vm().map(|()| VmmData::Empty),
            VmmAction::VmInfo => self.with_vm(|vm| Ok(VmmData::VmInfo(Box::new(vm.info())))),
            VmmAction::ShutdownVm => self.with_vm(|vm| match vm.state() {
                VmState::Running => {
                    vm.shutdown();
                    Ok(VmmData::Empty)
                }
                state => Err(ApiError::conflict(format!(
                    "The VM is {state:?}: only a running VM can shut down"
                ))),
            }),
            VmmAction::DeleteVm => {
                let mut vm = self.vm().take().ok_or_else(no_vm)?;
                vm.shutdown();
                self.events
                    .event(VM_EVENT_SOURCE, "deleted", [("vcpus", json!(0))]);
                Ok(VmmData::Empty)
            }
            VmmAction::GetSnpCerts => {
                self.with_vm(|vm| Ok(VmmData::SnpCerts(Box::new(vm.certs_info()))))
            }
            VmmAction::PutSnpCerts(update) => self.put_snp_certs(update),
            VmmAction::VmCounters => {
                self.with_vm(|vm| Ok(VmmData::Counters(Box::new(vm.certs().stats()))))
            }
        }
    }
}
