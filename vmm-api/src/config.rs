//! The VM configuration: the body of `PUT vm.create`, and what the VMM
//! builds from its command line.
//!
//! ```json
//! {
//!   "cpus": {"boot": 1},
//!   "memory": {"size": 67108864},
//!   "snp": {"certs_file": "/var/lib/snp/certs.bin", "certs_timeout": 100,
//!           "busy_budget": 30000, "on_error": "empty", "allow_large": false,
//!           "startup_wait": 30000, "doorbell": true},
//!   "payload": {"kind": "attest", "requests": 10, "interval_ms": 100}
//! }
//! ```
//!
//! Every section and every field has a default, so `{}` is a valid
//! configuration (a VM with no payload: its vCPUs stay idle); unknown
//! fields are refused. [`VmConfig::validate`] does the structural checks,
//! the certs rules among them through snp-certs's
//! [`CertsConfig::check`]; whether the certs file holds a valid table is
//! checked by the VMM with [`CertsConfig::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snp_certs::config::{CertsConfig, DEFAULT_BUSY_BUDGET_MS, DEFAULT_CERTS_TIMEOUT_MS, OnError};
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
/// Default `snp.startup_wait`: how long creating a VM waits for a
/// management tool that holds the certs file's exclusive lock, 30 s.
pub const DEFAULT_STARTUP_WAIT_MS: u64 = 30_000;
/// Largest `snp.startup_wait`: 5 minutes.
pub const MAX_STARTUP_WAIT_MS: u64 = 300_000;

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
    /// What the guest runs; none: the vCPUs stay idle.
    #[serde(default)]
    pub payload: Option<PayloadConfig>,
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

/// SNP certificate serving
/// (`--snp certs-file=P,certs-timeout=MS,busy-budget=MS,on-error=empty,doorbell=on`).
/// The certs settings are snp-certs's [`CertsConfig`], flattened; see
/// there for their meaning and rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpConfig {
    /// Absolute path of the certificate table; `null` serves an empty table.
    #[serde(default)]
    pub certs_file: Option<PathBuf>,
    /// Maximum time in milliseconds to wait for the shared lock, at most
    /// [`snp_certs::config::MAX_CERTS_TIMEOUT_MS`]. Default [`DEFAULT_CERTS_TIMEOUT_MS`].
    #[serde(default = "default_certs_timeout")]
    pub certs_timeout: u64,
    /// Longest time in milliseconds the guest is answered busy in a row,
    /// at most [`snp_certs::config::MAX_BUSY_BUDGET_MS`]. Default [`DEFAULT_BUSY_BUDGET_MS`].
    #[serde(default = "default_busy_budget")]
    pub busy_budget: u64,
    /// The fallback answer when busy cannot help: `empty` (default) or
    /// `busy`.
    #[serde(default)]
    pub on_error: OnError,
    /// Accept tables larger than the 16 KiB a Linux guest can receive.
    #[serde(default)]
    pub allow_large: bool,
    /// How long creating the VM waits for the certs file's shared lock
    /// (a management tool may be updating it), in milliseconds, at most
    /// [`MAX_STARTUP_WAIT_MS`]. Default [`DEFAULT_STARTUP_WAIT_MS`].
    #[serde(default = "default_startup_wait")]
    pub startup_wait: u64,
    /// Answer the emulated guest-request doorbell, for hosts without SNP.
    /// A development and test feature. Default false.
    #[serde(default)]
    pub doorbell: bool,
}

fn default_certs_timeout() -> u64 {
    DEFAULT_CERTS_TIMEOUT_MS
}

fn default_busy_budget() -> u64 {
    DEFAULT_BUSY_BUDGET_MS
}

fn default_startup_wait() -> u64 {
    DEFAULT_STARTUP_WAIT_MS
}

