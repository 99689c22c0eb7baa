//! One VM's certificate service: its configuration, busy budget, counters
//! and events.
//!
//! Every vCPU answers certificate requests through the same
//! [`CertsService`], whatever the request's source (the real
//! `KVM_EXIT_SNP_REQ_CERTS` or the emulated doorbell). The service takes a
//! snapshot of the VM's configuration per request, so a configuration
//! change made through the API is atomic with respect to requests in
//! flight: a request finishes with the configuration it started with, and
//! every later one uses the new configuration. Changes are validated
//! without holding anything a request or another API call needs.

use std::sync::Arc;
use std::time::Duration;

use event_monitor::EventSender;
use serde_json::{Value, json};
use snp_certs::config::ConfigError;
use snp_certs::serve::{CertsRequest, Outcome, OutcomeKind, Reason};
use snp_certs::{ActiveCerts, BusyBudget, CertsConfig, CertsReader, SharedCertsConfig};
use vm_memory::GuestMemory;
use vmm_api::VmCounters;

use crate::stats::RequestStats;

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

/// The certificate service of one VM.
#[derive(Debug)]
pub struct CertsService {
    config: SharedCertsConfig,
    reaches_vmm: std::sync::atomic::AtomicBool,
    budget: BusyBudget,
    stats: RequestStats,
    events: EventSender,
}

impl CertsService {
    /// A service starting with `active`, a configuration already validated.
    pub fn new(active: ActiveCerts, events: EventSender) -> CertsService {
        CertsService {
            config: SharedCertsConfig::new(active),
            reaches_vmm: std::sync::atomic::AtomicBool::new(true),
            budget: BusyBudget::new(),
            stats: RequestStats::default(),
            events,
        }
    }

    /// Records that guests' requests never reach the VMM (an SNP VM on a
    /// host without the certificate exit): certs files are refused.
    pub fn set_unreachable(&self) {
        self.reaches_vmm
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Whether guests' requests reach the VMM.
    pub fn reaches_vmm(&self) -> bool {
        self.reaches_vmm.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The current configuration with its file's warnings.
    pub fn active(&self) -> Arc<ActiveCerts> {
        self.config.current()
    }

    /// How many times the configuration was replaced.
    pub fn generation(&self) -> u64 {
        self.config.generation()
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

    /// Makes `change(current)` the configuration; `rereads_file` says
    /// whether the change needs the file read and validated again (see
    /// [`SharedCertsConfig::update`]). On error nothing changes.
    pub fn update(
        &self,
        rereads_file: bool,
        change: impl Fn(&CertsConfig) -> CertsConfig,
    ) -> Result<Arc<ActiveCerts>, ConfigError> {
        let (previous, now) = self.config.update(rereads_file, change)?;
        self.changed(&previous, &now);
        Ok(now)
    }

    /// Logs and reports a configuration change.
    fn changed(&self, previous: &ActiveCerts, now: &ActiveCerts) {
        let (old, new) = (&previous.config, &now.config);
        log::info!(
            "certs configuration changed: certs-file {:?} -> {:?}, certs-timeout {} -> {} ms, busy-budget {} -> {} ms, on-error {} -> {}",
            old.certs_file,
            new.certs_file,
            old.certs_timeout,
            new.certs_timeout,
            old.busy_budget,
            new.busy_budget,
            old.on_error.as_str(),
            new.on_error.as_str()
        );
        let warnings: Vec<String> = now.warnings.iter().map(ToString::to_string).collect();
        self.events.event(
            EVENT_SOURCE,
            "config-changed",
            [
                ("certs_file", json!(new.certs_file)),
                ("certs_timeout", json!(new.certs_timeout)),
                ("busy_budget", json!(new.busy_budget)),
                ("on_error", json!(new.on_error)),
                ("allow_large", json!(new.allow_large)),
                ("previous_certs_file", json!(old.certs_file)),
                ("generation", json!(self.generation())),
                ("warnings", json!(warnings)),
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
        let active = self.config.current();
        let outcome = snp_certs::serve(reader, &active.config, &self.budget, request, memory);
        self.report(vcpu, source, request, &active.config, outcome)
    }

    /// Answers a request of an SNP guest whose buffer is not shared with
    /// the host: the guest's own fault (`EIO`), counted and reported like
    /// any other answer.
    pub fn refuse_private_buffer(
        &self,
        vcpu: u8,
        source: RequestSource,
        request: CertsRequest,
    ) -> Outcome {
        let active = self.config.current();
        let outcome = Outcome {
            detail: Some(format!(
                "the buffer of {} pages at {:#x} is not all memory the guest shared with the host",
                request.npages, request.gpa
            )),
            ..Outcome::new(OutcomeKind::Failed, Reason::BufferNotShared, request)
        };
        self.report(vcpu, source, request, &active.config, outcome)
    }

    /// Counts, logs and reports one answer.
    fn report(
        &self,
        vcpu: u8,
        source: RequestSource,
        request: CertsRequest,
        config: &CertsConfig,
        outcome: Outcome,
    ) -> Outcome {
        self.stats.record(&outcome);
        let what = if outcome.fallback {
            "fallback"
        } else {
            outcome.kind.as_str()
        };
        match &outcome.detail {
            Some(detail) if outcome.fallback => log::warn!(
                "vcpu {vcpu}: certificate request answered with the fallback ({}, ret {}): {} ({detail})",
                config.on_error.as_str(),
                outcome.ret(),
                outcome.reason
            ),
            Some(detail) => log::warn!(
                "vcpu {vcpu}: certificate request {}: {} ({detail})",
                outcome.kind,
                outcome.reason
            ),
            None => log::debug!(
                "vcpu {vcpu}: certificate request {}: {}",
                outcome.kind,
                outcome.reason
            ),
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
        if outcome.fallback {
            props.push(("on_error", json!(config.on_error)));
            props.push((
                "busy_streak_ms",
                json!(outcome.busy_streak.as_millis() as u64),
            ));
        }
        if let Some(detail) = &outcome.detail {
            props.push(("detail", json!(detail)));
        }
        self.events.event(EVENT_SOURCE, what, props);
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
