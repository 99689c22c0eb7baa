//! Backend-neutral hypervisor traits, a KVM backend and a scriptable mock.
//!
//! The crate is modelled on Cloud Hypervisor's `hypervisor` crate, cut down to
//! what a VMM needs to serve SEV-SNP certificate requests:
//!
//! * [`Hypervisor`] opens the backend, probes for SNP certificate-request
//!   support and creates VMs.
//! * [`Vm`] maps guest memory, enables the certificate-request exit and
//!   creates vCPUs.
//! * [`Vcpu`] runs guest code and returns typed [`VmExit`]s; answers to exits
//!   that need one (an `IN`, an SNP certificate request) are given back
//!   through [`Vcpu::complete_io_in`] and [`Vcpu::complete_snp_req_certs`]
//!   before the next [`Vcpu::run`].
//!
//! The crate knows nothing of files or certificates.
//!
//! # The SNP certificate-request protocol
//!
//! On an SNP host with a kernel that supports it (Linux 7.0 and later), the
//! VMM enables the exit on each SNP VM **before any vCPU exists**
//! ([`Vm::enable_snp_req_certs`]). When the guest asks for an attestation
//! report together with the certificate chain, KVM stops the vCPU with exit
//! 43 and [`Vcpu::run`] returns [`VmExit::SnpReqCerts`] carrying the guest's
//! buffer address and size, both verbatim from the (untrusted) guest. The VMM
//! writes the certificate table into guest memory, then answers with
//! [`Vcpu::complete_snp_req_certs`]:
//!
//! | `ret` | meaning |
//! | --- | --- |
//! | 0 | the table is in the buffer; KVM forwards the report request to firmware |
//! | `ENOSPC` | buffer too small; `npages` tells the guest how many pages it needs |
//! | `EAGAIN` | host busy; the guest retries later |
//! | `EIO` | the guest's own permanent fault: **the guest disables its attestation key** |
//!
//! While the VMM holds a shared lock on the certificate file it must learn
//! when the firmware request has happened. For that it sets
//! [`Vcpu::set_immediate_exit`]`(true)` and runs again: the kernel completes
//! the pending request, then [`Vcpu::run`] returns [`VmExit::Interrupted`]
//! without running guest code. The VMM drops the lock, clears the flag and
//! continues.
//!
//! # Kicking vCPU threads
//!
//! [`Vcpu::kicker`] hands out a [`VcpuKicker`] that another thread can use to
//! make a running (or about-to-run) vCPU return [`VmExit::Interrupted`]
//! promptly; see the [`kick`] module for the exact contract and the signal it
//! uses.
//!
//! # Backends
//!
//! * [`kvm`]: Linux KVM through `kvm-ioctls`. [`kvm::KvmHypervisor::new`]
//!   fails with [`HypervisorError::KvmUnavailable`] when `/dev/kvm` cannot be
//!   opened, so callers can fall back to the mock.
//! * [`mock`]: replays scripted exits or drives a Rust "guest" program, and
//!   records everything the VMM does for tests to inspect.

#![cfg(target_os = "linux")]

mod error;
mod exit;
pub mod kick;
pub mod kvm;
pub mod mock;
pub mod sev_commands;
pub mod sev_device;
pub mod snp_cpuid;
pub mod snp_interface;

use std::sync::Arc;

pub use error::HypervisorError;
pub use exit::{PioData, SnpCertsCompletion, SnpCertsRequest, VmExit, VmType};
pub use kick::{VcpuKicker, kick_signal};
pub use sev_device::{SEV_DEVICE, SevDevice};
pub use snp_interface::{DEFAULT_SNP_POLICY, SnpLaunch, SnpPageType};
pub use vm_memory::GuestMemoryMmap;
/// The errno-carrying error type of the KVM ioctls, used as `#[source]` in
/// [`HypervisorError`].
pub use vmm_sys_util::errno::Error as Errno;

/// A hypervisor backend: the entry point that creates VMs.
pub trait Hypervisor: Send + Sync {
    /// Short backend name: `"kvm"` or `"mock"`.
    fn name(&self) -> &'static str;

    /// Whether the host kernel offers the SNP certificate-request exit.
    ///
    /// KVM: `KVM_HAS_DEVICE_ATTR` / `KVM_GET_DEVICE_ATTR` on the `/dev/kvm`
    /// fd for group `KVM_X86_GRP_SEV`, attribute `KVM_X86_SEV_SNP_REQ_CERTS`.
    /// A host without SEV (the kernel answers `ENXIO`, `ENOTTY` or `EINVAL`)
    /// gives `Ok(false)`; other failures are errors.
    fn snp_req_certs_supported(&self) -> Result<bool, HypervisorError>;

