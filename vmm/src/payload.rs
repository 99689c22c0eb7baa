//! What a VM runs: the payload, attached when the VM is created.
//!
//! The VMM itself knows no guest program. A [`PayloadFactory`], given to
//! the [`Vmm`](crate::api_impl::Vmm) by whoever builds it (the `snp-vmm`
//! binary passes the built-in test guests), turns the VM configuration's
//! `payload` into a [`Payload`], which
//!
//! 1. says how much RAM it needs and whether it talks through the
//!    emulated doorbell;
//! 2. loads its program into guest memory and sets up each vCPU (or
//!    leaves it idle);
//! 3. attaches its devices to the VM's port-I/O bus;
//! 4. on the mock backend, gives each vCPU the Rust model that stands in
//!    for its machine code;
//! 5. may watch the certificate requests its guest makes
//!    ([`RequestObserver`]), told of each one only **after** its lease is
//!    released, never between writing the answer and dropping the lock.
//!
//! A VM with no payload has idle vCPUs: they run no guest code and wait
//! until the VM is stopped, so the VM (and its certs configuration) can be
//! driven through the API without a guest.

use std::sync::Arc;

use event_monitor::EventSender;
use hypervisor::mock::MockGuest;
use hypervisor::{GuestMemoryMmap, HypervisorError, SnpPageType, Vcpu};
use snp_certs::CertsRequest;
use snp_certs::serve::{OutcomeKind, Reason};
use vmm_api::TestGuestConfig;

use crate::pio::{BusError, PioBus};
use crate::stop::StopSignal;

/// Why a payload could not be built or attached.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The configuration asks for something the payload cannot do.
    #[error("Invalid payload: {0}")]
    Invalid(String),
    /// The program could not be built or loaded.
    #[error("Cannot load the payload")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A device could not be attached.
    #[error("Cannot attach the payload's devices")]
    Bus(#[from] BusError),
}

/// How a vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStart {
    /// It runs guest code.
    Run,
    /// It runs nothing and waits for the VM to stop.
    Idle,
}

/// A range an SNP VM's launch encrypts and measures
/// (`KVM_SEV_SNP_LAUNCH_UPDATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchRange {
    /// First guest-physical address (page aligned).
    pub gpa: u64,
    /// Bytes (whole pages).
    pub len: u64,
    /// What it holds. The VMM builds no CPUID page: a
    /// [`SnpPageType::Cpuid`] range is refused
    /// ([`crate::snp_launch_sequence`]).
    pub page_type: SnpPageType,
}

/// What a payload's devices get to work with.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    /// Guest RAM.
    pub memory: Arc<GuestMemoryMmap>,
    /// The VM's stop signal (for devices that pause the vCPU).
    pub stop: Arc<StopSignal>,
    /// The event stream.
    pub events: EventSender,
}

/// One answered certificate request, as a [`RequestObserver`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The vCPU that asked.
    pub vcpu: u8,
    /// The guest's request.
    pub request: CertsRequest,
    /// The answer.
    pub kind: OutcomeKind,
    /// Why.
    pub reason: Reason,
    /// Bytes written at `request.gpa` (delivered answers).
    pub bytes: usize,
}

/// Watches a VM's certificate requests. Called on the vCPU thread after
/// the request's lease was released and before the guest runs again, so
/// guest memory at the buffer still holds exactly what was delivered.
pub trait RequestObserver: Send + Sync {
    /// A request was answered.
    fn answered(&self, answered: &Answered);
}

/// A guest program and its devices.
pub trait Payload: Send + Sync {
    /// Short name for logs and events.
    fn name(&self) -> &'static str;

    /// The least guest RAM (from GPA 0) it needs.
    fn min_memory(&self) -> u64;

    /// Whether it asks for certificates through the emulated doorbell (the
    /// VM must have `snp.doorbell` on).
    fn needs_doorbell(&self) -> bool;

    /// Writes the program into guest memory.
    fn load(&self, memory: &GuestMemoryMmap) -> Result<(), PayloadError>;

    /// Sets up vCPU `id` and says whether it runs.
    fn setup_vcpu(&self, id: u8, vcpu: &mut dyn Vcpu) -> Result<VcpuStart, HypervisorError>;

    /// On the mock backend: the Rust model of vCPU `id`'s program.
    fn mock_guest(&self, id: u8) -> Option<Box<dyn MockGuest>>;

    /// Attaches the payload's devices.
    fn attach(&self, ctx: &DeviceContext, bus: &mut PioBus) -> Result<(), PayloadError>;

    /// Whether it runs in an SEV-SNP VM (its vCPUs start from an
    /// encrypted save area, its memory is private) rather than a default VM.
    fn needs_snp(&self) -> bool {
        false
    }

    /// For an SNP payload: the ranges to launch-update, in order. Every
    /// other page of guest memory stays private and unvalidated.
    fn snp_launch_ranges(&self) -> Vec<LaunchRange> {
        Vec::new()
    }

    /// The payload's observer of certificate requests, if it has one.
    fn observer(&self) -> Option<Arc<dyn RequestObserver>> {
        None
    }
}

/// Builds payloads from the VM configuration.
pub trait PayloadFactory: Send + Sync {
    /// The payload running the test guest `config`.
    fn build(&self, config: &TestGuestConfig) -> Result<Box<dyn Payload>, PayloadError>;
}

/// A factory that knows no payload: every VM must be created without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPayloads;

impl PayloadFactory for NoPayloads {
    fn build(&self, config: &TestGuestConfig) -> Result<Box<dyn Payload>, PayloadError> {
        Err(PayloadError::Invalid(format!(
            "this VMM was built without payloads ({config:?})"
        )))
    }
}
