//! How chains are checked (when, under which roots) and printing chain
//! reports, shared by every command that checks a chain: `build`,
//! `import-dir`, `verify`, `update`, `lock`, `inspect`, `fetch`, `refresh`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use snp_certs::table::CertTable;
use snp_certs_verify::chain::{self, ChainProblem, ChainReport, ChainStatus, TrustedRoots};

use crate::files::read_input;

/// When to check certificate validity, and which roots to trust.
#[derive(Debug, Clone, Args)]
pub struct ChainCheck {
    /// Check validity at this time (Unix seconds) instead of now, e.g. to
    /// see whether a chain will still verify next year.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub at: Option<u64>,
    /// Also accept chains under this root certificate (PEM or DER): a
    /// test or lab stand-in for AMD's ARK. AMD's own root keys are built
    /// in and need no option; a chain under any other root is refused.
    /// Repeatable.
    #[arg(long, value_name = "FILE")]
    pub trust_root: Vec<PathBuf>,
}

impl ChainCheck {
    /// The time to check at.
    pub fn time(&self) -> SystemTime {
        match self.at {
            Some(secs) => UNIX_EPOCH + Duration::from_secs(secs),
            None => SystemTime::now(),
        }
    }

    /// AMD's roots, and those named with `--trust-root`.
    pub fn roots(&self) -> Result<TrustedRoots> {
        let mut roots = TrustedRoots::amd();
        for path in &self.trust_root {
            let bytes = read_input(path)?;
            roots = roots
                .with_extra_root(&bytes)
                .with_context(|| format!("--trust-root {}", path.display()))?;
        }
        Ok(roots)
    }

    /// Checks the chain of `table` under `roots` (from [`Self::roots`]).
    pub fn verify(&self, table: &CertTable<'_>, roots: &TrustedRoots) -> ChainReport {
        chain::verify_table_with(table, self.time(), roots)
    }
}

/// One line: `chain: verified (Milan, VCEK)` or `chain: FAILED (3 problems)`.
pub fn summary(report: &ChainReport) -> String {
    match report.status {
        ChainStatus::Verified => {
            let mut what = Vec::new();
            if let Some(product) = &report.product {
                what.push(product.clone());
            }
            if let Some(signer) = report.signer {
                what.push(signer.to_string());
            }
            format!("chain: verified ({})", what.join(", "))
        }
        ChainStatus::Failed => format!(
            "chain: FAILED ({} problem{})",
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        ),
    }
}

/// The summary, then one indented line per check (if `checks`), problem
/// and note.
pub fn lines(report: &ChainReport, checks: bool) -> Vec<String> {
    let mut out = vec![summary(report)];
    if checks {
        for c in &report.checks {
            out.push(format!(
                "  ok      {:<5} {:<10} {}",
                c.entry.name(),
                c.check,
                c.detail
            ));
        }
    }
    for p in &report.problems {
        out.push(format!("  problem {}", p.message()));
    }
    for n in &report.notes {
        out.push(format!("  note    {n}"));
    }
    if let Some(hint) = root_hint(report) {
        out.push(format!("  hint    {hint}"));
    }
    out
}

/// What to do about a chain under an untrusted root, if it is one.
pub fn root_hint(report: &ChainReport) -> Option<&'static str> {
    report
        .problems
        .iter()
        .any(|p| matches!(p, ChainProblem::UntrustedRoot { .. }))
        .then_some(
            "only AMD's root keys are trusted by default; a root of your own \
             (a test stand-in) is accepted when named with --trust-root FILE",
        )
}

/// The loud warning for a table written although its chain failed.
pub fn unverified_warning(report: &ChainReport) -> String {
    let bar = "!".repeat(72);
    let mut text = format!(
        "{bar}\nWARNING: --allow-unverified: writing a table whose certificate chain FAILED\n\
         verification. Guests that verify their attestation reports against it\n\
         will reject them.\n"
    );
    for p in &report.problems {
        text.push_str(&format!("  - {}\n", p.message()));
    }
    text.push_str(&bar);
    text
}
