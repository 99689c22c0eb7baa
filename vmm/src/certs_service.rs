//! One VM's certificate service: its configuration, counters and events.
//!
//! Every vCPU answers certificate requests through the same
//! [`CertsService`], whatever the request's source (the real
//! `KVM_EXIT_SNP_REQ_CERTS` or the emulated doorbell). The service takes a
//! snapshot of the VM's configuration per request, so a configuration
//! change made through the API is atomic with respect to requests in
//! flight: a request finishes with the configuration it started with, and
//! every later one uses the new configuration.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use event_monitor::EventSender;
use serde_json::{Value, json};
use snp_certs::config::ConfigError;
use snp_certs::serve::{CertsRequest, Outcome, Reason};
use snp_certs::{CertsConfig, CertsReader, SharedCertsConfig};
use vm_memory::GuestMemory;

use api_server::types::VmCounters;

use crate::stats::CertsStats;

/// Event source name of certificate events.
pub const EVENT_SOURCE: &str = "snp-certs";

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSource {
    /// `KVM_EXIT_SNP_REQ_CERTS` from an SNP guest.
    Kvm,
    /// The emulated guest-request doorbell.
    Doorbell,
}

impl RequestSource {
    fn as_str(self) -> &'static str {
        match self {
            RequestSource::Kvm => "kvm",
            RequestSource::Doorbell => "doorbell",
        }
    }
}

/// Whether a request with this reason tried the lock (so its wait, even
/// zero, belongs in the lock-wait statistics).
fn reached_lock(reason: Reason) -> bool {
    match reason {
        Reason::Served
        | Reason::SizeQuery
        | Reason::BufferTooSmall
        | Reason::LockTimeout
        | Reason::LockCancelled
        | Reason::FileTooLarge
        | Reason::FileInvalid
        | Reason::FileKeepsChanging
        | Reason::OutsideGuestRam => true,
        Reason::NoCertsFile
        | Reason::GpaMisaligned
        | Reason::BufferOverflows
        | Reason::FileMissing
        | Reason::FileNotRegular
        | Reason::FileUnreadable
        | Reason::LockFailed => false,
    }
}

/// The certificate service of one VM.
#[derive(Debug)]
pub struct CertsService {
    config: SharedCertsConfig,
    /// Serialises configuration changes (each is read, validate, swap).
    updating: Mutex<()>,
    warnings: Mutex<Vec<String>>,
    stats: CertsStats,
    events: EventSender,
}

impl CertsService {
    /// A service for `config`, validated first (the file must be a valid
    /// table now, not only when a guest asks).
    pub fn new(config: CertsConfig, events: EventSender) -> Result<CertsService, ConfigError> {
        let warnings = config.validate()?;
        Ok(CertsService {
            config: SharedCertsConfig::new(config),
            updating: Mutex::new(()),
            warnings: Mutex::new(warnings.iter().map(ToString::to_string).collect()),
            stats: CertsStats::default(),
            events,
        })
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<CertsConfig> {
        self.config.current()
    }

    /// How many times the configuration was replaced.
    pub fn generation(&self) -> u64 {
        self.config.generation()
    }

    /// Warnings about the current certs file.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counters so far, with the event monitor's drop count.
    pub fn stats(&self) -> VmCounters {
        VmCounters {
            events_dropped: self.events.dropped(),
            ..self.stats.snapshot()
        }
    }

    /// Leases held right now.
    pub fn leases_held(&self) -> u64 {
        self.stats.leases_held()
    }

    /// Makes `change(current)` the configuration after validating it (the
    /// file is read under its shared lock); on error nothing changes.
    /// Changes are serialised, so two at once cannot lose each other.
    /// Returns the new file's warnings.
    pub fn replace_with(
        &self,
        change: impl FnOnce(&CertsConfig) -> CertsConfig,
    ) -> Result<Vec<String>, ConfigError> {
        let _updating = self.updating.lock().unwrap_or_else(PoisonError::into_inner);
        let (previous, warnings) = self.config.replace(change(&self.config()))?;
        let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        *self.warnings.lock().unwrap_or_else(PoisonError::into_inner) = warnings.clone();
        self.changed(&previous);
        Ok(warnings)
    }

    /// Changes only the timeout; the file is not read again (so this works
    /// while a management tool holds the exclusive lock).
    pub fn set_timeout(&self, certs_timeout: u64) -> Result<(), ConfigError> {
        let _updating = self.updating.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.config.set_timeout(certs_timeout)?;
        self.changed(&previous);
        Ok(())
    }

    /// Logs and reports a configuration change.
    fn changed(&self, previous: &CertsConfig) {
        let config = self.config();
        log::info!(
            "certs configuration changed: certs-file {:?} -> {:?}, certs-timeout {} -> {} ms",
            previous.certs_file,
            config.certs_file,
            previous.certs_timeout,
            config.certs_timeout
        );
        self.events.event(
            EVENT_SOURCE,
            "config-changed",
            [
                ("certs_file", json!(config.certs_file)),
                ("certs_timeout", json!(config.certs_timeout)),
                ("previous_certs_file", json!(previous.certs_file)),
                ("generation", json!(self.generation())),
                ("warnings", json!(self.warnings())),
            ],
        );
    }

    /// Answers one request from vCPU `vcpu` with the configuration current
    /// now, and counts it.
    pub fn serve<M: GuestMemory + ?Sized>(
        &self,
        vcpu: u8,
        source: RequestSource,
        reader: &mut CertsReader,
        request: CertsRequest,
        memory: &M,
    ) -> Outcome {
        let config = self.config.current();
        let outcome = snp_certs::serve(reader, &config, request, memory);
        let reached = config.certs_file.is_some() && reached_lock(outcome.reason);
        self.stats.record(
            outcome.kind,
            outcome.reason,
            outcome.bytes,
            outcome.lock_wait,
            reached,
            outcome.lease.is_some(),
        );
        if let Some(detail) = &outcome.detail {
            log::warn!(
                "vcpu {vcpu}: certificate request {}: {} ({detail})",
                outcome.kind,
                outcome.reason
            );
        } else {
            log::debug!(
                "vcpu {vcpu}: certificate request {}: {}",
                outcome.kind,
                outcome.reason
            );
        }
        let mut props: Vec<(&str, Value)> = vec![
            ("vcpu", json!(vcpu)),
            ("source", json!(source.as_str())),
            ("gpa", json!(request.gpa)),
            ("npages", json!(request.npages)),
            ("ret", json!(outcome.ret())),
            ("reply_npages", json!(outcome.npages)),
            ("reason", json!(outcome.reason.as_str())),
            ("bytes", json!(outcome.bytes)),
            ("lock_wait_us", json!(outcome.lock_wait.as_micros() as u64)),
            ("certs_file", json!(config.certs_file)),
        ];
        if let Some(detail) = &outcome.detail {
            props.push(("detail", json!(detail)));
        }
        self.events
            .event(EVENT_SOURCE, outcome.kind.as_str(), props);
        outcome
    }

    /// Records that vCPU `vcpu` released a lease it held for `held`.
    pub fn lease_released(&self, vcpu: u8, held: Duration) {
        self.stats.lease_released();
        self.events.event(
            EVENT_SOURCE,
            "lease-released",
            [
                ("vcpu", json!(vcpu)),
                ("held_us", json!(held.as_micros() as u64)),
            ],
        );
    }
}
