//! Cloud Hypervisor-style command-line options for [`VmConfig`]:
//! `--cpus boot=N,max=N`, `--memory size=64M`, `--platform sev_snp=on`,
//! `--snp certs_file=P,certs_timeout=MS,busy_budget=MS,on_error=empty,allow_large=on,startup_wait=MS,doorbell=on`
//! and `--payload attest,requests=N,interval_ms=M,retry_ms=M,max_busy_retries=N,host_data=HEX`.
//!
//! Shared by the VMM's command line and `snp-remote create`, so both read
//! the same strings the same way. Keys are snake_case as Cloud Hypervisor
//! writes them, each the name of its JSON field (`certs_file` is
//! `snp.certs_file`); the keys Cloud Hypervisor has are its own (`boot`,
//! `max`, `size`, `sev_snp`, and `--payload`'s `firmware`, `kernel`,
//! `cmdline`, `initramfs`, `igvm`, `host_data`). The kebab-case spellings
//! (`certs-file`, `interval-ms`) are accepted as aliases, and switches
//! take on/off/true/false in any case (see [`option_parser`]). Values are
//! taken as given: relative paths stay relative, and
//! [`VmConfig::validate`] does the range checks.

use std::path::PathBuf;

use super::config::{CpusConfig, MemoryConfig, PlatformConfig, SnpConfig, VmConfig};
use super::payload::{PayloadConfig, TestGuestConfig};
use option_parser::{OptionError, Options};

/// The option strings, each optional (absent: defaults).
#[derive(Debug, Clone, Copy, Default)]
pub struct VmOptions<'a> {
    /// `--cpus`.
    pub cpus: Option<&'a str>,
    /// `--memory`.
    pub memory: Option<&'a str>,
    /// `--platform`.
    pub platform: Option<&'a str>,
    /// `--snp`.
    pub snp: Option<&'a str>,
    /// `--payload`.
    pub payload: Option<&'a str>,
}

impl VmConfig {
    /// Builds a configuration from option strings; absent options and keys
    /// keep their defaults. Errors name the option.
    pub fn from_options(options: &VmOptions<'_>) -> Result<VmConfig, OptionError> {
        Ok(VmConfig {
            cpus: options
                .cpus
                .map(CpusConfig::parse)
                .transpose()?
                .unwrap_or_default(),
            memory: options
                .memory
                .map(MemoryConfig::parse)
                .transpose()?
                .unwrap_or_default(),
            platform: options
                .platform
                .map(PlatformConfig::parse)
                .transpose()?
                .unwrap_or_default(),
            snp: options
                .snp
                .map(SnpConfig::parse)
                .transpose()?
                .unwrap_or_default(),
            payload: options.payload.map(PayloadConfig::parse).transpose()?,
            cloud_hypervisor: Default::default(),
        })
    }
}

impl CpusConfig {
    /// Keys of `--cpus`.
    pub const KEYS: &[&str] = &["boot", "max"];

    /// Parses `boot=N,max=N`; `max` absent is `boot`.
    pub fn parse(input: &str) -> Result<CpusConfig, OptionError> {
        let o = Options::parse(input, Self::KEYS, false)?;
        let mut c = CpusConfig::default();
        if let Some(boot) = o.parsed("boot")? {
            c = CpusConfig::with_boot(boot);
        }
        if let Some(max) = o.parsed("max")? {
            c.max_vcpus = max;
        }
        Ok(c)
    }
}

impl PlatformConfig {
    /// Keys of `--platform`.
    pub const KEYS: &[&str] = &["sev_snp"];

    /// Parses `sev_snp=on|off`.
    pub fn parse(input: &str) -> Result<PlatformConfig, OptionError> {
        let o = Options::parse(input, Self::KEYS, false)?;
        let mut c = PlatformConfig::default();
        if let Some(snp) = o.switch("sev_snp")? {
            c.sev_snp = snp;
        }
        Ok(c)
    }
}

impl MemoryConfig {
    /// Keys of `--memory`.
    pub const KEYS: &[&str] = &["size"];

    /// Parses `size=64M`.
    pub fn parse(input: &str) -> Result<MemoryConfig, OptionError> {
        let o = Options::parse(input, Self::KEYS, false)?;
        let mut c = MemoryConfig::default();
        if let Some(size) = o.size("size")? {
            c.size = size;
        }
        Ok(c)
    }
}

impl SnpConfig {
    /// Keys of `--snp`.
    pub const KEYS: &[&str] = &[
        "certs_file",
        "certs_timeout",
        "busy_budget",
        "on_error",
        "allow_large",
        "startup_wait",
        "doorbell",
    ];

