//! Printing chain reports, shared by `build`, `import-dir`, `verify`,
//! `update` and `inspect`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use snp_certs::table::CertTable;
use snp_certs_verify::chain::{self, ChainReport, ChainStatus};

/// When to check certificate validity.
#[derive(Debug, Clone, Args)]
pub struct ChainTime {
    /// Check validity at this time (Unix seconds) instead of now, e.g. to
    /// see whether a chain will still verify next year.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub at: Option<u64>,
}

impl ChainTime {
    /// The time to check at.
    pub fn time(&self) -> SystemTime {
        match self.at {
            Some(secs) => UNIX_EPOCH + Duration::from_secs(secs),
            None => SystemTime::now(),
        }
    }

    /// Checks the chain of `table`.
    pub fn verify(&self, table: &CertTable<'_>) -> ChainReport {
        chain::verify_table(table, self.time())
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
    out
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
