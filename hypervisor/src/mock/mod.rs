//! A mock backend for tests and for hosts without KVM (when asked for).
//!
//! [`MockHypervisor`] hands out VMs whose vCPUs get their exits from a
//! [`MockGuest`]: either a fixed script ([`ScriptedGuest`], built with
//! [`MockHypervisor::with_script`]) or a Rust program that reacts to the
//! VMM's answers and reads and writes guest memory, the way a real guest
//! would ([`MockHypervisor::with_guest`]).
//!
//! Everything the VMM does is appended, in order, to a shared [`MockLog`]
//! ([`MockHypervisor::log`]): VM and vCPU creation, memory maps, enabling
//! the certificate exit, every run with the immediate-exit value it used,
//! every exit returned, and every completion with its data.
//!
//! On SNP VMs the mock is a conformance model of KVM's SNP interface
//! ([`kernel_model`]): the launch commands go through the same builder as
//! on KVM ([`crate::sev_commands`]) with a `/dev/sev` of the model's, and
//! an SNP guest ([`SevGuest`]: the test guest's Rust twin, or its machine
//! code in an emulator) speaks the GHCB protocol to the model, which turns
//! its VMGEXITs into the exits KVM would give. Besides, the mock mirrors
//! KVM's rules where the VMM could get them wrong:
//!
//! * a pending exit is completed at the start of the next run, even one that
//!   is cut short; the guest sees the answer (or its absence) on its next
//!   step;
//! * a run with the immediate-exit flag set (or after a kick) returns
//!   [`VmExit::Interrupted`] without asking the guest for a new exit;
//! * completions must match the pending exit: right length for an `IN`, a
//!   `ret` KVM accepts for a certificate request;
//! * [`Vm::enable_snp_req_certs`] only works on SNP VMs, before any vCPU
//!   exists, and only if the (simulated) kernel supports it;
//! * overlapping memory maps fail with `EEXIST`.
//!
//! A [`MockGuest`] that is not an [`SevGuest`] (a script, a Rust stand-in
//! of a default-VM guest) returns exits directly, unchecked by the model.

mod events;
pub mod kernel_model;
mod sev_guest;
mod vcpu;
mod vm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub use events::{MockEvent, MockLog};
pub use kernel_model::KernelModelConfig;
pub use sev_guest::{GuestStop, PvalidateAnswer, SevCpu, SevGuest};
pub use vcpu::{MockCompletion, MockGuest, MockVcpu, ScriptedGuest};
pub use vm::MockVm;

use crate::{Hypervisor, HypervisorError, Vm, VmType};

type Guests = Arc<Mutex<HashMap<u8, Box<dyn MockGuest>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The mock hypervisor. By default it simulates an SNP host whose kernel
/// supports certificate requests.
pub struct MockHypervisor {
    snp: bool,
    snp_req_certs: bool,
    model: KernelModelConfig,
    log: MockLog,
    guests: Guests,
}

impl std::fmt::Debug for MockHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHypervisor")
            .field("snp", &self.snp)
            .field("snp_req_certs", &self.snp_req_certs)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Default for MockHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl MockHypervisor {
    /// A mock SNP host with certificate-request support and no guests.
    pub fn new() -> Self {
        Self {
            snp: true,
            snp_req_certs: true,
            model: KernelModelConfig::default(),
            log: MockLog::default(),
            guests: Guests::default(),
        }
    }

    /// Whether SNP VMs can be created (default `true`).
    pub fn with_snp(mut self, supported: bool) -> Self {
        self.snp = supported;
        self
    }

    /// Whether the simulated kernel supports the certificate-request exit
    /// (default `true`). Drives [`Hypervisor::snp_req_certs_supported`] and
    /// whether [`Vm::enable_snp_req_certs`] is accepted.
    pub fn with_snp_req_certs(mut self, supported: bool) -> Self {
        self.snp_req_certs = supported;
        self
    }

    /// The kernel model's knobs for the SNP VMs created from now on.
    pub fn with_kernel_model(mut self, config: KernelModelConfig) -> Self {
        self.model = config;
        self
    }

    /// Makes vCPU `id` of the next VM replay `exits`, then return
    /// [`crate::VmExit::Shutdown`] for ever.
    pub fn with_script(self, id: u8, exits: impl IntoIterator<Item = crate::VmExit>) -> Self {
        self.with_guest(id, ScriptedGuest::new(exits))
    }

    /// Makes `guest` drive vCPU `id` of the next VM created.
    pub fn with_guest(self, id: u8, guest: impl MockGuest + 'static) -> Self {
        self.set_guest(id, guest);
        self
    }

    /// Like [`Self::with_guest`], through a shared reference. The guest is
    /// taken by the next [`Vm::create_vcpu`] with that number; a vCPU with
    /// no guest gets an empty script.
    pub fn set_guest(&self, id: u8, guest: impl MockGuest + 'static) {
        self.set_boxed_guest(id, Box::new(guest));
    }

    /// [`Self::set_guest`] for a guest already boxed.
    pub fn set_boxed_guest(&self, id: u8, guest: Box<dyn MockGuest>) {
        lock(&self.guests).insert(id, guest);
    }

    /// Keeps only about the `limit` most recent events in the log, so a
    /// mock serving a VM for hours does not grow without bound.
    pub fn with_log_limit(self, limit: usize) -> Self {
        self.log.set_limit(limit);
        self
    }

    /// The shared event log.
    pub fn log(&self) -> MockLog {
        self.log.clone()
    }

    /// Creates a VM and returns the concrete mock type.
    pub fn create_mock_vm(&self, vm_type: VmType) -> Result<MockVm, HypervisorError> {
        if vm_type == VmType::Snp && !self.snp {
            return Err(HypervisorError::SnpUnsupported {
                reason: "the mock host is configured without SEV-SNP",
                source: None,
            });
        }
        let vm = MockVm::new(
            vm_type,
            self.snp_req_certs,
            self.model,
            self.log.clone(),
            Arc::clone(&self.guests),
        )?;
        self.log.push(MockEvent::CreateVm { vm_type });
        Ok(vm)
    }
}

impl Hypervisor for MockHypervisor {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn snp_req_certs_supported(&self) -> Result<bool, HypervisorError> {
        Ok(self.snp && self.snp_req_certs)
    }

    fn snp_supported(&self) -> bool {
        self.snp
    }

    fn snp_c_bit(&self) -> Option<u8> {
        self.snp.then_some(self.model.c_bit)
    }

    fn create_vm(&self, vm_type: VmType) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.create_mock_vm(vm_type)?))
    }
}

#[cfg(test)]
mod tests;
