//! A small KVM VMM that answers SEV-SNP certificate requests.
//!
//! The request path, from the guest's exit to the lease's release:
//!
//! ```text
//! KVM_EXIT_SNP_REQ_CERTS ─┐            (or the emulated doorbell's OUT)
//!                         ▼
//!   exit_dispatch::dispatch ──► VcpuRunner::answer_* ──► CertsService::serve
//!        (pure)                                       └─► snp_certs::serve_shared_only
//!                                                          (lock, read, validate, copy)
//!   complete the exit (ret, npages) ◄── Outcome { lease }
//!   immediate_exit = 1, KVM_RUN ──► EINTR ──► drop the lease
//!   ──► CertsService::report (count, log, event) ──► observer ──► run the guest
//! ```
//!
//! * [`backend`]: KVM, or the mock when asked for.
//! * [`vm`]: one VM: memory, payload, vCPU threads, lifecycle.
//! * [`vcpu_runner`]: the vCPU loop and the lease / immediate-exit protocol.
//! * [`exit_dispatch`]: what each exit means, as a pure function.
//! * [`certs_service`]: a VM's certs configuration, busy budget, counters,
//!   logs and events.
//! * [`fault_log`]: a fault logged when it starts, then at most once per
//!   interval, and when it clears (`snp_certs::fault_log`, shared with
//!   other VMMs that embed the engine).
//! * [`doorbell`]: the emulated guest-request doorbell for hosts without SNP.
//! * [`pio`]: the port-I/O bus payloads attach their devices to.
//! * [`shared_pages`]: which pages an SNP guest shared with the host.
//! * [`snp_launch_sequence`]: the VMM's launch sequence of an SEV-SNP VM.
//! * [`vm_error`]: why a VM could not be created or booted.
//! * [`payload`]: what a payload (a guest program) provides.
//! * [`api_impl`]: [`api_impl::Vmm`], the VMM's implementation of
//!   [`vmm_api::VmmApi`] (the REST API's side), with Cloud Hypervisor's
//!   VM lifecycle.
//!
//! The VMM knows no HTTP (it implements [`vmm_api::VmmApi`]) and no guest
//! program (payloads come from a [`payload::PayloadFactory`]).

pub mod api_impl;
pub mod backend;
pub mod certs_service;
pub mod doorbell;
pub mod exit_dispatch;
pub use snp_certs::fault_log;
pub mod payload;
pub mod pio;
pub mod shared_pages;
pub mod snp_launch_sequence;
pub mod stats;
pub mod stop;
pub mod vcpu_runner;
pub mod vm;
pub mod vm_error;
