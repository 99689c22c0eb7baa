//! The VM configuration: the body of `PUT vm.create`, and what the VMM
//! builds from its command line.
//!
//! ```json
//! {
//!   "cpus": {"boot": 1},
//!   "memory": {"size": 67108864},
//!   "snp": {"certs_file": "/var/lib/snp/certs.bin", "certs_timeout": 100, "doorbell": true},
//!   "payload": {"kind": "attest", "requests": 10, "interval_ms": 100}
//! }
//! ```
//!
//! Every section and every field has a default, so `{}` is a valid
//! configuration; unknown fields are refused. [`VmConfig::validate`] does
//! the structural checks; whether the certs file holds a valid table is
//! checked by the VMM with [`snp_certs::config::CertsConfig::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snp_certs::config::{CertsConfig, DEFAULT_CERTS_TIMEOUT_MS, MAX_CERTS_TIMEOUT_MS};
use thiserror::Error;

/// Most vCPUs a configuration may ask for; the VMM may refuse fewer if KVM
/// allows fewer.
pub const MAX_BOOT_CPUS: u8 = 8;
/// Default guest memory: 64 MiB.
pub const DEFAULT_MEMORY_SIZE: u64 = 64 << 20;
/// Smallest guest memory: 1 MiB.
pub const MIN_MEMORY_SIZE: u64 = 1 << 20;
/// Largest guest memory: 4 GiB.
pub const MAX_MEMORY_SIZE: u64 = 4 << 30;
/// Guest memory must be a multiple of this: 4 KiB.
pub const MEMORY_ALIGN: u64 = 4 << 10;

/// A whole VM configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest memory.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// SNP certificate serving.
    #[serde(default)]
    pub snp: SnpConfig,
    /// What the guest runs.
    #[serde(default)]
    pub payload: PayloadConfig,
}

/// vCPU configuration (`--cpus boot=N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs started at boot, 1 to [`MAX_BOOT_CPUS`]. Default 1.
    #[serde(default = "default_boot")]
    pub boot: u8,
}

fn default_boot() -> u8 {
    1
}

impl Default for CpusConfig {
    fn default() -> CpusConfig {
        CpusConfig {
            boot: default_boot(),
        }
    }
}

/// Memory configuration (`--memory size=64M`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Guest RAM in bytes: a multiple of 4 KiB from 1 MiB to 4 GiB.
    /// Default 64 MiB.
    #[serde(default = "default_memory")]
    pub size: u64,
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY_SIZE
}

impl Default for MemoryConfig {
    fn default() -> MemoryConfig {
        MemoryConfig {
            size: default_memory(),
        }
    }
}

/// SNP certificate serving (`--snp certs-file=P,certs-timeout=MS,doorbell=on`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpConfig {
    /// Absolute path of the certificate table; `null` serves an empty table.
    #[serde(default)]
    pub certs_file: Option<PathBuf>,
    /// Maximum time in milliseconds to wait for the shared lock, at most
    /// [`MAX_CERTS_TIMEOUT_MS`]. Default [`DEFAULT_CERTS_TIMEOUT_MS`].
    #[serde(default = "default_certs_timeout")]
    pub certs_timeout: u64,
    /// Answer the emulated guest-request doorbell, for hosts without SNP.
    /// A development and test feature. Default false.
    #[serde(default)]
    pub doorbell: bool,
}

fn default_certs_timeout() -> u64 {
    DEFAULT_CERTS_TIMEOUT_MS
}

impl Default for SnpConfig {
    fn default() -> SnpConfig {
        SnpConfig {
            certs_file: None,
            certs_timeout: default_certs_timeout(),
            doorbell: false,
        }
    }
}

impl SnpConfig {
    /// The certs part of this configuration, for the snp-certs engine.
    pub fn certs_config(&self) -> CertsConfig {
        CertsConfig {
            certs_file: self.certs_file.clone(),
            certs_timeout: self.certs_timeout,
        }
    }
}

/// What the guest runs. Internally tagged by `kind`, mirroring the command
/// line's leading word: `--payload attest,requests=3` is
/// `{"kind": "attest", "requests": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PayloadConfig {
    /// The built-in attestation guest: asks for the size, requests the
    /// certificates, checks them, reports, and repeats.
    Attest {
        /// Requests to make before halting, at least 1. Default 1.
        #[serde(default = "default_requests")]
        requests: u32,
        /// Pause between requests in milliseconds. Default 0.
        #[serde(default)]
        interval_ms: u32,
    },
}

fn default_requests() -> u32 {
    1
}

impl Default for PayloadConfig {
    fn default() -> PayloadConfig {
        PayloadConfig::Attest {
            requests: default_requests(),
            interval_ms: 0,
        }
    }
}

/// A structurally invalid configuration. Messages name the field as in
/// JSON.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `cpus.boot` out of range.
    #[error("cpus.boot must be between 1 and {MAX_BOOT_CPUS}, got {0}")]
    BootCpus(u8),
    /// `memory.size` out of range.
    #[error("memory.size must be between 1 MiB and 4 GiB, got {0} bytes")]
    MemorySize(u64),
    /// `memory.size` not a multiple of 4 KiB.
    #[error("memory.size must be a multiple of 4 KiB, got {0} bytes")]
    MemoryAlign(u64),
    /// `snp.certs_file` is relative.
    #[error("snp.certs_file must be an absolute path, got {0:?}")]
    RelativeCertsFile(PathBuf),
    /// `snp.certs_timeout` too large.
    #[error("snp.certs_timeout must be at most {MAX_CERTS_TIMEOUT_MS} ms, got {0}")]
    CertsTimeout(u64),
    /// `payload.requests` is 0.
    #[error("payload.requests must be at least 1")]
    NoRequests,
}

