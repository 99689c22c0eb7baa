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
//! * [`x509`]: certificates and CRLs in tables: PEM/DER, descriptions,
//!   signature checks.
//! * [`chain`]: checking the AMD endorsement chain a table carries.
//! * [`update`]: the writer half of the lock protocol: rewriting a live
//!   certs file in place under the exclusive lock.

pub mod budget;
pub mod chain;
pub mod config;
pub mod file;
pub mod guest;
pub mod guid;
pub mod lock;
pub mod serve;
pub mod table;
pub mod update;
pub mod x509;

#[cfg(test)]
mod test_fixtures;

pub use budget::BusyBudget;
pub use config::{ActiveCerts, CertsConfig, OnError, SharedCertsConfig};
pub use file::{CertsFileError, CertsReader, Lease, LockedCerts};
pub use guest::GuestWrite;
pub use guid::CertKind;
pub use serve::{CertsRequest, Outcome, OutcomeKind, Reason, serve};
pub use table::{CertTable, TableBuilder, TableError, TableWarning};
