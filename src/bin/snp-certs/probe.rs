//! `snp-certs probe`: what would a guest get right now?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use snp_certs::serve::{self, CertsRequest, OutcomeKind, PAGE_SIZE, Reason};
use snp_certs::{BusyBudget, CertsConfig, CertsReader, OnError};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Largest scratch buffer `probe` allocates, in pages (1 MiB).
const MAX_PROBE_PAGES: u64 = 256;

/// Answer a simulated guest request for FILE through the same code a VMM
/// uses (shared lock, re-check, validation, size check, copy into a
/// scratch guest buffer). Exit code 0 when certificates were delivered.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The certs file.
    file: PathBuf,
    /// Maximum time in milliseconds to wait for the shared lock.
    #[arg(long, default_value_t = snp_certs::config::DEFAULT_CERTS_TIMEOUT_MS)]
    timeout: u64,
    /// Guest buffer size in 4 KiB pages (0 asks for the size, as guests do
    /// first). Default: 4 pages, the 16 KiB a Linux guest offers.
    #[arg(long, default_value_t = 4)]
    npages: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
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
}

/// Runs `probe`.
pub fn run(args: &ProbeArgs) -> Result<ExitCode> {
    if args.npages > MAX_PROBE_PAGES {
        bail!(
            "--npages {} is above the probe limit of {MAX_PROBE_PAGES}",
            args.npages
        );
    }
    let file = std::path::absolute(&args.file)
        .with_context(|| format!("cannot resolve {}", args.file.display()))?;
    let config = CertsConfig {
        certs_timeout: args.timeout,
        // A probe shows what the file itself gives: no fallback hides it.
        busy_budget: snp_certs::config::MAX_BUSY_BUDGET_MS,
        on_error: OnError::Busy,
        ..CertsConfig::with_file(file)
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
    let report = ProbeReport {
        outcome: outcome.kind,
        reason: outcome.reason,
        ret: outcome.ret(),
        npages: outcome.npages,
        bytes: outcome.bytes,
        lock_wait_us: outcome.lock_wait.as_micros(),
        detail: outcome.detail(&config),
    };
    drop(outcome);
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{} (ret {}, npages {}, {} bytes, lock wait {} us, {})",
            report.outcome,
            report.ret,
            report.npages,
            report.bytes,
            report.lock_wait_us,
            report.reason
        );
        if let Some(detail) = &report.detail {
            outln!("  {detail}");
        }
    }
    Ok(match report.outcome {
        OutcomeKind::Delivered => ExitCode::SUCCESS,
        OutcomeKind::NeedPages => ExitCode::from(3),
        OutcomeKind::Busy => ExitCode::from(4),
        OutcomeKind::Failed => ExitCode::from(5),
    })
}
