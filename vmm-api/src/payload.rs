//! What the guest runs: Cloud Hypervisor's `payload` section, plus the
//! built-in test guest that `snp-vmm` actually runs.
//!
//! ```json
//! {"test_guest": {"kind": "attest", "requests": 3, "interval_ms": 100},
//!  "host_data": "00…(64 hex digits)"}
//! ```
//!
//! Cloud Hypervisor's fields (`kernel`, `firmware`, `cmdline`,
//! `initramfs`, `igvm`, `host_data`) are accepted so that a Cloud
//! Hypervisor configuration reads without an "unknown field" error, but
//! `snp-vmm` runs only its built-in test guests: [`PayloadConfig::validate`]
//! refuses all of them except `host_data`, kept for SNP launches. The
//! command line's `--payload attest,requests=3` is
//! `{"test_guest": {"kind": "attest", "requests": 3}}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Length of `host_data` in hexadecimal digits: 32 bytes.
pub const HOST_DATA_HEX_LEN: usize = 64;

/// The `payload` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// The built-in guest to run; none: the vCPUs stay idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_guest: Option<TestGuestConfig>,
    /// Cloud Hypervisor's firmware image. Refused: not supported here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// Cloud Hypervisor's kernel image. Refused: not supported here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Cloud Hypervisor's kernel command line. Refused: not supported here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Cloud Hypervisor's initramfs. Refused: not supported here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Cloud Hypervisor's IGVM file. Refused: not supported here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub igvm: Option<PathBuf>,
    /// SNP launch host data: 32 bytes as 64 hexadecimal digits. Accepted
    /// and kept for SNP launches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

/// A built-in test guest, tagged by `kind` (the command line's leading
/// word: `--payload attest,requests=3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TestGuestConfig {
    /// The attestation guest: asks for the size, requests the
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
    /// The SEV-SNP attestation guest (needs `platform.sev_snp`): 64-bit,
    /// asks through the real certificate exit (`SVM_VMGEXIT_EXT_GUEST_REQUEST`),
    /// with the same parameters as `attest`.
    SnpAttest {
        /// Requests to make before terminating, at least 1. Default 1.
        #[serde(default = "default_requests")]
        requests: u32,
        /// Pause between requests in milliseconds. Default 0.
        #[serde(default)]
        interval_ms: u32,
        /// Pause before retrying a busy answer, in milliseconds. Default 10.
        #[serde(default = "default_retry_ms")]
        retry_ms: u32,
        /// Busy answers retried per request before giving up. Default 100.
        #[serde(default = "default_max_busy_retries")]
        max_busy_retries: u32,
        /// The encryption bit's position in page-table entries (CPUID
        /// 0x8000001F EBX[5:0] on the host). Default 51.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c_bit: Option<u8>,
    },
}

/// Default `requests` of the test guests.
pub const DEFAULT_REQUESTS: u32 = 1;
/// Default `retry_ms` of the test guests.
pub const DEFAULT_RETRY_MS: u32 = 10;
/// Default `max_busy_retries` of the test guests.
pub const DEFAULT_MAX_BUSY_RETRIES: u32 = 100;

fn default_retry_ms() -> u32 {
    DEFAULT_RETRY_MS
}

fn default_max_busy_retries() -> u32 {
    DEFAULT_MAX_BUSY_RETRIES
}

fn default_requests() -> u32 {
    DEFAULT_REQUESTS
}

impl TestGuestConfig {
    /// The attestation guest with every parameter at its default.
    pub fn attest() -> TestGuestConfig {
        TestGuestConfig::Attest {
            requests: default_requests(),
            interval_ms: 0,
            retry_ms: default_retry_ms(),
            max_busy_retries: default_max_busy_retries(),
        }
    }

    /// The guest's name, as in `kind`.
    pub fn name(&self) -> &'static str {
        match self {
            TestGuestConfig::Attest { .. } => "attest",
            TestGuestConfig::SnpAttest { .. } => "snp-attest",
        }
    }
}

