//! Built-in test guests for `snp-vmm`: small programs that ask for SNP
//! certificates the way a Linux guest does, check what they received, and
//! report it through their own devices.
//!
//! The VMM knows none of this: [`TestGuests`] is a
//! [`vmm::payload::PayloadFactory`] the `snp-vmm` binary hands to the VMM,
//! and each guest is a [`vmm::payload::Payload`] that loads its program,
//! attaches its report and delay ports to the VM's port-I/O bus
//! ([`devices`]), and watches the certificate requests only after their
//! lease is released.
//!
//! * [`attest`]: the real-mode attestation guest (machine code for KVM and
//!   its Rust twin for the mock backend), asking through the emulated
//!   doorbell.
//! * [`snp`]: the SEV-SNP guest (64-bit machine code speaking the GHCB
//!   protocol, and its Rust twin), asking through the extended guest
//!   request.
//! * [`report`]: the report and delay ports and the report format.
//! * [`report_check`]: each guest report checked against what the VMM
//!   delivered, kept for the summary.
//! * [`summary`]: the end-of-run summary.

pub mod attest;
pub mod devices;
pub mod payloads;
pub mod report;
pub mod report_check;
pub mod snp;
pub mod summary;

pub use payloads::TestGuests;