    /// Whether the host offers SEV-SNP VMs at all (KVM: the SNP VM type in
    /// `KVM_CAP_VM_TYPES`).
    fn snp_supported(&self) -> bool;

    /// The position of the encryption bit (C-bit) in an SNP guest's page
    /// table entries: KVM reads the host's CPUID `0x8000_001F` EBX\[5:0\]
    /// (AMD APM vol. 2, "Memory Encryption"), as QEMU does; `None` where
    /// the host does not report one (no SEV).
    fn snp_c_bit(&self) -> Option<u8>;

    /// Creates a VM of the given type.
    ///
    /// [`VmType::Snp`] fails with [`HypervisorError::SnpUnsupported`] on
    /// hosts without SEV-SNP.
    fn create_vm(&self, vm_type: VmType) -> Result<Box<dyn Vm>, HypervisorError>;
}

/// One virtual machine.
pub trait Vm: Send + Sync {
    /// Registers every region of `memory` as guest RAM at its guest address.
    ///
    /// The VM keeps the `Arc` (and so the host mapping) alive for as long as
    /// the VM or any of its vCPUs exists. Calling it again adds the new
    /// regions in further slots; regions must not overlap earlier ones.
    fn map_memory(&self, memory: Arc<GuestMemoryMmap>) -> Result<(), HypervisorError>;

    /// Enables the SNP certificate-request exit ([`VmExit::SnpReqCerts`]).
    ///
    /// Only valid on a [`VmType::Snp`] VM and only before any vCPU has been
    /// created: afterwards it fails with
    /// [`HypervisorError::VcpusAlreadyCreated`] without asking the kernel.
    /// If the kernel refuses the command (`EINVAL`: for instance a kernel
    /// without the feature) the error is
    /// [`HypervisorError::SnpReqCertsRejected`].
    fn enable_snp_req_certs(&self) -> Result<(), HypervisorError>;

    /// Creates vCPU number `id`.
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, HypervisorError>;

    /// The SNP launch commands, on an SNP VM; `None` on other VMs.
    fn snp(&self) -> Option<&dyn SnpLaunch>;
}

/// One virtual CPU.
///
/// A vCPU is driven by one thread at a time: [`Vcpu::run`] binds the calling
/// thread as the target of [`VcpuKicker::kick`] (see [`kick`]).
pub trait Vcpu: Send {
    /// Puts the vCPU in flat 16-bit real mode: CS, DS, ES, SS, FS and GS with
    /// base 0 and selector 0, `rip = entry`, `rflags = 2`.
    fn setup_real_mode(&mut self, entry: u64) -> Result<(), HypervisorError>;

    /// Puts the vCPU in 64-bit long mode with paging: `CR3 = page_table`
    /// (a PML4 the guest image provides), `CR0.PE|PG`, `CR4.PAE`,
    /// `EFER.LME|LMA`, a flat 64-bit code segment and flat data segments,
    /// `rip = entry`, `rflags = 2`. On an SNP VM these registers go into
    /// the encrypted save area at launch finish.
    fn setup_long_mode(&mut self, entry: u64, page_table: u64) -> Result<(), HypervisorError>;

    /// Runs the vCPU until the next exit.
    ///
    /// Returns [`VmExit::Interrupted`] when the run was cut short: the
    /// immediate-exit flag was set, the vCPU was kicked, or a signal arrived
    /// (`KVM_RUN` returned `EINTR`). A pending completion is applied before
    /// that, exactly as KVM does.
    fn run(&mut self) -> Result<VmExit, HypervisorError>;

    /// Supplies the data for the pending [`VmExit::IoIn`]; must be called
    /// before the next [`Vcpu::run`]. `data.len()` must equal the exit's
    /// `size`.
    fn complete_io_in(&mut self, data: &[u8]) -> Result<(), HypervisorError>;

    /// Answers the pending [`VmExit::SnpReqCerts`]; must be called before
    /// the next [`Vcpu::run`]. `ret` must be one of the four values accepted
    /// by KVM (see [`SnpCertsCompletion`]); `npages` is what the guest is
    /// told it needs when `ret` is `ENOSPC`.
    fn complete_snp_req_certs(&mut self, c: SnpCertsCompletion) -> Result<(), HypervisorError>;

    /// Answers the pending [`VmExit::MapGpaRange`] with `ret` (0 for done,
    /// an errno for refused); must be called before the next
    /// [`Vcpu::run`].
    fn complete_hypercall(&mut self, ret: u64) -> Result<(), HypervisorError>;

    /// Sets or clears the immediate-exit flag. While it is set every
    /// [`Vcpu::run`] completes any pending request and returns
    /// [`VmExit::Interrupted`] without running guest code.
    fn set_immediate_exit(&mut self, on: bool);

    /// A handle other threads can use to stop this vCPU promptly.
    fn kicker(&self) -> VcpuKicker;
}
