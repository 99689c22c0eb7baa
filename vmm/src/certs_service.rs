//! One VM's certificate service: its configuration, busy budget, counters,
//! logs and events.
//!
//! Every vCPU answers certificate requests through the same
//! [`CertsService`], whatever the request's source (the real
//! `KVM_EXIT_SNP_REQ_CERTS` or the emulated doorbell), in two steps:
//!
//! 1. [`CertsService::serve`] answers, inside the lease window: it takes a
//!    snapshot of the configuration ([`Served::active`]) and calls
//!    [`snp_certs::serve_shared_only`], nothing else.
//! 2. [`CertsService::report`], after the vCPU released the lease, counts
//!    the answer (atomics), logs it ([`crate::fault_log`]: a fault when it
//!    starts, then at most once per interval, and when it clears) and, only
//!    when an event monitor is attached, builds and sends its event.
//!
//! The snapshot makes a configuration change made through the API atomic
//! with respect to requests in flight: a request finishes (and is reported)
//! with the configuration it started with, and every later one uses the
//! new configuration. Changes are validated without holding anything a
//! request or another API call needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use event_monitor::EventSender;
use serde_json::{Value, json};
use snp_certs::config::ConfigError;
use snp_certs::serve::{CertsRequest, IsShared, Outcome};
use snp_certs::{ActiveCerts, BusyBudget, CertsConfig, CertsReader, Reason, SharedCertsConfig};
use vm_memory::GuestMemory;
use vmm_api::VmCounters;

use crate::fault_log::{FaultLog, Notice};
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

/// A request answered by [`CertsService::serve`], to be reported with
/// [`CertsService::report`] once its lease is released.
#[derive(Debug)]
pub struct Served {
    /// The request as the guest made it.
    pub request: CertsRequest,
    /// Where it came from.
    pub source: RequestSource,
    /// The configuration it was answered with.
    pub active: Arc<ActiveCerts>,
    /// The answer (with the lease, until the caller takes it).
    pub outcome: Outcome,
}

/// The certificate service of one VM.
#[derive(Debug)]
pub struct CertsService {
    config: SharedCertsConfig,
    reaches_vmm: AtomicBool,
    budget: BusyBudget,
    stats: RequestStats,
    faults: FaultLog,
    events: EventSender,
}

impl CertsService {
    /// A service starting with `active`, a configuration already validated.
    pub fn new(active: ActiveCerts, events: EventSender) -> CertsService {
        CertsService::with_fault_log(active, events, FaultLog::default())
    }

    /// [`CertsService::new`] with its own fault log (e.g. a shorter
    /// interval between repeats).
    pub fn with_fault_log(
        active: ActiveCerts,
        events: EventSender,
        faults: FaultLog,
    ) -> CertsService {
        CertsService {
            config: SharedCertsConfig::new(active),
            reaches_vmm: AtomicBool::new(true),
            budget: BusyBudget::new(),
            stats: RequestStats::default(),
            faults,
            events,
        }
    }

    /// Records that guests' requests never reach the VMM (an SNP VM on a
    /// host without the certificate exit): certs files are refused.
    pub fn set_unreachable(&self) {
        self.reaches_vmm.store(false, Ordering::Release);
    }

    /// Whether guests' requests reach the VMM.
    pub fn reaches_vmm(&self) -> bool {
        self.reaches_vmm.load(Ordering::Acquire)
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
        if !self.events.is_enabled() {
            return;
        }
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

    /// Answers one request with the configuration current now: the only
    /// step inside the lease window. `is_shared` says which guest memory
    /// the guest shared with the host (everything, on a VM without
    /// private memory). Report the result with [`CertsService::report`]
    /// after the lease is released.
    pub fn serve<M: GuestMemory + ?Sized>(
        &self,
        source: RequestSource,
        reader: &mut CertsReader,
        request: CertsRequest,
        memory: &M,
        is_shared: IsShared<'_>,
    ) -> Served {
        let active = self.config.current();
        let outcome = snp_certs::serve_shared_only(
            reader,
            &active.config,
            &self.budget,
            request,
            memory,
            is_shared,
        );
        Served {
            request,
            source,
            active,
            outcome,
        }
    }

    /// Counts, logs and reports an answer of vCPU `vcpu`, after its lease
    /// (if it had one) was released after `held`.
    pub fn report(&self, vcpu: u8, served: &Served, held: Option<Duration>) {
        let Served {
            request,
            source,
            active,
            outcome,
        } = served;
        let config = &active.config;
        self.stats.record(outcome, held.is_some());
        if held.is_some() {
            self.stats.lease_released();
        }
        self.log(vcpu, config, outcome);
        if !self.events.is_enabled() {
            return;
        }
        // In the order they happened: the answer, then the release.
        self.event(vcpu, *source, *request, config, outcome);
        if let Some(held) = held {
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

    /// The log lines for one answer: every answer at debug level; faults
    /// at warning level when they start, at most once per interval while
    /// they last, and when they clear.
    fn log(&self, vcpu: u8, config: &CertsConfig, outcome: &Outcome) {
        let certs_file = config.certs_file.as_deref();
        let Some(detail) = outcome.describe(certs_file) else {
            log::debug!(
                "vcpu {vcpu}: certificate request {}: {}",
                outcome.kind,
                outcome.reason
            );
            if self.faults.is_open() {
                self.faults.clear(Instant::now(), |reason, notice| {
                    cleared(vcpu, reason, notice)
                });
            }
            return;
        };
        let notice = self.faults.fault(outcome.reason, Instant::now());
        if notice.is_none() && !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let answer = answer_name(config, outcome);
        let ret = outcome.ret();
        let reason = outcome.reason;
        match notice {
            Some(Notice::Started) => log::warn!(
                "vcpu {vcpu}: certificate requests answered {answer}, ret {ret}: {reason} ({detail}); \
                 further answers for this reason are counted and logged every {} s until it clears",
                self.faults.interval().as_secs()
            ),
            Some(Notice::Again { count, since }) => log::warn!(
                "vcpu {vcpu}: still {reason}: {count} more certificate requests answered {answer}, \
                 ret {ret}, in the last {} s ({detail})",
                since.as_secs()
            ),
            Some(Notice::Cleared { .. }) | None => log::debug!(
                "vcpu {vcpu}: certificate request answered {answer}, ret {ret}: {reason} ({detail})"
            ),
        }
    }

    /// The event for one answer (only called with a monitor attached).
    fn event(
        &self,
        vcpu: u8,
        source: RequestSource,
        request: CertsRequest,
        config: &CertsConfig,
        outcome: &Outcome,
    ) {
        let what = if outcome.fallback {
            "fallback"
        } else {
            outcome.kind.as_str()
        };
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
        if let Some(detail) = outcome.describe(config.certs_file.as_deref()) {
            props.push(("detail", json!(detail.to_string())));
        }
        self.events.event(EVENT_SOURCE, what, props);
    }
}

/// How the guest was answered, for a log line: the fallback (naming the
/// `on-error` answer) or the outcome's kind.
fn answer_name(config: &CertsConfig, outcome: &Outcome) -> String {
    if outcome.fallback {
        format!("with the fallback (on-error={})", config.on_error.as_str())
    } else {
        outcome.kind.as_str().to_owned()
    }
}

/// The line for a fault that cleared.
fn cleared(vcpu: u8, reason: Reason, notice: Notice) {
    if let Notice::Cleared { count, lasted } = notice {
        log::warn!(
            "vcpu {vcpu}: certificate requests are answered normally again: {reason} cleared after {count} requests over {:.1} s",
            lasted.as_secs_f64()
        );
    }
}