impl PayloadConfig {
    /// A payload running `guest` and nothing else.
    pub fn test_guest(guest: TestGuestConfig) -> PayloadConfig {
        PayloadConfig {
            test_guest: Some(guest),
            ..PayloadConfig::default()
        }
    }

    /// Refuses what `snp-vmm` cannot run, and checks the test guest's
    /// parameters and `host_data`.
    pub fn validate(&self) -> Result<(), PayloadError> {
        for (field, given) in [
            ("firmware", self.firmware.is_some()),
            ("kernel", self.kernel.is_some()),
            ("cmdline", self.cmdline.is_some()),
            ("initramfs", self.initramfs.is_some()),
            ("igvm", self.igvm.is_some()),
        ] {
            if given {
                return Err(PayloadError::Unsupported(field));
            }
        }
        if let Some(data) = &self.host_data {
            if data.len() != HOST_DATA_HEX_LEN || !data.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(PayloadError::HostData(data.clone()));
            }
        }
        match self.test_guest {
            Some(
                TestGuestConfig::Attest { requests: 0, .. }
                | TestGuestConfig::SnpAttest { requests: 0, .. },
            ) => Err(PayloadError::NoRequests),
            _ => Ok(()),
        }
    }
}

/// A payload `snp-vmm` cannot run. Messages name the field as in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// A Cloud Hypervisor payload field other than `host_data`.
    #[error(
        "payload.{0} is not supported: snp-vmm runs only its built-in test guests (payload.test_guest)"
    )]
    Unsupported(&'static str),
    /// `host_data` is not 32 bytes in hexadecimal.
    #[error(
        "payload.host_data must be {HOST_DATA_HEX_LEN} hexadecimal digits (32 bytes), got {0:?}"
    )]
    HostData(String),
    /// `test_guest.requests` is 0.
    #[error("payload.test_guest.requests must be at least 1")]
    NoRequests,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn shapes() {
        let p: PayloadConfig = serde_json::from_value(json!({
            "test_guest": {"kind": "attest", "requests": 3}
        }))
        .unwrap();
        assert_eq!(
            p.test_guest,
            Some(TestGuestConfig::Attest {
                requests: 3,
                interval_ms: 0,
                retry_ms: 10,
                max_busy_retries: 100
            })
        );
        p.validate().unwrap();
        let empty: PayloadConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty, PayloadConfig::default());
        assert_eq!(serde_json::to_value(&empty).unwrap(), json!({}));
        assert!(serde_json::from_value::<PayloadConfig>(json!({"kind": "attest"})).is_err());
        assert!(
            serde_json::from_value::<PayloadConfig>(json!({"test_guest": {"kind": "linux"}}))
                .is_err()
        );
    }

    #[test]
    fn cloud_hypervisor_fields_parse_and_are_refused() {
        for field in ["firmware", "kernel", "cmdline", "initramfs", "igvm"] {
            let p: PayloadConfig = serde_json::from_value(json!({ field: "/x" })).unwrap();
            let err = p.validate().unwrap_err();
            assert_eq!(err, PayloadError::Unsupported(field));
            assert!(err.to_string().contains("built-in test guests"), "{err}");
        }
        let good = "ab".repeat(32);
        let p: PayloadConfig = serde_json::from_value(json!({"host_data": good})).unwrap();
        p.validate().unwrap();
        for bad in ["ab", &"zz".repeat(32)] {
            let p: PayloadConfig = serde_json::from_value(json!({"host_data": bad})).unwrap();
            assert!(matches!(p.validate(), Err(PayloadError::HostData(_))));
        }
        let none = PayloadConfig::test_guest(TestGuestConfig::Attest {
            requests: 0,
            interval_ms: 0,
            retry_ms: 1,
            max_busy_retries: 1,
        });
        assert_eq!(none.validate(), Err(PayloadError::NoRequests));
    }
}
