//! The VMM's implementation of [`VmmApi`]: one VM at most, driven by
//! [`VmmAction`]s, with Cloud Hypervisor's lifecycle.
//!
//! The states and transitions are Cloud Hypervisor's (`vmm/src/lib.rs`,
//! `vm.rs` there), as the API shows them ([`VmState`]):
//!
//! | action | no VM | `Created` | `Running` | `Shutdown` |
//! | --- | --- | --- | --- | --- |
//! | `vm.create` | `Created` | 409 | 409 | 409 |
//! | `vm.boot` | 404 | `Running` | 409 | `Running` (created anew) |
//! | `vm.shutdown` | 404 | 409 | `Created` | 409 |
//! | `vm.delete` | 204, no VM | no VM | no VM (shut down first) | no VM |
//!
//! Where Cloud Hypervisor answers a wrong state with 500, this VMM
//! answers 409 (the client's request, not the VMM, is at fault).
//! Cloud Hypervisor's `vm.create` only stores the configuration and
//! `vm.boot` builds the VM; here `vm.create` builds it (so that the certs
//! file is validated, and a `PUT vm.snp-certs` can come before the boot),
//! and a VM that ran before is built anew from its configuration when it
//! boots again. After `vm.shutdown` the stopped VM is kept, reported as
//! `Created` as Cloud Hypervisor reports it, so that its counters and
//! certs configuration can still be read and changed; `Shutdown` is a VM
//! whose vCPUs all ended without being asked.
//!
//! The API server calls [`Vmm::handle`] from its blocking pool; a mutex
//! serialises actions on the VM. Certificate configuration changes go
//! through the VM's [`crate::certs_service::CertsService`], which swaps the
//! configuration atomically with respect to requests in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use event_monitor::EventSender;
use serde_json::json;
use snp_certs::CertsFileError;
use snp_certs::config::ConfigError;
use snp_certs::lock::LockError;
use vmm_api::{
    ApiError, ApiErrorKind, FEATURE_SEV_SNP, FEATURE_SNP_REQ_CERTS, PingResponse, SnpCertsUpdate,
    VmConfig, VmState, VmmAction, VmmApi, VmmData,
};

use crate::backend::Backend;
use crate::payload::PayloadFactory;
use crate::vm::{VM_EVENT_SOURCE, Vm, certs_info};
use crate::vm_error::VmError;

/// The VMM: a backend, the payloads it can run, and at most one VM.
pub struct Vmm {
    backend: Backend,
    snp_req_certs_supported: bool,
    events: EventSender,
    payloads: Arc<dyn PayloadFactory>,
    /// Set once the VMM is exiting: ends a VM creation's start-up wait.
    exiting: Arc<AtomicBool>,
    vm: Mutex<Option<Slot>>,
    exit_requested: Mutex<bool>,
    exit_wake: Condvar,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The VM, and whether `vm.shutdown` stopped it.
struct Slot {
    vm: Vm,
    /// Shut down through the API: reported as `Created`, as Cloud
    /// Hypervisor reports a VM it shut down (it keeps the configuration
    /// and drops the instance).
    stopped: bool,
}

impl Slot {
    fn new(vm: Vm) -> Slot {
        Slot { vm, stopped: false }
    }

