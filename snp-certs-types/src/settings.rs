//! A VM's certs settings and the structural rules every one of them obeys.
//!
//! | setting | meaning | default | range |
//! | --- | --- | --- | --- |
//! | `certs_file` | the certificate table to serve; none: guests get an empty table | none | an absolute path |
//! | `certs_timeout` | the maximum time in milliseconds one request waits for the shared lock (0: a single try) | [`DEFAULT_CERTS_TIMEOUT_MS`] | up to [`MAX_CERTS_TIMEOUT_MS`] |
//! | `busy_budget` | the longest time in milliseconds a guest is answered busy without a break | [`DEFAULT_BUSY_BUDGET_MS`] | up to [`MAX_BUSY_BUDGET_MS`] |
//! | `on_error` | the fallback answer when busy can no longer help | [`OnError::Empty`] | `empty` or `busy` |
//! | `allow_large` | accept tables above the 16 KiB a Linux guest can receive | false | |
//!
//! These rules live here and nowhere else: the VMM's command line, the
//! REST API and `snp-remote` all call [`CertsConfig::check`]. Whether the
//! file holds a table a guest can receive is the engine's check
//! (`snp_certs::ActiveCerts::validate`).
//!
//! # Why these numbers
//!
//! A Linux guest asks for certificates with interrupts disabled, so every
//! millisecond a request waits for the lock freezes that vCPU: its timer,
//! its IPIs, and the other vCPUs spinning on them. Waiting longer gains
//! nothing: a busy answer makes the guest sleep 2 s and ask again. So the
//! timeout is short (100 ms, as in the QEMU series) and capped at one
//! second. The guest gives up after 60 s of busy answers and then disables
//! its VMPCK key for good, so the busy budget (30 s by default) is capped
//! at 50 s: below 60 s with room for the 2 s retry period and the lock
//! waits themselves.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default `certs_timeout`: 100 ms.
pub const DEFAULT_CERTS_TIMEOUT_MS: u64 = 100;

/// Largest accepted `certs_timeout`: 1 s (see the module docs).
pub const MAX_CERTS_TIMEOUT_MS: u64 = 1_000;

/// Default `busy_budget`: 30 s.
pub const DEFAULT_BUSY_BUDGET_MS: u64 = 30_000;

/// Largest accepted `busy_budget`: 50 s, below the 60 s after which a
/// Linux guest gives up and disables its key.
pub const MAX_BUSY_BUDGET_MS: u64 = 50_000;

/// What a guest is answered when busy can no longer help: the file is
/// missing or invalid (retrying cannot fix that), or the busy budget is
/// spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The empty table with `ret` 0, as KVM answers when the exit is off:
    /// the guest gets its report without certificates and keeps its key.
    #[default]
    Empty,
    /// Busy (`EAGAIN`) for as long as the fault lasts. A Linux guest that
    /// is told busy for 60 s disables its VMPCK key for good.
    Busy,
}

impl OnError {
    /// The kebab-case name, as on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Empty => "empty",
            OnError::Busy => "busy",
        }
    }
}

impl std::str::FromStr for OnError {
    type Err = String;

    fn from_str(s: &str) -> Result<OnError, String> {
        match s {
            "empty" => Ok(OnError::Empty),
            "busy" => Ok(OnError::Busy),
            _ => Err("expected empty or busy".to_owned()),
        }
    }
}

/// A setting that breaks a structural rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsError {
    /// `certs_timeout` is above [`MAX_CERTS_TIMEOUT_MS`].
    #[error(
        "Certs timeout {0} ms is above the maximum of {MAX_CERTS_TIMEOUT_MS} ms (the vCPU waits with interrupts disabled)"
    )]
    TimeoutTooLarge(u64),
    /// `busy_budget` is above [`MAX_BUSY_BUDGET_MS`].
    #[error(
        "Busy budget {0} ms is above the maximum of {MAX_BUSY_BUDGET_MS} ms (a Linux guest gives up after 60 s of busy answers)"
    )]
    BudgetTooLarge(u64),
    /// `certs_file` is a relative path.
    #[error("Certs file {0} must be an absolute path")]
    RelativePath(PathBuf),
}

