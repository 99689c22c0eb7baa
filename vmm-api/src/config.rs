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
//! payload: its vCPUs stay idle). Cloud Hypervisor's other fields
//! (`serial`, `console`, `rng`, `disks`, `memory.shared`, ...) are
//! accepted and kept aside, as [`crate::ch_fields`] says; any other
//! unknown field is refused. [`VmConfig::validate`] does the structural
//! checks, the certs rules among them through snp-certs's
//! [`CertsConfig::check`], and refuses the Cloud Hypervisor settings
//! snp-vmm cannot honour; [`VmConfig::warnings`] names the ones it
//! ignores. Whether the certs file holds a valid table is checked by the
//! VMM with [`CertsConfig::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use snp_certs_types::settings::{
    CertsConfig, DEFAULT_BUSY_BUDGET_MS, DEFAULT_CERTS_TIMEOUT_MS, OnError,
};
use thiserror::Error;

use crate::ch_fields::{ChFields, Unsupported};
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

/// A whole VM configuration. Its JSON form is [`OwnFields`] with the
/// Cloud Hypervisor fields of [`VmConfig::cloud_hypervisor`] in their
/// places.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmConfig {
    /// vCPUs.
    pub cpus: CpusConfig,
    /// Guest memory.
    pub memory: MemoryConfig,
    /// The kind of VM (Cloud Hypervisor's `platform` section, the part of
    /// it that applies here).
    pub platform: PlatformConfig,
    /// SNP certificate serving.
    pub snp: SnpConfig,
    /// What the guest runs; none: the vCPUs stay idle.
    pub payload: Option<PayloadConfig>,
    /// Cloud Hypervisor's fields that snp-vmm does not implement, as
    /// given (see [`crate::ch_fields`]).
    pub cloud_hypervisor: ChFields,
}

/// The fields snp-vmm reads, as JSON carries them; unknown ones refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnFields {
    #[serde(default)]
    cpus: CpusConfig,
    #[serde(default)]
    memory: MemoryConfig,
    #[serde(default)]
    platform: PlatformConfig,
    #[serde(default)]
    snp: SnpConfig,
    #[serde(default)]
    payload: Option<PayloadConfig>,
}

impl TryFrom<serde_json::Value> for VmConfig {
    type Error = String;

    /// Takes Cloud Hypervisor's fields aside, then reads the rest; an
    /// error names the field at fault by its path (`cpus.boot_vcpus: ...`).
    fn try_from(mut value: serde_json::Value) -> Result<VmConfig, String> {
        let cloud_hypervisor = ChFields::take_from(&mut value);
        let own: OwnFields = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if matches!(path.as_str(), "" | "." | "?") {
                e.into_inner().to_string()
            } else {
                format!("{path}: {}", e.into_inner())
            }
        })?;
        Ok(VmConfig {
            cpus: own.cpus,
            memory: own.memory,
            platform: own.platform,
            snp: own.snp,
            payload: own.payload,
            cloud_hypervisor,
        })
    }
}

impl<'de> Deserialize<'de> for VmConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<VmConfig, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        VmConfig::try_from(value).map_err(serde::de::Error::custom)
    }
}

impl Serialize for VmConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let own = OwnFields {
            cpus: self.cpus,
            memory: self.memory.clone(),
            platform: self.platform,
            snp: self.snp.clone(),
            payload: self.payload.clone(),
        };
        let mut value = serde_json::to_value(own).map_err(serde::ser::Error::custom)?;
        self.cloud_hypervisor.put_into(&mut value);
        value.serialize(serializer)
    }
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
    /// `payload.host_data` on a VM that is not an SEV-SNP guest.
    #[error(
        "payload.host_data is only used by SEV-SNP guests: add platform.sev_snp (--platform sev_snp=on)"
    )]
    HostDataWithoutSnp,
    /// A Cloud Hypervisor setting snp-vmm cannot honour.
    #[error(transparent)]
    CloudHypervisor(#[from] Unsupported),
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
        self.cloud_hypervisor.check()?;
        if let Some(payload) = &self.payload {
            payload.validate().map_err(ConfigError::Payload)?;
            if payload.host_data.is_some() && !self.platform.sev_snp {
                return Err(ConfigError::HostDataWithoutSnp);
            }
        }
        Ok(())
    }

    /// One warning per Cloud Hypervisor setting that snp-vmm accepts and
    /// ignores (`serial`, `memory.shared`, ...), saying why; empty when
    /// there is none. The VMM logs them and `PUT vm.create` answers them.
    pub fn warnings(&self) -> Vec<String> {
        self.cloud_hypervisor.warnings()
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
