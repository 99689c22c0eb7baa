//! A VM's certs configuration: the rules every certs setting obeys, the
//! check of a certs file when it is set, and the handle that swaps the
//! configuration at run time.
//!
//! The settings themselves, their defaults, limits and structural rules
//! are [`snp_certs_types::settings`], re-exported here. This module adds
//! what needs the file: [`ActiveCerts::validate`] reads the table under
//! the shared lock, as a guest request would, before a configuration is
//! used; the VMM's command line, the REST API and `snp-remote` all go
//! through it.
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

pub use snp_certs_types::settings::{
    CertsConfig, DEFAULT_BUSY_BUDGET_MS, DEFAULT_CERTS_TIMEOUT_MS, MAX_BUSY_BUDGET_MS,
    MAX_CERTS_TIMEOUT_MS, OnError, SettingsError, check_budget, check_timeout,
};
use thiserror::Error;

use crate::file::{CertsFileError, CertsReader};
use crate::table::{LINUX_GUEST_MAX_SIZE, TableWarning, exceeds_guest_limit};

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A setting breaks a structural rule.
    #[error(transparent)]
    Settings(#[from] SettingsError),
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
    /// Other changes kept replacing the configuration while this one was
    /// being validated (see [`SharedCertsConfig::update`]): nothing was
    /// changed, and the caller may try again.
    #[error(
        "The certs configuration was changed by {races} other updates while this one was validated: nothing changed, retry"
    )]
    UpdateConflict {
        /// How many times it was recomputed.
        races: u32,
    },
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

impl ActiveCerts {
    /// [`CertsConfig::check`], then the file as a guest request would find
    /// it: a regular file holding a valid table, read under the shared lock
    /// (waiting at most `wait`), and no larger than a Linux guest can take
    /// unless `allow_large`.
    pub fn validate(config: CertsConfig, wait: Duration) -> Result<ActiveCerts, ConfigError> {
        ActiveCerts::validate_cancellable(config, wait, None)
    }

    /// [`ActiveCerts::validate`], but a lock wait ends early (a
    /// [`LockError::Cancelled`](crate::lock::LockError::Cancelled) error)
    /// once `cancel` is set: a VMM passes its "exiting" flag, so SIGINT
    /// during a long start-up wait ends it promptly.
    pub fn validate_cancellable(
        config: CertsConfig,
        wait: Duration,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<ActiveCerts, ConfigError> {
        config.check()?;
        let warnings = match &config.certs_file {
            Some(path) => validate_file(path, wait, config.allow_large, cancel)?,
            None => Vec::new(),
        };
        Ok(ActiveCerts { config, warnings })
    }
}

/// Reads `path` under the shared lock (waiting at most `wait`, or until
/// `cancel` is set), refuses a table above 16 KiB unless `allow_large`,
/// and returns its warnings. The table is validated once, by the read.
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
    if exceeds_guest_limit(size as u64, allow_large) {
        return Err(ConfigError::TooLargeForGuests {
            path: path.to_owned(),
            size,
        });
    }
    Ok(locked.table.warnings())
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
/// with another before it refuses it.
pub const MAX_UPDATE_RACES: u32 = 8;

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
        self.snapshot().0
    }

    /// The current configuration and its generation, read together.
    fn snapshot(&self) -> (Arc<ActiveCerts>, u64) {
        let guard = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        // The generation only changes under the write lock.
        (Arc::clone(&guard), self.generation())
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
    /// the exclusive lock. The validation runs without holding anything.
    ///
    /// A change is installed only over the configuration it was computed
    /// from: if another update won the race meanwhile, `change` is applied
    /// again to the newer configuration, up to [`MAX_UPDATE_RACES`] times;
    /// then the update is refused with [`ConfigError::UpdateConflict`]
    /// rather than installed over a configuration it never saw. So no
    /// update is ever lost. On error nothing changes. Returns the previous
    /// and the new configuration.
    pub fn update(
        &self,
        rereads_file: bool,
        change: impl Fn(&CertsConfig) -> CertsConfig,
    ) -> Result<(Arc<ActiveCerts>, Arc<ActiveCerts>), ConfigError> {
        for _ in 0..=MAX_UPDATE_RACES {
            let (previous, generation) = self.snapshot();
            let config = change(&previous.config);
            let active = if rereads_file {
                let wait = config.timeout();
                ActiveCerts::validate(config, wait)?
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
            if self.generation() == generation {
                let active = Arc::new(active);
                let previous = std::mem::replace(&mut *guard, Arc::clone(&active));
                self.inner.generation.fetch_add(1, Ordering::AcqRel);
                return Ok((previous, active));
            }
        }
        Err(ConfigError::UpdateConflict {
            races: MAX_UPDATE_RACES + 1,
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
