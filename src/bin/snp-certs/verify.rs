//! `snp-certs verify`: check a certs file's chain.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use snp_certs::table::{LINUX_GUEST_MAX_SIZE, TableWarning};
use snp_certs_verify::chain::ChainReport;

use crate::chain_report::{self, ChainCheck};
use crate::files;

/// Check the certificate chain in a certs file: ARK self-signed, ASK/ASVK
/// signed by the ARK, VCEK/VLEK signed by the ASK/ASVK (real signature
/// checks), names, validity, product line and CRL, and that the table fits
/// the 16 KiB a Linux guest can receive. Reads the file under the shared
/// lock. Exit code 0 when the chain verifies and the table fits, 1 when
/// not, 2 when the file cannot be read or is not a valid table.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The certs file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Accept a table above 16 KiB (Linux guests cannot receive one).
    #[arg(long)]
    allow_large: bool,
    /// Maximum time in milliseconds to wait for the shared lock.
    #[arg(long, default_value_t = snp_certs::config::DEFAULT_CERTS_TIMEOUT_MS)]
    timeout: u64,
    #[command(flatten)]
    time: ChainCheck,
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    file: PathBuf,
    size: usize,
    chain: ChainReport,
    warnings: Vec<TableWarning>,
}

/// Runs `verify`.
pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    let roots = args.time.roots()?;
    let report =
        files::with_locked_table(&args.file, args.timeout, "verify", |table| VerifyReport {
            file: args.file.clone(),
            size: table.as_bytes().len(),
            chain: args.time.verify(table, &roots),
            warnings: table.warnings(),
        })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("{}: {} bytes", report.file.display(), report.size);
        for line in chain_report::lines(&report.chain, true) {
            outln!("{line}");
        }
        for w in &report.warnings {
            outln!("warning: {w}");
        }
    }
    let too_large = snp_certs::table::exceeds_guest_limit(report.size as u64, args.allow_large);
    if too_large {
        eprintln!(
            "snp-certs: {} holds a {}-byte table: Linux guests cannot receive more than \
             {LINUX_GUEST_MAX_SIZE} bytes (--allow-large accepts it)",
            args.file.display(),
            report.size
        );
    }
    if let Some(first) = report.chain.problems.first() {
        eprintln!(
            "snp-certs: the chain in {} does not verify: {}",
            args.file.display(),
            first.message()
        );
        if let Some(hint) = chain_report::root_hint(&report.chain) {
            eprintln!("snp-certs: {hint}");
        }
    }
    Ok(if report.chain.is_verified() && !too_large {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
