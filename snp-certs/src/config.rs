//! A VM's certs configuration and the handle that swaps it at run time.
//!
//! The configuration is two values, named as in the QEMU review:
//! `certs_file`, the certificate table to serve (none: guests get an empty
//! table), and `certs_timeout`, the maximum time in milliseconds a request
//! waits for the shared lock (0: a single try).
//!
//! [`SharedCertsConfig`] holds the current configuration behind an
//! `Arc`: a request takes a snapshot when it starts and finishes with it,
//! while [`SharedCertsConfig::replace`] makes every later request use the
//! new one. A configuration is [`validated`](CertsConfig::validate) before
//! it is accepted, so a bad file is refused when it is set, not first when
//! a guest asks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::file::{CertsFileError, CertsReader};
use crate::table::{CertTable, TableWarning};

/// Default `certs_timeout`: 100 ms.
pub const DEFAULT_CERTS_TIMEOUT_MS: u64 = 100;

/// Largest accepted `certs_timeout`: 10 s. The vCPU is stopped while it
/// waits, and Linux guests report soft lockups after about 20 s.
pub const MAX_CERTS_TIMEOUT_MS: u64 = 10_000;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// `certs_timeout` is above [`MAX_CERTS_TIMEOUT_MS`].
    #[error("Certs timeout {0} ms is above the maximum of {MAX_CERTS_TIMEOUT_MS} ms")]
    TimeoutTooLarge(u64),
    /// `certs_file` is a relative path.
    #[error("Certs file {0} must be an absolute path")]
    RelativePath(PathBuf),
    /// `certs_file` cannot be read as a valid table.
    #[error(transparent)]
    File(#[from] CertsFileError),
}

/// A VM's certs configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsConfig {
    /// The certificate table to serve; `None` serves an empty table.
    pub certs_file: Option<PathBuf>,
    /// Maximum time in milliseconds to wait for the shared lock.
    #[serde(default = "default_timeout")]
    pub certs_timeout: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_CERTS_TIMEOUT_MS
}

impl Default for CertsConfig {
    fn default() -> CertsConfig {
        CertsConfig {
            certs_file: None,
            certs_timeout: DEFAULT_CERTS_TIMEOUT_MS,
        }
    }
}

impl CertsConfig {
    /// A configuration serving `certs_file` with the default timeout.
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

    /// Checks the configuration as a guest request would use it: the
    /// timeout is in range, the path is absolute, and the file is a regular
    /// file holding a valid table, read under the shared lock (waiting at
    /// most the timeout). Returns the table's warnings.
    pub fn validate(&self) -> Result<Vec<TableWarning>, ConfigError> {
        if self.certs_timeout > MAX_CERTS_TIMEOUT_MS {
            return Err(ConfigError::TimeoutTooLarge(self.certs_timeout));
        }
        let Some(path) = &self.certs_file else {
            return Ok(Vec::new());
        };
        if !path.is_absolute() {
            return Err(ConfigError::RelativePath(path.clone()));
        }
        validate_file(path, self.timeout())
    }
}

/// Reads `path` under the shared lock and returns its table's warnings.
pub fn validate_file(path: &Path, timeout: Duration) -> Result<Vec<TableWarning>, ConfigError> {
    let mut reader = CertsReader::new();
    let locked = reader.lock_and_read(path, timeout)?;
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
    current: RwLock<Arc<CertsConfig>>,
    generation: AtomicU64,
}

impl SharedCertsConfig {
    /// A handle holding `config` (not validated here).
    pub fn new(config: CertsConfig) -> SharedCertsConfig {
        SharedCertsConfig {
            inner: Arc::new(Shared {
                current: RwLock::new(Arc::new(config)),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// A snapshot of the current configuration.
    pub fn current(&self) -> Arc<CertsConfig> {
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

    /// Changes only `certs_timeout` (range-checked), keeping the file: the
    /// file is not read again, so this works while a management tool holds
    /// the exclusive lock. Returns the previous configuration.
    pub fn set_timeout(&self, certs_timeout: u64) -> Result<Arc<CertsConfig>, ConfigError> {
        if certs_timeout > MAX_CERTS_TIMEOUT_MS {
            return Err(ConfigError::TimeoutTooLarge(certs_timeout));
        }
        let mut guard = self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let config = CertsConfig {
            certs_file: guard.certs_file.clone(),
            certs_timeout,
        };
        let previous = std::mem::replace(&mut *guard, Arc::new(config));
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(previous)
    }

    /// Validates `config` and, if it is good, makes it current. Requests in
    /// flight finish with the configuration they started with. On error
    /// nothing changes. Returns the previous configuration and the new
    /// file's warnings.
    pub fn replace(
        &self,
        config: CertsConfig,
    ) -> Result<(Arc<CertsConfig>, Vec<TableWarning>), ConfigError> {
        let warnings = config.validate()?;
        let mut guard = self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = std::mem::replace(&mut *guard, Arc::new(config));
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok((previous, warnings))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::guid::CertKind;
    use crate::lock::{self, LockKind};
    use crate::table::TableBuilder;

    fn valid_file(dir: &Path) -> PathBuf {
        let mut b = TableBuilder::new();
        b.add(CertKind::Vcek, vec![0x30, 1, 2]).unwrap();
        let path = dir.join("certs.bin");
        fs::write(&path, b.build().unwrap()).unwrap();
        path
    }

    #[test]
    fn validate_checks_timeout_path_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = valid_file(dir.path());
        assert!(CertsConfig::with_file(&path).validate().unwrap().is_empty());
        assert!(CertsConfig::default().validate().unwrap().is_empty());
        let too_long = CertsConfig {
            certs_timeout: MAX_CERTS_TIMEOUT_MS + 1,
            ..CertsConfig::default()
        };
        assert!(matches!(
            too_long.validate(),
            Err(ConfigError::TimeoutTooLarge(_))
        ));
        let relative = CertsConfig::with_file("certs.bin");
        assert!(matches!(
            relative.validate(),
            Err(ConfigError::RelativePath(_))
        ));
        let missing = CertsConfig::with_file(dir.path().join("nope"));
        assert!(matches!(missing.validate(), Err(ConfigError::File(_))));
    }

    #[test]
    fn replace_is_all_or_nothing_and_counts_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = valid_file(dir.path());
        let shared = SharedCertsConfig::new(CertsConfig::default());
        let snapshot = shared.current();
        shared.replace(CertsConfig::with_file(&path)).unwrap();
        assert_eq!(shared.generation(), 1);
        assert_eq!(snapshot.certs_file, None, "a snapshot keeps its config");
        assert!(shared.replace(CertsConfig::with_file(dir.path())).is_err());
        assert_eq!(shared.current().certs_file.as_deref(), Some(path.as_path()));
        assert_eq!(shared.generation(), 1);
    }

    #[test]
    fn set_timeout_does_not_touch_the_locked_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = valid_file(dir.path());
        let shared = SharedCertsConfig::new(CertsConfig::with_file(&path));
        let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
        lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
        let previous = shared.set_timeout(7).unwrap();
        assert_eq!(previous.certs_timeout, DEFAULT_CERTS_TIMEOUT_MS);
        assert_eq!(shared.current().certs_timeout, 7);
        assert_eq!(shared.current().certs_file.as_deref(), Some(path.as_path()));
        assert!(shared.set_timeout(MAX_CERTS_TIMEOUT_MS + 1).is_err());
        assert_eq!(shared.generation(), 1);
    }
}
