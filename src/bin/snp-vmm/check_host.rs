//! `snp-vmm --check-host [--certs-file FILE] [--json]`: can this host serve
//! SEV-SNP guests with certificates?
//!
//! The host items come from [`hypervisor::kvm::host::probe_host`]; this
//! module adds the items of a certs file (a valid table, its size against
//! what a Linux guest can receive, who holds its lock right now) and
//! prints the report: aligned text for people, or with `--json` one
//! object for scripts:
//!
//! ```json
//! {"can_serve_snp": false,
//!  "items": [{"name": "kvm-device", "status": "ok", "detail": "...", "fix": null}, ...]}
//! ```
//!
//! Exit status: [`EXIT_CAN_SERVE`] (0) when no item is missing,
//! [`EXIT_CANNOT_SERVE`] (3) when one is; 2 means the check itself could
//! not run (as for every other `snp-vmm` error).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use hypervisor::kvm::host::{HostItem, HostReport, ItemStatus, probe_host};
use snp_certs::config::DEFAULT_CERTS_TIMEOUT_MS;
use snp_certs::table::LINUX_GUEST_MAX_SIZE;
use snp_certs::{CertTable, CertsReader, TableWarning};
use vmm_api::error_chain;

/// Exit status when the host can serve SNP guests with certificates.
pub const EXIT_CAN_SERVE: u8 = 0;

/// Exit status when it cannot (some item is missing).
pub const EXIT_CANNOT_SERVE: u8 = 3;

/// Item name: the certs file's content.
pub const ITEM_CERTS_FILE: &str = "certs-file";
/// Item name: the certs file's size against the Linux guest limit.
pub const ITEM_CERTS_SIZE: &str = "certs-file-size";
/// Item name: who holds the certs file's lock.
pub const ITEM_CERTS_LOCK: &str = "certs-file-lock";

/// The command-line flags of the host check.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckHostArgs {
    /// Report, item by item, whether this host can serve SEV-SNP guests
    /// with certificates, then exit: 0 if it can, 3 if it cannot.
    #[arg(long)]
    pub check_host: bool,
    /// With --check-host: also check this certs file (a valid table, at
    /// most 16 KiB, who holds its lock).
    #[arg(long, value_name = "FILE", requires = "check_host")]
    pub certs_file: Option<PathBuf>,
}

/// Runs the check, prints the report (one JSON object if `json`, the
/// command line's `--json`), and returns the exit status.
pub fn run(args: &CheckHostArgs, json: bool) -> Result<ExitCode> {
    let mut report = probe_host();
    match &args.certs_file {
        Some(path) => report.items.extend(certs_items(path)),
        None => report
            .items
            .push(HostItem::skipped(ITEM_CERTS_FILE, "no --certs-file given")),
    }
    let text = if json {
        to_json(&report)?
    } else {
        to_text(&report)
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe ends the tool quietly, as it ends `grep`.
        crate::stdout::failed(&e);
    }
    Ok(ExitCode::from(exit_status(&report)))
}

/// The exit status for `report`.
pub fn exit_status(report: &HostReport) -> u8 {
    if report.can_serve_snp() {
        EXIT_CAN_SERVE
    } else {
        EXIT_CANNOT_SERVE
    }
}

/// One item as the JSON report shows it, fields in this order.
#[derive(Debug, serde::Serialize)]
struct JsonItem<'a> {
    name: &'a str,
    status: &'static str,
    detail: &'a str,
    fix: Option<&'a str>,
}

/// The JSON report: the verdict first, then the items.
#[derive(Debug, serde::Serialize)]
struct JsonReport<'a> {
    can_serve_snp: bool,
    items: Vec<JsonItem<'a>>,
}

