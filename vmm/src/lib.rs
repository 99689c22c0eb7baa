//! A small KVM VMM that answers SEV-SNP certificate requests.
//!
//! * [`backend`]: KVM, or the mock where `/dev/kvm` is missing.
//! * [`vm`]: one VM: memory, vCPU threads, lifecycle.
//! * [`vcpu_runner`]: the vCPU loop and the lease / immediate-exit protocol.
//! * [`exit_dispatch`]: what each exit means, as a pure function.
//! * [`certs_service`]: a VM's certs configuration, counters and events.
//! * [`controller`]: the VMM's side of the REST API.
//! * [`doorbell`]: the emulated guest-request doorbell for hosts without SNP.
//! * [`guest`]: the built-in attestation test guest.
//! * [`attest`] and [`summary`]: checking what that guest reports.

pub mod attest;
pub mod backend;
pub mod certs_service;
pub mod controller;
pub mod doorbell;
pub mod exit_dispatch;
pub mod guest;
pub mod stats;
pub mod stop;
pub mod summary;
pub mod vcpu_runner;
pub mod vm;
