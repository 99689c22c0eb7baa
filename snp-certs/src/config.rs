//! A VM's certs configuration: the rules every certs setting obeys, the
//! check of a certs file when it is set, and the handle that swaps the
//! configuration at run time.
//!
//! # The settings
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
//! REST API and `snp-remote` all call [`CertsConfig::check`] (the
//! structural rules) and [`CertsConfig::validate`] (the file itself).
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
//!
//! # Swapping at run time
//!
//! [`SharedCertsConfig`] holds the current [`ActiveCerts`] (a validated
//! configuration with its file's warnings) behind an `Arc`: a request
//! takes a snapshot when it starts and finishes with it, while
//! [`SharedCertsConfig::update`] makes every later request use the new
//! one. Validation happens before the swap and outside any lock, so a
//! slow validation (a file held by a writer) never blocks other readers
//! of the configuration or other updates.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::file::{CertsFileError, CertsReader};
use crate::table::{CertTable, LINUX_GUEST_MAX_SIZE, TableWarning};

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

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
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
    /// The table is larger than a Linux guest can receive.
    #[error(
        "Certs file {path} holds a {size}-byte table: Linux guests cannot receive more than {LINUX_GUEST_MAX_SIZE} bytes (allow-large accepts it for guests known to offer more)"
    )]
    TooLargeForGuests {
        /// The file.
        path: PathBuf,
        /// The table's size.
        size: usize,
    },
    /// `certs_file` cannot be read as a valid table.
    #[error(transparent)]
    File(#[from] CertsFileError),
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

/// A configuration whose file was read and found valid, with that file's
/// warnings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActiveCerts {
    /// The configuration.
    pub config: CertsConfig,
    /// What is legal but probably wrong about its table.
    pub warnings: Vec<TableWarning>,
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
    pub fn check(&self) -> Result<(), ConfigError> {
        check_timeout(self.certs_timeout)?;
        check_budget(self.busy_budget)?;
        match &self.certs_file {
            Some(path) if !path.is_absolute() => Err(ConfigError::RelativePath(path.clone())),
            _ => Ok(()),
        }
    }

    /// [`CertsConfig::check`], then the file as a guest request would find
    /// it: a regular file holding a valid table, read under the shared lock
    /// (waiting at most `wait`), and no larger than a Linux guest can take
    /// unless `allow_large`.
    pub fn validate(self, wait: Duration) -> Result<ActiveCerts, ConfigError> {
        self.validate_cancellable(wait, None)
    }

    /// [`CertsConfig::validate`], but a lock wait ends early (a
    /// [`LockError::Cancelled`](crate::lock::LockError::Cancelled) error)
    /// once `cancel` is set: a VMM passes its "exiting" flag, so SIGINT
    /// during a long start-up wait ends it promptly.
    pub fn validate_cancellable(
        self,
        wait: Duration,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<ActiveCerts, ConfigError> {
        self.check()?;
        let warnings = match &self.certs_file {
            Some(path) => validate_file(path, wait, self.allow_large, cancel)?,
            None => Vec::new(),
        };
        Ok(ActiveCerts {
            config: self,
            warnings,
        })
    }
}

/// Checks a `certs_timeout` value.
pub fn check_timeout(ms: u64) -> Result<(), ConfigError> {
    if ms > MAX_CERTS_TIMEOUT_MS {
        return Err(ConfigError::TimeoutTooLarge(ms));
    }
    Ok(())
}

/// Checks a `busy_budget` value.
pub fn check_budget(ms: u64) -> Result<(), ConfigError> {
    if ms > MAX_BUSY_BUDGET_MS {
        return Err(ConfigError::BudgetTooLarge(ms));
    }
    Ok(())
}

/// Reads `path` under the shared lock (waiting at most `wait`, or until
/// `cancel` is set), refuses a table above 16 KiB unless `allow_large`,
/// and returns its warnings.
pub fn validate_file(
    path: &Path,
    wait: Duration,
    allow_large: bool,
    cancel: Option<Arc<AtomicBool>>,
) -> Result<Vec<TableWarning>, ConfigError> {
    let mut reader = match cancel {
        Some(cancel) => CertsReader::with_cancel(cancel),
        None => CertsReader::new(),
    };
    let locked = reader.lock_and_read(path, wait)?;
    let size = locked.bytes.len();
    if size > LINUX_GUEST_MAX_SIZE && !allow_large {
        return Err(ConfigError::TooLargeForGuests {
            path: path.to_owned(),
            size,
        });
    }
    // `lock_and_read` only returns valid tables.
    Ok(CertTable::parse(locked.bytes)
        .map(|t| t.warnings())
        .unwrap_or_default())
}

/// The current configuration of one VM, replaceable while guests run.
#[derive(Debug, Clone, Default)]
pub struct SharedCertsConfig {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    current: RwLock<Arc<ActiveCerts>>,
    generation: AtomicU64,
}

/// How often [`SharedCertsConfig::update`] recomputes a change that raced
/// with another before it gives up.
const MAX_UPDATE_RACES: u32 = 8;

impl SharedCertsConfig {
    /// A handle holding `active`.
    pub fn new(active: ActiveCerts) -> SharedCertsConfig {
        SharedCertsConfig {
            inner: Arc::new(Shared {
                current: RwLock::new(Arc::new(active)),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// A snapshot of the current configuration.
    pub fn current(&self) -> Arc<ActiveCerts> {
        let guard = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&guard)
    }

    /// How many times the configuration was replaced.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Makes `change(current)` the configuration. If `change` names a
    /// certs file (`rereads_file` says whether it does), the file is
    /// validated, waiting at most the new configuration's timeout; else
    /// only the structural rules are checked and the current warnings are
    /// kept, so a timeout-only change works while a management tool holds
    /// the exclusive lock. The validation runs without holding anything;
    /// if another update won the race meanwhile, `change` is applied
    /// again to the newer configuration. On error nothing changes.
    /// Returns the previous and the new configuration.
    pub fn update(
        &self,
        rereads_file: bool,
        change: impl Fn(&CertsConfig) -> CertsConfig,
    ) -> Result<(Arc<ActiveCerts>, Arc<ActiveCerts>), ConfigError> {
        let mut races = 0;
        loop {
            let generation = self.generation();
            let previous = self.current();
            let config = change(&previous.config);
            let active = if rereads_file {
                let wait = config.timeout();
                config.validate(wait)?
            } else {
                config.check()?;
                ActiveCerts {
                    config,
                    warnings: previous.warnings.clone(),
                }
            };
            let mut guard = self
                .inner
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if self.generation() == generation || races >= MAX_UPDATE_RACES {
                let active = Arc::new(active);
                let previous = std::mem::replace(&mut *guard, Arc::clone(&active));
                self.inner.generation.fetch_add(1, Ordering::AcqRel);
                return Ok((previous, active));
            }
            races += 1;
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