    /// The state the API shows.
    fn state(&self) -> VmState {
        if self.stopped {
            VmState::Created
        } else {
            self.vm.state()
        }
    }
}

fn vm_error(e: VmError) -> ApiError {
    match e {
        VmError::Certs(certs) => config_error(certs),
        VmError::Config(_)
        | VmError::PlatformMismatch { .. }
        | VmError::Hypervisor(hypervisor::HypervisorError::SnpUnsupported { .. })
        | VmError::Payload(_)
        | VmError::DoorbellNeeded(_)
        | VmError::NoCertsExit
        | VmError::MemoryTooSmall { .. } => ApiError::from_error(ApiErrorKind::BadRequest, &e),
        VmError::Memory(_) | VmError::Hypervisor(_) | VmError::Thread(_) => {
            ApiError::from_error(ApiErrorKind::Internal, &e)
        }
    }
}

/// A refused certs configuration: 409 while a management tool holds or
/// replaces the file (try again), everywhere (start-up and `PUT
/// vm.snp-certs` alike); 500 only when the lock call itself fails; 400 for
/// everything wrong with the value the client gave (a path that is
/// missing, unreadable, not a regular file, on procfs or sysfs, or not a
/// valid table).
fn config_error(e: ConfigError) -> ApiError {
    let kind = match e {
        ConfigError::File(CertsFileError::Lock {
            source: LockError::Timeout { .. },
            ..
        })
        | ConfigError::File(CertsFileError::KeepsChanging { .. })
        | ConfigError::UpdateConflict { .. } => {
            let mut error = ApiError::from_error(ApiErrorKind::Conflict, &e);
            error
                .chain
                .push("An update is in progress: retry".to_owned());
            return error;
        }
        ConfigError::File(CertsFileError::Lock {
            source: LockError::Cancelled { .. },
            ..
        }) => {
            let mut error = ApiError::from_error(ApiErrorKind::Conflict, &e);
            error.chain.push("The VMM is exiting".to_owned());
            return error;
        }
        // The lock call itself failed: the host's fault, not the path's.
        ConfigError::File(CertsFileError::Lock { .. }) => ApiErrorKind::Internal,
        // The client named a file that cannot be read: its value at fault.
        ConfigError::Settings(_)
        | ConfigError::TooLargeForGuests { .. }
        | ConfigError::File(
            CertsFileError::Missing { .. }
            | CertsFileError::Open { .. }
            | CertsFileError::Read { .. }
            | CertsFileError::NotRegular { .. }
            | CertsFileError::TooLarge { .. }
            | CertsFileError::Invalid { .. },
        ) => ApiErrorKind::BadRequest,
    };
    ApiError::from_error(kind, &e)
}

fn no_vm() -> ApiError {
    ApiError::not_found("No VM: create one with PUT /api/v1/vm.create")
}

impl Vmm {
    /// A VMM on `backend` that runs the payloads `payloads` builds.
    pub fn new(backend: Backend, events: EventSender, payloads: Arc<dyn PayloadFactory>) -> Vmm {
        let snp_req_certs_supported = backend
            .hypervisor()
            .snp_req_certs_supported()
            .unwrap_or(false);
        Vmm {
            backend,
            snp_req_certs_supported,
            events,
            payloads,
            exiting: Arc::new(AtomicBool::new(false)),
            vm: Mutex::new(None),
            exit_requested: Mutex::new(false),
            exit_wake: Condvar::new(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn vm(&self) -> MutexGuard<'_, Option<Slot>> {
        self.vm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the VM, or fails with 404.
    pub fn with_vm<T>(
        &self,
        f: impl FnOnce(&mut Vm) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match self.vm().as_mut() {
            Some(slot) => f(&mut slot.vm),
            None => Err(no_vm()),
        }
    }

    /// The flag that says the VMM is exiting; set it (as a SIGINT handler
    /// does) to end a VM creation that waits for the certs file.
    pub fn exiting(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.exiting)
    }

    /// Builds a VM from `config` on this VMM's backend, payloads and
    /// event stream; the caller installs it.
    fn build_vm(&self, config: VmConfig) -> Result<Vm, ApiError> {
        Vm::create(
            &self.backend,
            config,
            self.events.clone(),
            self.payloads.as_ref(),
            Arc::clone(&self.exiting),
        )
        .map_err(vm_error)
    }

    /// Creates the VM and returns the warnings about the Cloud Hypervisor
    /// settings of `config` it ignores (also logged). The VMM's lock is not
    /// held while the VM is built (its start-up wait for the certs file
    /// may be long), so other API calls answer meanwhile; a second
    /// creation racing this one gets 409.
    pub fn create_vm(&self, config: VmConfig) -> Result<Vec<String>, ApiError> {
        let exists = || ApiError::conflict("A VM already exists: delete it first");
        if self.vm().is_some() {
            return Err(exists());
        }
        let warnings = config.warnings();
        let vm = self.build_vm(config)?;
        let mut slot = self.vm();
        if slot.is_some() {
            return Err(exists());
        }
        *slot = Some(Slot::new(vm));
        for warning in &warnings {
            log::warn!("vm.create: {warning}");
        }
        Ok(warnings)
    }

    /// Boots the VM. A VM that ran before (shut down through the API, or
    /// whose vCPUs all ended) is created again from its configuration
    /// (with the certs configuration in force) and booted, as Cloud
    /// Hypervisor does; the new VM's counters start from zero. As in
    /// [`Vmm::create_vm`], the VMM's lock is not held while the new VM is
    /// built.
    pub fn boot_vm(&self) -> Result<(), ApiError> {
        let config = {
            let mut slot = self.vm();
            let Some(slot) = slot.as_mut() else {
                return Err(no_vm());
            };
            match slot.state() {
                VmState::Created if !slot.stopped => return slot.vm.boot().map_err(vm_error),
                VmState::Running | VmState::Paused => {
                    return Err(ApiError::conflict(
                        "The VM is Running: shut it down before booting it again",
                    ));
                }
                VmState::Created | VmState::Shutdown => {
                    // Stop whatever is left (vCPUs that ended on their
                    // own) before its replacement exists.
                    slot.vm.shutdown();
                    slot.vm.reboot_config()
                }
            }
        };
        let mut new = self.build_vm(config)?;
        let mut slot = self.vm();
        match slot.as_ref() {
            Some(old) if old.stopped || old.state() == VmState::Shutdown => {
                new.boot().map_err(vm_error)?;
                *slot = Some(Slot::new(new));
                Ok(())
            }
            // Deleted, or booted by a racing call, meanwhile.
            None => Err(no_vm()),
            Some(old) => Err(ApiError::conflict(format!(
                "The VM is {:?}: it changed while booting it again",
                old.state()
            ))),
        }
    }

    /// Shuts the running VM down, releasing every lease; it is then
    /// `Created`, as in Cloud Hypervisor.
    pub fn shutdown_vm(&self) -> Result<(), ApiError> {
        let mut slot = self.vm();
        let Some(slot) = slot.as_mut() else {
            return Err(no_vm());
        };
        match slot.state() {
            VmState::Running => {
                slot.vm.shutdown();
                slot.stopped = true;
                Ok(())
            }
            state => Err(ApiError::conflict(format!(
                "The VM is {state:?}: only a running VM can shut down"
            ))),
        }
    }

    /// Deletes the VM, shutting it down first; without a VM, does
    /// nothing, as Cloud Hypervisor.
    pub fn delete_vm(&self) {
        let Some(mut slot) = self.vm().take() else {
            return;
        };
        slot.vm.shutdown();
        drop(slot);
        self.events
            .event(VM_EVENT_SOURCE, "deleted", [("vcpus", json!(0))]);
    }

    /// Applies a certs update. The new file is validated (under its shared
    /// lock, waiting at most the timeout) without holding the VMM's lock, so
    /// other API calls go on meanwhile; the swap itself is atomic.
    fn put_snp_certs(&self, update: SnpCertsUpdate) -> Result<VmmData, ApiError> {
        let certs = self.with_vm(|vm| Ok(Arc::clone(vm.certs())))?;
        if matches!(update.certs_file, Some(Some(_))) && !certs.reaches_vmm() {
            return Err(ApiError::from_error(
                ApiErrorKind::Conflict,
                &VmError::NoCertsExit,
            ));
        }
        if !update.is_empty() {
            certs
                .update(update.rereads_file(), |current| update.apply(current))
                .map_err(config_error)?;
        }
        Ok(VmmData::SnpCerts(Box::new(certs_info(&certs))))
    }

    /// What `GET vmm.ping` answers. `features` as Cloud Hypervisor lists
    /// them, sorted: the backend (`kvm`, `mock`), `sev_snp` where SEV-SNP
    /// guests can be launched (the `mock-snp` backend included), and
    /// `snp_req_certs` where their certificate requests reach the VMM.
    pub fn ping(&self) -> PingResponse {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        let mut features = vec![self.backend.name().to_owned()];
        if self.backend.hypervisor().snp_supported() {
            features.push(FEATURE_SEV_SNP.to_owned());
        }
        if self.snp_req_certs_supported {
            features.push(FEATURE_SNP_REQ_CERTS.to_owned());
        }
        features.sort();
        PingResponse {
            build_version: option_env!("SNP_VMM_BUILD_VERSION")
                .map_or_else(|| version.clone(), str::to_owned),
            version,
            pid: std::process::id(),
            features,
            hypervisor: self.backend.name().to_owned(),
            snp_req_certs_supported: self.snp_req_certs_supported,
        }
    }

    /// Asks the process to exit (after `vmm.shutdown`, SIGINT, SIGTERM).
    pub fn request_exit(&self) {
        self.exiting.store(true, Ordering::Release);
        if let Some(mut slot) = self.vm().take() {
            slot.vm.shutdown();
            drop(slot);
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
            VmmAction::Ping => Ok(VmmData::Ping(self.ping())),
            VmmAction::ShutdownVmm => {
                self.request_exit();
                Ok(VmmData::Empty)
            }
            VmmAction::CreateVm(config) => self.create_vm(*config).map(VmmData::with_warnings),
            VmmAction::BootVm => self.boot_vm().map(|()| VmmData::Empty),
            VmmAction::VmInfo => match self.vm().as_ref() {
                Some(slot) => {
                    let mut info = slot.vm.info();
                    info.state = slot.state();
                    Ok(VmmData::VmInfo(Box::new(info)))
                }
                None => Err(no_vm()),
            },
            VmmAction::ShutdownVm => self.shutdown_vm().map(|()| VmmData::Empty),
            VmmAction::DeleteVm => {
                self.delete_vm();
                Ok(VmmData::Empty)
            }
            VmmAction::GetSnpCerts => {
                self.with_vm(|vm| Ok(VmmData::SnpCerts(Box::new(vm.certs_info()))))
            }
            VmmAction::PutSnpCerts(update) => self.put_snp_certs(update),
            VmmAction::VmCounters => {
                self.with_vm(|vm| Ok(VmmData::Counters(vm.certs().stats().counter_map())))
            }
        }
    }
}