    /// Parses `certs_file=P,certs_timeout=MS,...`.
    pub fn parse(input: &str) -> Result<SnpConfig, OptionError> {
        let o = Options::parse(input, Self::KEYS, false)?;
        let mut c = SnpConfig::default();
        if let Some(path) = o.get("certs_file") {
            c.certs_file = Some(PathBuf::from(path));
        }
        if let Some(timeout) = o.parsed("certs_timeout")? {
            c.certs_timeout = timeout;
        }
        if let Some(budget) = o.parsed("busy_budget")? {
            c.busy_budget = budget;
        }
        if let Some(on_error) = o.parsed("on_error")? {
            c.on_error = on_error;
        }
        if let Some(allow) = o.switch("allow_large")? {
            c.allow_large = allow;
        }
        if let Some(wait) = o.parsed("startup_wait")? {
            c.startup_wait = wait;
        }
        if let Some(doorbell) = o.switch("doorbell")? {
            c.doorbell = doorbell;
        }
        Ok(c)
    }
}

impl PayloadConfig {
    /// Keys of the attestation guest, after the leading `attest`.
    pub const ATTEST_KEYS: &[&str] = &[
        "requests",
        "interval_ms",
        "retry_ms",
        "max_busy_retries",
        "c_bit",
    ];
    /// Cloud Hypervisor's `--payload` keys.
    pub const CH_KEYS: &[&str] = &[
        "firmware",
        "kernel",
        "cmdline",
        "initramfs",
        "igvm",
        "host_data",
    ];

    /// Parses `[attest[,requests=N][,interval_ms=M][,retry_ms=M][,max_busy_retries=N]][,host_data=HEX]`
    /// and Cloud Hypervisor's keys (which [`PayloadConfig::validate`]
    /// then refuses, except `host_data`).
    pub fn parse(input: &str) -> Result<PayloadConfig, OptionError> {
        let kind_first = || {
            OptionError::InvalidValue {
            key: "payload".to_owned(),
            value: input.to_owned(),
            reason:
                "the test guest comes first, as in attest,requests=3; known test guests: attest, snp-attest"
                    .to_owned(),
        }
        };
        let known: Vec<&str> = Self::ATTEST_KEYS
            .iter()
            .chain(Self::CH_KEYS)
            .copied()
            .collect();
        let o = Options::parse(input, &known, true).map_err(|e| match e {
            OptionError::UnknownKey { key, .. } if key == "kind" => kind_first(),
            other => other,
        })?;
        let has_attest_keys = Self::ATTEST_KEYS.iter().any(|k| o.get(k).is_some());
        let test_guest = match o.kind() {
            Some("attest") => {
                let (requests, interval_ms, retry_ms, max_busy_retries) = Self::parse_params(&o)?;
                Some(TestGuestConfig::Attest {
                    requests,
                    interval_ms,
                    retry_ms,
                    max_busy_retries,
                })
            }
            Some("snp-attest") => {
                let (requests, interval_ms, retry_ms, max_busy_retries) = Self::parse_params(&o)?;
                Some(TestGuestConfig::SnpAttest {
                    requests,
                    interval_ms,
                    retry_ms,
                    max_busy_retries,
                    c_bit: o.parsed("c_bit")?,
                })
            }
            Some(_) => return Err(kind_first()),
            None if has_attest_keys => return Err(kind_first()),
            None => None,
        };
        let path = |key: &str| o.get(key).map(PathBuf::from);
        Ok(PayloadConfig {
            test_guest,
            firmware: path("firmware"),
            kernel: path("kernel"),
            cmdline: o.get("cmdline").map(str::to_owned),
            initramfs: path("initramfs"),
            igvm: path("igvm"),
            host_data: o.get("host_data").map(str::to_owned),
        })
    }