impl Default for SnpConfig {
    fn default() -> SnpConfig {
        SnpConfig {
            certs_file: None,
            certs_timeout: default_certs_timeout(),
            busy_budget: default_busy_budget(),
            on_error: OnError::Empty,
            allow_large: false,
            startup_wait: default_startup_wait(),
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
            busy_budget: self.busy_budget,
            on_error: self.on_error,
            allow_large: self.allow_large,
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
        /// Pause before retrying a busy answer, in milliseconds (a Linux
        /// guest waits 2000). Default 10.
        #[serde(default = "default_retry_ms")]
        retry_ms: u32,
        /// Busy answers retried per request before giving up (a Linux
        /// guest gives up after 60 s, 30 retries). Default 100.
        #[serde(default = "default_max_busy_retries")]
        max_busy_retries: u32,
    },
}

fn default_retry_ms() -> u32 {
    10
}

fn default_max_busy_retries() -> u32 {
    100
}

fn default_requests() -> u32 {
    1
}

impl PayloadConfig {
    /// The attestation guest with every parameter at its default.
    pub fn attest() -> PayloadConfig {
        PayloadConfig::Attest {
            requests: default_requests(),
            interval_ms: 0,
            retry_ms: default_retry_ms(),
            max_busy_retries: default_max_busy_retries(),
        }
    }
}

/// A structurally invalid configuration. Messages name the field as in
/// JSON.
#[derive(Debug, Error)]
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
    /// A certs setting breaks snp-certs's rules.
    #[error("snp")]
    Certs(#[source] snp_certs::config::ConfigError),
    /// `snp.startup_wait` too large.
    #[error("snp.startup_wait must be at most {MAX_STARTUP_WAIT_MS} ms, got {0}")]
    StartupWait(u64),
    /// `payload.requests` is 0.
    #[error("payload.requests must be at least 1")]
    NoRequests,
}

impl VmConfig {
    /// Structural checks: ranges, alignment and snp-certs's rules for the
    /// certs settings. Does not open the certs file.
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
        self.snp
            .certs_config()
            .check()
            .map_err(ConfigError::Certs)?;
        if self.snp.startup_wait > MAX_STARTUP_WAIT_MS {
            return Err(ConfigError::StartupWait(self.snp.startup_wait));
        }
        match self.payload {
            Some(PayloadConfig::Attest { requests: 0, .. }) => Err(ConfigError::NoRequests),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use snp_certs::config::{MAX_BUSY_BUDGET_MS, MAX_CERTS_TIMEOUT_MS};

    use super::*;

    #[test]
    fn empty_object_is_the_default() {
        let c: VmConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c, VmConfig::default());
        assert_eq!(c.cpus.boot, 1);
        assert_eq!(c.memory.size, 64 << 20);
        assert_eq!(c.snp.certs_timeout, 100);
        assert_eq!(c.snp.busy_budget, 30_000);
        assert_eq!(c.snp.on_error, OnError::Empty);
        assert_eq!(c.snp.startup_wait, 30_000);
        assert!(!c.snp.doorbell && !c.snp.allow_large);
        assert_eq!(c.payload, None);
        c.validate().unwrap();
    }

    #[test]
    fn full_config_round_trips() {
        let v = json!({
            "cpus": {"boot": 2},
            "memory": {"size": 134217728u64},
            "snp": {"certs_file": "/c.bin", "certs_timeout": 50, "busy_budget": 500,
                    "on_error": "busy", "allow_large": true, "startup_wait": 10,
                    "doorbell": true},
            "payload": {"kind": "attest", "requests": 7, "interval_ms": 20,
                        "retry_ms": 5, "max_busy_retries": 30}
        });
        let c: VmConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), v);
        assert_eq!(
            c.snp.certs_config(),
            CertsConfig {
                certs_file: Some("/c.bin".into()),
                certs_timeout: 50,
                busy_budget: 500,
                on_error: OnError::Busy,
                allow_large: true,
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
            json!({"snp": {"on_error": "eio"}}),
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
            c.validate().map_err(|e| e.to_string())
        };
        let certs_error = |f: &dyn Fn(&mut VmConfig)| {
            let mut c = VmConfig::default();
            f(&mut c);
            match c.validate() {
                Err(ConfigError::Certs(e)) => e.to_string(),
                other => panic!("not a certs error: {other:?}"),
            }
        };
        assert!(
            check(&|c| c.cpus.boot = 0)
                .unwrap_err()
                .contains("cpus.boot")
        );
        assert!(check(&|c| c.cpus.boot = 9).is_err());
        assert_eq!(check(&|c| c.cpus.boot = 8), Ok(()));
        assert_eq!(check(&|c| c.memory.size = 1 << 20), Ok(()));
        assert_eq!(check(&|c| c.memory.size = 4 << 30), Ok(()));
        assert!(check(&|c| c.memory.size = (1 << 20) - 4096).is_err());
        assert!(check(&|c| c.memory.size = (4 << 30) + 4096).is_err());
        assert!(
            check(&|c| c.memory.size = (2 << 20) + 1)
                .unwrap_err()
                .contains("multiple of 4 KiB")
        );
        assert!(certs_error(&|c| c.snp.certs_file = Some("certs.bin".into())).contains("absolute"));
        assert_eq!(
            check(&|c| c.snp.certs_timeout = MAX_CERTS_TIMEOUT_MS),
            Ok(())
        );
        assert!(
            certs_error(&|c| c.snp.certs_timeout = MAX_CERTS_TIMEOUT_MS + 1).contains("timeout")
        );
        assert_eq!(check(&|c| c.snp.busy_budget = MAX_BUSY_BUDGET_MS), Ok(()));
        assert!(
            certs_error(&|c| c.snp.busy_budget = MAX_BUSY_BUDGET_MS + 1).contains("Busy budget")
        );
        assert!(
            check(&|c| c.snp.startup_wait = MAX_STARTUP_WAIT_MS + 1)
                .unwrap_err()
                .contains("startup_wait")
        );
        assert_eq!(
            check(&|c| c.payload = Some(PayloadConfig::Attest {
                requests: 0,
                interval_ms: 0,
                retry_ms: 1,
                max_busy_retries: 1,
            })),
            Err("payload.requests must be at least 1".to_owned())
        );
    }
}
