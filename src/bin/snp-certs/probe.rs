//! `snp-certs probe`: what would a guest get right now?
//!
//! The probe answers one simulated guest request through the VMM's own
//! code (`snp_certs::serve`: the shared lock, the re-check, validation,
//! the size check, the copy into a scratch guest buffer, the answer
//! policy) and says what the guest gets. For a host-side fault that
//! depends on the VM's `on-error` answer, so it says what each answer
//! gives; the first line is under `--on-error` (default `empty`, the VMM's
//! default), or, with `--api-socket`, under the configuration a running
//! VMM reports for its VM (`GET vm.snp-certs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api_server::client::ApiClient;
use clap::Args;
use serde::Serialize;
use snp_certs::serve::{self, CertsRequest, Fault, OutcomeKind, PAGE_SIZE, Reason};
use snp_certs::{BusyBudget, CertsConfig, CertsReader, OnError};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Largest scratch buffer `probe` allocates, in pages (1 MiB).
const MAX_PROBE_PAGES: u64 = 256;

/// Exit code: the guest gets the empty table (ret 0, no certificates).
const EXIT_EMPTY_TABLE: u8 = 6;

/// Answer a simulated guest request for FILE through the same code a VMM
/// uses (shared lock, re-check, validation, size check, copy into a
/// scratch guest buffer, the answer policy) and say what the guest gets:
/// under --on-error (default empty, the VMM's default), and what the
/// other on-error answer would give; with --api-socket, under the
/// configuration of the VM that VMM runs. Exit codes: 0 certificates
/// delivered; 3 buffer too small; 4 busy; 6 the empty table (no
/// certificates); 2 error.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The certs file (with --api-socket: default the VM's).
    #[arg(required_unless_present = "api_socket")]
    file: Option<PathBuf>,
    /// Probe as the VM behind this snp-vmm API socket is configured:
    /// its certs file, certs-timeout, busy-budget and on-error.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// The VM's answer when busy cannot help: empty (the empty table,
    /// ret 0) or busy (ret 11).
    #[arg(long, value_name = "empty|busy", conflicts_with = "api_socket")]
    on_error: Option<OnError>,
    /// Maximum time in milliseconds to wait for the shared lock (default
    /// 100, or the VM's certs-timeout with --api-socket).
    #[arg(long)]
    timeout: Option<u64>,
    /// Guest buffer size in 4 KiB pages (0 asks for the size, as guests do
    /// first). Default: 4 pages, the 16 KiB a Linux guest offers.
    #[arg(long, default_value_t = 4)]
    npages: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a guest gets under one `on-error` answer.
#[derive(Debug, Serialize)]
struct Answer {
    outcome: OutcomeKind,
    ret: u64,
    certificates: bool,
    what: String,
}

/// The VM the probe took its configuration from.
#[derive(Debug, Serialize)]
struct VmView {
    api_socket: PathBuf,
    certs_file: Option<PathBuf>,
    certs_timeout: u64,
    busy_budget: u64,
    on_error: OnError,
    allow_large: bool,
    requests_reach_vmm: bool,
}

#[derive(Debug, Serialize)]
struct ProbeReport {
    outcome: OutcomeKind,
    reason: Reason,
    ret: u64,
    npages: u64,
    bytes: usize,
    lock_wait_us: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Whether this is the on-error answer to a host-side fault.
    fallback: bool,
    /// `transient` (a writer holds the lock) or `persistent`, for faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<&'static str>,
    /// The on-error answer the first line is under.
    on_error: OnError,
    /// What the guest gets under each on-error answer.
    answers: Answers,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm: Option<VmView>,
}

#[derive(Debug, Serialize)]
struct Answers {
    empty: Answer,
    busy: Answer,
}

fn busy_answer(what: String) -> Answer {
    Answer {
        outcome: OutcomeKind::Busy,
        ret: serve::ret_of(OutcomeKind::Busy),
        certificates: false,
        what,
    }
}

/// What each `on-error` answer gives for an outcome of `reason`; `first`
/// is what the probe's request got (under the answer it was made with).
fn answers(reason: Reason, first: &Answer, budget_ms: u64) -> Answers {
    let same = |a: &Answer| Answer {
        outcome: a.outcome,
        ret: a.ret,
        certificates: a.certificates,
        what: a.what.clone(),
    };
    let empty_table = |when: &str| Answer {
        outcome: OutcomeKind::Delivered,
        ret: 0,
        certificates: false,
        what: format!(
            "the empty table (ret 0){when}: the guest gets its report without certificates \
             and keeps its key"
        ),
    };
    let budget = format!("while the busy budget ({budget_ms} ms in a row) lasts");
    match reason.fault() {
        Some(Fault::Persistent) => Answers {
            empty: empty_table(""),
            busy: busy_answer(
                "busy (ret 11) for as long as the fault lasts: a Linux guest retries every 2 s \
                 and disables its VMPCK key for good after 60 s"
                    .to_owned(),
            ),
        },
        Some(Fault::Transient) => Answers {
            empty: busy_answer(format!(
                "busy (ret 11) {budget}, then the empty table (ret 0)"
            )),
            busy: busy_answer(format!(
                "busy (ret 11) {budget}, and busy after it too: a Linux guest disables its \
                 VMPCK key after 60 s"
            )),
        },
        Some(Fault::Cancelled) | None => Answers {
            empty: same(first),
            busy: same(first),
        },
    }
}