    /// The guests' shared parameters, each at its default when absent:
    /// `(requests, interval_ms, retry_ms, max_busy_retries)`.
    fn parse_params(o: &Options) -> Result<(u32, u32, u32, u32), OptionError> {
        use crate::payload::{DEFAULT_MAX_BUSY_RETRIES, DEFAULT_REQUESTS, DEFAULT_RETRY_MS};
        Ok((
            o.parsed("requests")?.unwrap_or(DEFAULT_REQUESTS),
            o.parsed("interval_ms")?.unwrap_or(0),
            o.parsed("retry_ms")?.unwrap_or(DEFAULT_RETRY_MS),
            o.parsed("max_busy_retries")?
                .unwrap_or(DEFAULT_MAX_BUSY_RETRIES),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_command_line() {
        let c = VmConfig::from_options(&VmOptions {
            cpus: Some("boot=2,max=2"),
            memory: Some("size=128M"),
            platform: Some("sev_snp=off"),
            snp: Some("certs_file=/c.bin,certs_timeout=50,busy_budget=500,on_error=busy,allow_large=on,startup_wait=10,doorbell=on"),
            payload: Some("attest,requests=5,interval_ms=10"),
        })
        .unwrap();
        assert_eq!(c.cpus, CpusConfig::with_boot(2));
        assert!(!c.platform.sev_snp);
        assert_eq!(c.memory.size, 128 << 20);
        assert_eq!(c.snp.certs_file, Some(PathBuf::from("/c.bin")));
        assert_eq!(c.snp.certs_timeout, 50);
        assert_eq!(c.snp.busy_budget, 500);
        assert_eq!(c.snp.on_error, snp_certs_types::OnError::Busy);
        assert!(c.snp.allow_large);
        assert_eq!(c.snp.startup_wait, 10);
        assert!(c.snp.doorbell);
        assert_eq!(
            c.payload,
            Some(PayloadConfig::test_guest(TestGuestConfig::Attest {
                requests: 5,
                interval_ms: 10,
                retry_ms: 10,
                max_busy_retries: 100,
            }))
        );
        c.validate().unwrap();
    }

    #[test]
    fn kebab_case_keys_are_aliases() {
        let snake = VmConfig::from_options(&VmOptions {
            snp: Some("certs_file=/c.bin,certs_timeout=50,busy_budget=500,on_error=busy,allow_large=ON,startup_wait=10,doorbell=True"),
            payload: Some("attest,requests=5,interval_ms=10,retry_ms=3,max_busy_retries=7"),
            ..VmOptions::default()
        })
        .unwrap();
        let kebab = VmConfig::from_options(&VmOptions {
            snp: Some("certs-file=/c.bin,certs-timeout=50,busy-budget=500,on-error=busy,allow-large=on,startup-wait=10,doorbell=on"),
            payload: Some("attest,requests=5,interval-ms=10,retry-ms=3,max-busy-retries=7"),
            ..VmOptions::default()
        })
        .unwrap();
        assert_eq!(snake, kebab);
        assert!(snake.snp.doorbell && snake.snp.allow_large);
        assert_eq!(
            SnpConfig::parse("doorbell=OFF,allow_large=FALSE").unwrap(),
            SnpConfig::default()
        );
    }

    #[test]
    fn cloud_hypervisor_keys() {
        assert!(PlatformConfig::parse("sev_snp=on").unwrap().sev_snp);
        assert!(PlatformConfig::parse("sev_snp=ON").unwrap().sev_snp);
        assert_eq!(CpusConfig::parse("boot=2,max=4").unwrap().max_vcpus, 4);
        let p = PayloadConfig::parse("kernel=/vmlinux,cmdline=\"console=ttyS0\"").unwrap();
        assert_eq!(p.kernel, Some(PathBuf::from("/vmlinux")));
        assert_eq!(p.cmdline.as_deref(), Some("console=ttyS0"));
        assert_eq!(p.test_guest, None);
        assert!(p.validate().is_err());
        let hex = "0f".repeat(32);
        let p = PayloadConfig::parse(&format!("attest,requests=2,host_data={hex}")).unwrap();
        assert_eq!(p.host_data, Some(hex));
        assert!(matches!(
            p.test_guest,
            Some(TestGuestConfig::Attest { requests: 2, .. })
        ));
        p.validate().unwrap();
    }

    #[test]
    fn absent_options_are_defaults() {
        assert_eq!(
            VmConfig::from_options(&VmOptions::default()).unwrap(),
            VmConfig::default()
        );
        assert_eq!(
            PayloadConfig::parse("attest").unwrap(),
            PayloadConfig::test_guest(TestGuestConfig::attest())
        );
        let snp = SnpConfig::parse("doorbell=on").unwrap();
        assert_eq!(snp.certs_file, None);
        assert_eq!(snp.certs_timeout, 100);
    }

    #[test]
    fn refusals_name_the_key() {
        let err = CpusConfig::parse("boot=300").unwrap_err();
        assert!(err.to_string().contains("for boot"), "{err}");
        let err = MemoryConfig::parse("size=1X").unwrap_err();
        assert!(err.to_string().contains("for size"), "{err}");
        let err = SnpConfig::parse("certs_fil=/x").unwrap_err();
        assert!(
            err.to_string().contains("certs_file, certs_timeout"),
            "{err}"
        );
        let err = PayloadConfig::parse("linux").unwrap_err();
        assert!(
            err.to_string().contains("known test guests: attest"),
            "{err}"
        );
        let err = PayloadConfig::parse("kind=attest").unwrap_err();
        assert!(
            err.to_string().contains("the test guest comes first"),
            "{err}"
        );
        let err = SnpConfig::parse("on-error=eio").unwrap_err();
        assert!(err.to_string().contains("expected empty or busy"), "{err}");
        let err = PayloadConfig::parse("requests=3").unwrap_err();
        assert!(
            matches!(
                err,
                OptionError::MissingValue(_) | OptionError::InvalidValue { .. }
            ),
            "{err}"
        );
    }
}