/// The report as one pretty-printed JSON object (with a final newline).
pub fn to_json(report: &HostReport) -> Result<String> {
    let json = JsonReport {
        can_serve_snp: report.can_serve_snp(),
        items: report
            .items
            .iter()
            .map(|i| JsonItem {
                name: &i.name,
                status: i.status.as_str(),
                detail: &i.detail,
                fix: i.fix.as_deref(),
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&json).context("cannot encode the report")?;
    text.push('\n');
    Ok(text)
}

/// The report as aligned text: one line per item (name, status word,
/// detail), its fix on the next line under the detail, then the verdict.
pub fn to_text(report: &HostReport) -> String {
    let width = report.items.iter().map(|i| i.name.len()).max().unwrap_or(0);
    let status_width = "skipped".len();
    let indent = " ".repeat(width + 2 + status_width + 2);
    let mut text = String::from("snp-vmm: host check for SEV-SNP guests with certificates\n\n");
    for item in &report.items {
        text.push_str(&format!(
            "{:<width$}  {:<status_width$}  {}\n",
            item.name,
            item.status.as_str(),
            item.detail
        ));
        if let Some(fix) = &item.fix {
            text.push_str(&format!("{indent}fix: {fix}\n"));
        }
    }
    let missing: Vec<&str> = report
        .items
        .iter()
        .filter(|i| i.status == ItemStatus::Missing)
        .map(|i| i.name.as_str())
        .collect();
    text.push('\n');
    if missing.is_empty() {
        text.push_str("verdict: this host CAN serve SEV-SNP guests with certificates\n");
    } else {
        text.push_str(&format!(
            "verdict: this host CANNOT serve SEV-SNP guests with certificates (missing: {})\n",
            missing.join(", ")
        ));
    }
    text
}

/// The items of the certs file at `path`: its lock holders (looked at
/// first, before this check takes the shared lock itself), its content
/// and its size.
pub fn certs_items(path: &Path) -> Vec<HostItem> {
    let lock = lock_item(path);
    let wait = Duration::from_millis(DEFAULT_CERTS_TIMEOUT_MS);
    let mut reader = CertsReader::new();
    let (content, size) = match reader.lock_and_read(path, wait) {
        Ok(locked) => (
            table_item(path, locked.bytes),
            Some(locked.bytes.len() as u64),
        ),
        Err(e) if e.is_lock_timeout() => (
            HostItem::warn(
                ITEM_CERTS_FILE,
                format!(
                    "cannot read {} now: the shared lock was not granted within {DEFAULT_CERTS_TIMEOUT_MS} ms (an update holds it; guests are answered busy meanwhile)",
                    path.display()
                ),
                "let the update finish (see the certs-file-lock item), then run the check again",
            ),
            std::fs::metadata(path).ok().map(|m| m.len()),
        ),
        Err(e) => (
            HostItem::missing(
                ITEM_CERTS_FILE,
                error_chain(&e),
                "write a valid table (snp-certs build or snp-certs refresh) and check it with snp-certs inspect",
            ),
            std::fs::metadata(path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len()),
        ),
    };
    vec![content, size_item(size), lock]
}

/// A table read under the lock: its entries, and any warnings other than
/// its size (which has an item of its own).
fn table_item(path: &Path, bytes: &[u8]) -> HostItem {
    let table = match CertTable::parse(bytes) {
        Ok(table) => table,
        Err(e) => {
            return HostItem::missing(
                ITEM_CERTS_FILE,
                format!("{} is not a valid certificate table: {e}", path.display()),
                "write a valid table (snp-certs build) and check it with snp-certs inspect",
            );
        }
    };
    let kinds: Vec<String> = table.entries().iter().map(|e| e.kind.to_string()).collect();
    let entries = if kinds.is_empty() {
        "no entries: guests get an empty table".to_owned()
    } else {
        format!("{} entries ({})", kinds.len(), kinds.join(", "))
    };
    let detail = format!("{} is a valid certificate table: {entries}", path.display());
    let warnings: Vec<String> = table
        .warnings()
        .into_iter()
        .filter(|w| !matches!(w, TableWarning::ExceedsLinuxGuestLimit { .. }))
        .map(|w| w.to_string())
        .collect();
    if warnings.is_empty() {
        HostItem::ok(ITEM_CERTS_FILE, detail)
    } else {
        HostItem::warn(
            ITEM_CERTS_FILE,
            format!("{detail}; but: {}", warnings.join("; ")),
            "snp-certs inspect shows each entry; rebuild the table with DER certificates and standard GUIDs",
        )
    }
}

/// The table's size against the 16 KiB a Linux guest can receive.
fn size_item(size: Option<u64>) -> HostItem {
    let limit = LINUX_GUEST_MAX_SIZE as u64;
    match size {
        None => HostItem::skipped(ITEM_CERTS_SIZE, "the file's size is unknown"),
        Some(size) if snp_certs::table::exceeds_guest_limit(size, false) => HostItem::missing(
            ITEM_CERTS_SIZE,
            format!(
                "{size} bytes: over the {limit}-byte (16 KiB) limit of Linux guests, which cannot receive it"
            ),
            "leave out what guests do not need (a CRL, the ASK/ARK they already have) to get under 16 KiB",
        ),
        Some(size) => HostItem::ok(
            ITEM_CERTS_SIZE,
            format!("{size} bytes: within the {limit}-byte (16 KiB) limit of Linux guests"),
        ),
    }
}

/// Who holds a lock on `path` right now.
fn lock_item(path: &Path) -> HostItem {
    let holders = match snp_certs::lock::holders(path) {
        Ok(holders) => holders,
        Err(e) => {
            return HostItem::warn(
                ITEM_CERTS_LOCK,
                format!("cannot tell who holds a lock on {}: {e}", path.display()),
                "run the check as a user that can read the file and /proc",
            );
        }
    };
    let shown: Vec<String> = holders
        .iter()
        .map(|h| {
            let kind = if h.exclusive { "exclusive" } else { "shared" };
            format!("{h}, {kind}")
        })
        .collect();
    if holders.is_empty() {
        HostItem::ok(ITEM_CERTS_LOCK, "no process holds a lock on it")
    } else if holders.iter().any(|h| h.exclusive) {
        HostItem::warn(
            ITEM_CERTS_LOCK,
            format!(
                "held right now by {}: guests are answered busy until it is released",
                shown.join("; ")
            ),
            "an update in progress ends by itself; if the holder is stuck, stop that process",
        )
    } else {
        HostItem::ok(
            ITEM_CERTS_LOCK,
            format!(
                "shared right now by {} (VMMs serving guests)",
                shown.join("; ")
            ),
        )
    }
}

#[cfg(test)]
#[path = "check_host_tests.rs"]
mod tests;
