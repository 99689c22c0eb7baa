//! Host side of SEV-SNP extended attestation: certificate tables, the lock
//! protocol that keeps them in step with firmware and key updates, and the
//! handling of one guest certificate request.
//!
//! This crate knows nothing of KVM. A VMM hands it the guest's request (a
//! guest-physical address and a page count), the guest memory (through the
//! [`vm_memory`] traits) and the VM's certificate configuration, and gets
//! back an [`Outcome`] that maps one to one onto the `ret` and `npages`
//! fields of `KVM_EXIT_SNP_REQ_CERTS`. When certificates were delivered,
//! the outcome holds a [`Lease`]: the shared lock on the certificate file,
//! which the VMM keeps until KVM has passed the guest's report request to
//! firmware, then drops.
//!
//! * [`table`]: the GHCB certificate table format, parser and builder.
//! * [`guid`]: the well-known certificate GUIDs.
//! * [`lock`]: whole-file OFD locks with a bounded, non-polling wait.
//! * [`file`]: opening, locking, re-checking and reading a certs file.
//! * [`config`]: a VM's certs configuration and every rule it obeys,
//!   swappable at run time.
//! * [`budget`]: how long a guest may be told busy.
//! * [`guest`]: guest memory as the table is written into it.
//! * [`serve`]: one guest request, start to finish, and the answer policy.
//! * [`fault_log`]: when a VMM logs a fault its answers keep meeting: when
//!   it starts, at most once per interval while it lasts, and when it
//!   clears.
//! * [`update`]: the writer half of the lock protocol: rewriting a live
//!   certs file in place under the exclusive lock.
//!
//! The settings and answer vocabulary comes from `snp-certs-types` and is
//! re-exported here ([`CertsConfig`], [`OnError`], [`OutcomeKind`],
//! [`Reason`]), so an embedding VMM needs only this crate. Serving a table
//! needs no X.509 or RSA: checking the certificates a table carries is
//! `snp-certs-verify`'s, for the operator tool.

pub mod budget;
pub mod config;
pub mod fault_log;
pub mod file;
pub mod guest;
pub mod guid;
pub mod lock;
pub mod serve;
pub mod table;
pub mod update;

pub use budget::BusyBudget;
pub use config::{ActiveCerts, CertsConfig, OnError, SharedCertsConfig};
pub use file::{CertsFileError, CertsReader, Lease, LockedCerts, ReadError};
pub use guest::{GuestWrite, NotGuestRam};
pub use guid::CertKind;
pub use serve::{CertsRequest, Outcome, OutcomeKind, Problem, Reason, serve, serve_shared_only};
pub use table::{CertTable, TableBuilder, TableError, TableWarning, ValidTable};