impl VmConfig {
    /// Structural checks: ranges, alignment and an absolute certs path. Does
    /// not open the certs file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let boot = self.cpus.boot;
        if !(1..=MAX_BOOT_CPUS).contains(&boot) {
            return Err(ConfigError::BootCpus(boot));
        }
        let size = self.memory.size;
        if !(MIN_MEMORY_SIZE..=MAX_MEMORY_SIZE).contains(&size) {
            return Err(ConfigError::MemorySize(size));
        }
        if size % MEMORY_ALIGN != 0 {
            return Err(ConfigError::MemoryAlign(size));
        }
        if let Some(path) = &self.snp.certs_file {
            if !path.is_absolute() {
                return Err(ConfigError::RelativeCertsFile(path.clone()));
            }
        }
        if self.snp.certs_timeout > MAX_CERTS_TIMEOUT_MS {
            return Err(ConfigError::CertsTimeout(self.snp.certs_timeout));
        }
        match self.payload {
            PayloadConfig::Attest { requests: 0, .. } => Err(ConfigError::NoRequests),
            PayloadConfig::Attest { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_object_is_the_default() {
        let c: VmConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c, VmConfig::default());
        assert_eq!(c.cpus.boot, 1);
        assert_eq!(c.memory.size, 64 << 20);
        assert_eq!(c.snp.certs_timeout, 100);
        assert!(!c.snp.doorbell);
        assert_eq!(
            c.payload,
            PayloadConfig::Attest {
                requests: 1,
                interval_ms: 0
            }
        );
        c.validate().unwrap();
    }

    #[test]
    fn full_config_round_trips() {
        let v = json!({
            "cpus": {"boot": 2},
            "memory": {"size": 134217728u64},
            "snp": {"certs_file": "/c.bin", "certs_timeout": 50, "doorbell": true},
            "payload": {"kind": "attest", "requests": 7, "interval_ms": 20}
        });
        let c: VmConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), v);
        assert_eq!(
            c.snp.certs_config(),
            CertsConfig {
                certs_file: Some("/c.bin".into()),
                certs_timeout: 50
            }
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        for v in [
            json!({"cpu": {}}),
            json!({"cpus": {"boot": 1, "max": 2}}),
            json!({"memory": {"size": 4096, "shared": true}}),
            json!({"snp": {"certs-file": "/x"}}),
            json!({"payload": {"kind": "attest", "count": 1}}),
        ] {
            assert!(
                serde_json::from_value::<VmConfig>(v.clone()).is_err(),
                "{v}"
            );
        }
        assert!(serde_json::from_value::<VmConfig>(json!({"payload": {"kind": "linux"}})).is_err());
        assert!(serde_json::from_value::<VmConfig>(json!({"payload": {"requests": 1}})).is_err());
    }

    #[test]
    fn validation() {
        let check = |f: &dyn Fn(&mut VmConfig)| {
            let mut c = VmConfig::default();
            f(&mut c);
            c.validate()
        };
        assert_eq!(check(&|c| c.cpus.boot = 0), Err(ConfigError::BootCpus(0)));
        assert_eq!(check(&|c| c.cpus.boot = 9), Err(ConfigError::BootCpus(9)));
        assert_eq!(check(&|c| c.cpus.boot = 8), Ok(()));
        assert_eq!(check(&|c| c.memory.size = 1 << 20), Ok(()));
        assert_eq!(check(&|c| c.memory.size = 4 << 30), Ok(()));
        assert_eq!(
            check(&|c| c.memory.size = (1 << 20) - 4096),
            Err(ConfigError::MemorySize((1 << 20) - 4096))
        );
        assert_eq!(
            check(&|c| c.memory.size = (4 << 30) + 4096),
            Err(ConfigError::MemorySize((4 << 30) + 4096))
        );
        assert_eq!(
            check(&|c| c.memory.size = (2 << 20) + 1),
            Err(ConfigError::MemoryAlign((2 << 20) + 1))
        );
        assert_eq!(
            check(&|c| c.snp.certs_file = Some("certs.bin".into())),
            Err(ConfigError::RelativeCertsFile("certs.bin".into()))
        );
        assert_eq!(
            check(&|c| c.snp.certs_timeout = MAX_CERTS_TIMEOUT_MS),
            Ok(())
        );
        assert_eq!(
            check(&|c| c.snp.certs_timeout = MAX_CERTS_TIMEOUT_MS + 1),
            Err(ConfigError::CertsTimeout(MAX_CERTS_TIMEOUT_MS + 1))
        );
        assert_eq!(
            check(&|c| c.payload = PayloadConfig::Attest {
                requests: 0,
                interval_ms: 0
            }),
            Err(ConfigError::NoRequests)
        );
    }
}