/// The VM's configuration, from its VMM's API.
fn vm_config(socket: &PathBuf) -> Result<VmView> {
    let client = ApiClient::new(socket)
        .context("cannot start the API client")?
        .with_timeout(Duration::from_secs(10));
    let info = client.snp_certs().with_context(|| {
        format!(
            "cannot ask the VMM at {} (GET vm.snp-certs)",
            socket.display()
        )
    })?;
    Ok(VmView {
        api_socket: socket.clone(),
        certs_file: info.certs_file,
        certs_timeout: info.certs_timeout,
        busy_budget: info.busy_budget,
        on_error: info.on_error,
        allow_large: info.allow_large,
        requests_reach_vmm: info.requests_reach_vmm,
    })
}

/// Runs `probe`.
pub fn run(args: &ProbeArgs) -> Result<ExitCode> {
    if args.npages > MAX_PROBE_PAGES {
        bail!(
            "--npages {} is above the probe limit of {MAX_PROBE_PAGES}",
            args.npages
        );
    }
    let vm = args.api_socket.as_ref().map(vm_config).transpose()?;
    let file = match (&args.file, &vm) {
        (Some(file), _) => Some(
            std::path::absolute(file)
                .with_context(|| format!("cannot resolve {}", file.display()))?,
        ),
        (None, Some(vm)) => vm.certs_file.clone(),
        (None, None) => None,
    };
    let defaults = CertsConfig::default();
    let config = CertsConfig {
        certs_file: file,
        certs_timeout: args
            .timeout
            .or(vm.as_ref().map(|v| v.certs_timeout))
            .unwrap_or(defaults.certs_timeout),
        busy_budget: vm.as_ref().map_or(defaults.busy_budget, |v| v.busy_budget),
        on_error: args
            .on_error
            .or(vm.as_ref().map(|v| v.on_error))
            .unwrap_or_default(),
        allow_large: vm.as_ref().is_some_and(|v| v.allow_large),
    };
    let pages = args.npages.max(1);
    let memory =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (pages * PAGE_SIZE) as usize)])
            .context("cannot allocate the scratch guest buffer")?;
    let request = CertsRequest {
        gpa: 0,
        npages: args.npages,
    };
    let outcome = serve::serve(
        &mut CertsReader::new(),
        &config,
        &BusyBudget::new(),
        request,
        &memory,
    );
    let certificates = outcome.kind == OutcomeKind::Delivered
        && !outcome.fallback
        && outcome.reason == Reason::Served;
    let first = Answer {
        outcome: outcome.kind,
        ret: outcome.ret(),
        certificates,
        what: String::new(),
    };
    let report = ProbeReport {
        outcome: outcome.kind,
        reason: outcome.reason,
        ret: outcome.ret(),
        npages: outcome.npages,
        bytes: outcome.bytes,
        lock_wait_us: outcome.lock_wait.as_micros(),
        detail: outcome.detail(&config),
        fallback: outcome.fallback,
        fault: outcome.reason.fault().map(|f| match f {
            Fault::Transient => "transient",
            Fault::Persistent => "persistent",
            Fault::Cancelled => "cancelled",
        }),
        on_error: config.on_error,
        answers: answers(outcome.reason, &first, config.busy_budget),
        vm,
    };
    drop(outcome);
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report, &config);
    }
    Ok(ExitCode::from(match report.outcome {
        OutcomeKind::Delivered if certificates => 0,
        OutcomeKind::Delivered => EXIT_EMPTY_TABLE,
        OutcomeKind::NeedPages => 3,
        OutcomeKind::Busy => 4,
        OutcomeKind::Failed => 5,
    }))
}

fn print_text(report: &ProbeReport, config: &CertsConfig) {
    if let Some(vm) = &report.vm {
        outln!(
            "VM at {}: certs-file {}, certs-timeout {} ms, busy-budget {} ms, on-error={}",
            vm.api_socket.display(),
            vm.certs_file
                .as_ref()
                .map_or_else(|| "none".to_owned(), |f| f.display().to_string()),
            vm.certs_timeout,
            vm.busy_budget,
            vm.on_error.as_str()
        );
        if !vm.requests_reach_vmm {
            outln!(
                "  this VM's certificate requests never reach the VMM: KVM answers each with \
                 the empty table itself (the host lacks the certificate exit)"
            );
        }
    }
    let policy = format!("on-error={}", config.on_error.as_str());
    let head = match (report.outcome, report.fallback, report.reason) {
        (OutcomeKind::Delivered, false, Reason::Served) => "certificates".to_owned(),
        (OutcomeKind::Delivered, false, _) => "the empty table, no certificates".to_owned(),
        (OutcomeKind::Delivered, true, _) => {
            format!("the empty table, no certificates, the {policy} answer")
        }
        (OutcomeKind::NeedPages, ..) => "need pages".to_owned(),
        (OutcomeKind::Busy, true, _) => format!("busy, the {policy} answer"),
        (OutcomeKind::Busy, false, _) => "busy".to_owned(),
        (OutcomeKind::Failed, ..) => "failed".to_owned(),
    };
    outln!(
        "{head} (ret {}, npages {}, {} bytes, lock wait {} us, {})",
        report.ret,
        report.npages,
        report.bytes,
        report.lock_wait_us,
        report.reason
    );
    if let Some(detail) = &report.detail {
        outln!("  {detail}");
    }
    if report.fault.is_some() {
        outln!("  with on-error=empty: {}", report.answers.empty.what);
        outln!("  with on-error=busy: {}", report.answers.busy.what);
    }
}
