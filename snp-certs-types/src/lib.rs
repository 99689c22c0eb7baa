//! The vocabulary shared by the certificate engine (`snp-certs`) and the
//! crates that configure it or report on it (an API, a CLI): plain data
//! with serde, and the rules that need nothing but the data.
//!
//! * [`settings`]: a VM's certs settings ([`CertsConfig`]), their
//!   defaults and limits, and [`CertsConfig::check`], the structural rules
//!   every way of setting them obeys.
//! * [`answer`]: the four answers a guest can get ([`OutcomeKind`]), why
//!   ([`Reason`]), and which host-side faults are worth a busy answer
//!   ([`Fault`]).
//!
//! Checking the file itself (it must hold a valid table, read under the
//! shared lock) and serving requests are the engine's: `snp-certs`
//! re-exports everything here, so an embedding VMM needs only that crate.

pub mod answer;
pub mod settings;

pub use answer::{Fault, OutcomeKind, Reason};
pub use settings::{
    CertsConfig, DEFAULT_BUSY_BUDGET_MS, DEFAULT_CERTS_TIMEOUT_MS, MAX_BUSY_BUDGET_MS,
    MAX_CERTS_TIMEOUT_MS, OnError, SettingsError,
};