/// A VM's certs configuration (see the module docs for each setting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsConfig {
    /// The certificate table to serve; `None` serves an empty table.
    #[serde(default)]
    pub certs_file: Option<PathBuf>,
    /// Maximum time in milliseconds to wait for the shared lock.
    #[serde(default = "default_timeout")]
    pub certs_timeout: u64,
    /// Longest time in milliseconds a guest is answered busy in a row.
    #[serde(default = "default_budget")]
    pub busy_budget: u64,
    /// The answer when busy can no longer help.
    #[serde(default)]
    pub on_error: OnError,
    /// Accept tables above 16 KiB.
    #[serde(default)]
    pub allow_large: bool,
}

fn default_timeout() -> u64 {
    DEFAULT_CERTS_TIMEOUT_MS
}

fn default_budget() -> u64 {
    DEFAULT_BUSY_BUDGET_MS
}

impl Default for CertsConfig {
    fn default() -> CertsConfig {
        CertsConfig {
            certs_file: None,
            certs_timeout: DEFAULT_CERTS_TIMEOUT_MS,
            busy_budget: DEFAULT_BUSY_BUDGET_MS,
            on_error: OnError::Empty,
            allow_large: false,
        }
    }
}

impl CertsConfig {
    /// A configuration serving `certs_file` with the defaults.
    pub fn with_file(certs_file: impl Into<PathBuf>) -> CertsConfig {
        CertsConfig {
            certs_file: Some(certs_file.into()),
            ..CertsConfig::default()
        }
    }

    /// `certs_timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.certs_timeout)
    }

    /// `busy_budget` as a duration.
    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.busy_budget)
    }

    /// The structural rules: the timeout and the budget in range, the path
    /// absolute. Does not open the file.
    pub fn check(&self) -> Result<(), SettingsError> {
        check_timeout(self.certs_timeout)?;
        check_budget(self.busy_budget)?;
        match &self.certs_file {
            Some(path) if !path.is_absolute() => Err(SettingsError::RelativePath(path.clone())),
            _ => Ok(()),
        }
    }
}

/// Checks a `certs_timeout` value.
pub fn check_timeout(ms: u64) -> Result<(), SettingsError> {
    if ms > MAX_CERTS_TIMEOUT_MS {
        return Err(SettingsError::TimeoutTooLarge(ms));
    }
    Ok(())
}

/// Checks a `busy_budget` value.
pub fn check_budget(ms: u64) -> Result<(), SettingsError> {
    if ms > MAX_BUSY_BUDGET_MS {
        return Err(SettingsError::BudgetTooLarge(ms));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_enforces_every_structural_rule() {
        assert_eq!(CertsConfig::default().check(), Ok(()));
        let at_limits = CertsConfig {
            certs_timeout: MAX_CERTS_TIMEOUT_MS,
            busy_budget: MAX_BUSY_BUDGET_MS,
            ..CertsConfig::default()
        };
        assert_eq!(at_limits.check(), Ok(()));
        let timeout = CertsConfig {
            certs_timeout: MAX_CERTS_TIMEOUT_MS + 1,
            ..CertsConfig::default()
        };
        assert_eq!(
            timeout.check(),
            Err(SettingsError::TimeoutTooLarge(MAX_CERTS_TIMEOUT_MS + 1))
        );
        let budget = CertsConfig {
            busy_budget: MAX_BUSY_BUDGET_MS + 1,
            ..CertsConfig::default()
        };
        assert_eq!(
            budget.check(),
            Err(SettingsError::BudgetTooLarge(MAX_BUSY_BUDGET_MS + 1))
        );
        assert_eq!(
            CertsConfig::with_file("certs.bin").check(),
            Err(SettingsError::RelativePath("certs.bin".into()))
        );
        assert_eq!(CertsConfig::with_file("/certs.bin").check(), Ok(()));
    }

    #[test]
    fn serde_defaults_and_names() {
        let c: CertsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, CertsConfig::default());
        let c: CertsConfig = serde_json::from_str(r#"{"on_error": "busy"}"#).unwrap();
        assert_eq!(c.on_error, OnError::Busy);
        assert!(serde_json::from_str::<CertsConfig>(r#"{"bogus": 1}"#).is_err());
        for answer in [OnError::Empty, OnError::Busy] {
            assert_eq!(answer.as_str().parse::<OnError>(), Ok(answer));
            assert_eq!(
                serde_json::to_string(&answer).unwrap(),
                format!("\"{}\"", answer.as_str())
            );
        }
        assert!("Empty ".parse::<OnError>().is_err());
    }
}
