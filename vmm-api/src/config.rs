//! The VM configuration: the body of `PUT vm.create`, and what the VMM
//! builds from its command line.
//!
//! ```json
//! {
//!   "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
//!   "memory": {"size": 67108864},
//!   "platform": {"sev_snp": false},
//!   "snp": {"certs_file": "/var/lib/snp/certs.bin", "certs_timeout": 100,
//!           "busy_budget": 30000, "on_error": "empty", "allow_large": false,
//!           "startup_wait": 30000, "doorbell": true},
//!   "payload": {"test_guest": {"kind": "attest", "requests": 10, "interval_ms": 100}}
//! }
//! ```
//!
//! `cpus`, `memory`, `platform` and `payload` use Cloud Hypervisor's field
//! names (see [`crate::payload`] for the payload). Every section and every
//! field has a default, so `{}` is a valid configuration (a VM with no
//! payload: its vCPUs stay idle); unknown fields are refused. [`VmConfig::validate`] does the structural checks,
//! the certs rules among them through snp-certs's
//! [`CertsConfig::check`]; whether the certs file holds a valid table is
//! checked by the VMM with [`CertsConfig::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snp_certs_types::settings::{
    CertsConfig, DEFAULT_BUSY_BUDGET_MS, DEFAULT_CERTS_TIMEOUT_MS, OnError,
};
use thiserror::Error;

use crate::payload::{PayloadConfig, PayloadError, TestGuestConfig};

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
    /// The kind of VM (Cloud Hypervisor's `platform` section, the part of
    /// it that applies here).
    #[serde(default)]
    pub platform: PlatformConfig,
    /// SNP certificate serving.
    #[serde(default)]
    pub snp: SnpConfig,
    /// What the guest runs; none: the vCPUs stay idle.
    #[serde(default)]
    pub payload: Option<PayloadConfig>,
}

/// vCPU configuration (`--cpus boot=N,max=N`), in Cloud Hypervisor's
/// names. vCPUs cannot be hot-plugged here, so `max_vcpus` must equal
/// `boot_vcpus`; absent, it is `boot_vcpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CpusFields")]
pub struct CpusConfig {
    /// vCPUs started at boot, 1 to [`MAX_BOOT_CPUS`]. Default 1.
    pub boot_vcpus: u8,
    /// Most vCPUs the VM may have: equal to `boot_vcpus`.
    pub max_vcpus: u8,
}

/// [`CpusConfig`] as it comes in: `max_vcpus` may be absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CpusFields {
    #[serde(default = "default_boot")]
    boot_vcpus: u8,
    #[serde(default)]
    max_vcpus: Option<u8>,
}

impl From<CpusFields> for CpusConfig {
    fn from(f: CpusFields) -> CpusConfig {
        CpusConfig {
            boot_vcpus: f.boot_vcpus,
            max_vcpus: f.max_vcpus.unwrap_or(f.boot_vcpus),
        }
    }
}

fn default_boot() -> u8 {
    1
}

impl CpusConfig {
    /// `n` vCPUs at boot, and at most.
    pub fn with_boot(n: u8) -> CpusConfig {
        CpusConfig {
            boot_vcpus: n,
            max_vcpus: n,
        }
    }
}

impl Default for CpusConfig {
    fn default() -> CpusConfig {
        CpusConfig::with_boot(default_boot())
    }
}

/// The kind of VM (`--platform sev_snp=on`), a subset of Cloud
/// Hypervisor's `platform` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Launch an SEV-SNP guest. Default false: a default VM (the built-in
    /// test guests use the emulated doorbell there).
    #[serde(default)]
    pub sev_snp: bool,
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
    /// [`snp_certs_types::settings::MAX_CERTS_TIMEOUT_MS`]. Default [`DEFAULT_CERTS_TIMEOUT_MS`].
    #[serde(default = "default_certs_timeout")]
    pub certs_timeout: u64,
    /// Longest time in milliseconds the guest is answered busy in a row,
    /// at most [`snp_certs_types::settings::MAX_BUSY_BUDGET_MS`]. Default [`DEFAULT_BUSY_BUDGET_MS`].
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

/// A structurally invalid configuration. Messages name the field as in
/// JSON.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// `cpus.boot_vcpus` out of range.
    #[error("cpus.boot_vcpus must be between 1 and {MAX_BOOT_CPUS}, got {0}")]
    BootCpus(u8),
    /// `cpus.max_vcpus` differs from `cpus.boot_vcpus`.
    #[error(
        "cpus.max_vcpus must equal cpus.boot_vcpus ({boot}): snp-vmm cannot hot-plug vCPUs, got {max}"
    )]
    MaxCpus {
        /// `boot_vcpus`.
        boot: u8,
        /// `max_vcpus`.
        max: u8,
    },
    /// `memory.size` out of range.
    #[error("memory.size must be between 1 MiB and 4 GiB, got {0} bytes")]
    MemorySize(u64),
    /// `memory.size` not a multiple of 4 KiB.
    #[error("memory.size must be a multiple of 4 KiB, got {0} bytes")]
    MemoryAlign(u64),
    /// A certs setting breaks snp-certs's rules.
    #[error("snp")]
    Certs(#[source] snp_certs_types::SettingsError),
    /// `snp.startup_wait` too large.
    #[error("snp.startup_wait must be at most {MAX_STARTUP_WAIT_MS} ms, got {0}")]
    StartupWait(u64),
    /// The payload cannot run here.
    #[error("Invalid payload")]
    Payload(#[source] PayloadError),
}

impl VmConfig {
    /// Structural checks: ranges, alignment and snp-certs's rules for the
    /// certs settings. Does not open the certs file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let CpusConfig {
            boot_vcpus: boot,
            max_vcpus: max,
        } = self.cpus;
        if !(1..=MAX_BOOT_CPUS).contains(&boot) {
            return Err(ConfigError::BootCpus(boot));
        }
        if max != boot {
            return Err(ConfigError::MaxCpus { boot, max });
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
        match &self.payload {
            Some(payload) => payload.validate().map_err(ConfigError::Payload),
            None => Ok(()),
        }
    }

    /// The built-in test guest the VM runs, if any.
    pub fn test_guest(&self) -> Option<&TestGuestConfig> {
        self.payload.as_ref().and_then(|p| p.test_guest.as_ref())
    }

    /// `payload.host_data` as the 32 bytes an SNP launch takes; `None`
    /// when absent (or malformed, which [`VmConfig::validate`] refuses).
    pub fn host_data(&self) -> Option<[u8; 32]> {
        let hex = self.payload.as_ref()?.host_data.as_deref()?;
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        (hex.len() == 64).then_some(out)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
