//! `snp-certs inspect`: list a table's entries, what each certificate
//! says about itself, the chain status and warnings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use snp_certs::CertKind;
use snp_certs::table::{CertTable, Encoding, TableWarning};
use snp_certs_verify::chain::{ChainReport, TrustedRoots};
use snp_certs_verify::x509::{self, EntryInfo};

use vmm_api::error_chain;

use crate::chain_report::{self, ChainCheck};
use crate::files;

/// Show the entries of a certs file: GUIDs, names, offsets, lengths,
/// encodings; for certificates their subject, issuer, validity, serial,
/// key type, AMD product line and TCB; the chain status; and warnings.
/// Reads the file under the shared lock. Exit code 0 for a valid table,
/// whatever its chain (`verify` fails on a bad chain).
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The certs file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Maximum time in milliseconds to wait for the shared lock.
    #[arg(long, default_value_t = snp_certs::config::DEFAULT_CERTS_TIMEOUT_MS)]
    timeout: u64,
    #[command(flatten)]
    time: ChainCheck,
}

#[derive(Debug, Serialize)]
struct EntryReport {
    index: usize,
    guid: String,
    kind: CertKind,
    name: String,
    offset: u32,
    length: usize,
    encoding: Encoding,
    /// What the certificate or CRL says about itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    x509: Option<EntryInfo>,
    /// Why the entry is not a certificate or CRL, for chain entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    x509_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct InspectReport {
    file: PathBuf,
    size: usize,
    pages: u64,
    entries: Vec<EntryReport>,
    chain: ChainReport,
    warnings: Vec<TableWarning>,
    warning_messages: Vec<String>,
}

/// Describes an entry as X.509 if it is one; other entries that are not
/// certificates are not an error.
fn describe(kind: CertKind, data: &[u8]) -> (Option<EntryInfo>, Option<String>) {
    match x509::describe(data) {
        Ok(info) => (Some(info), None),
        Err(_) if matches!(kind, CertKind::Other | CertKind::ExtraPlatformInfo) => (None, None),
        Err(e) => (None, Some(error_chain(&e))),
    }
}

/// Builds the report for a table.
fn report(
    file: PathBuf,
    table: &CertTable<'_>,
    time: &ChainCheck,
    roots: &TrustedRoots,
) -> InspectReport {
    let entries = table
        .entries()
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let (x509, x509_error) = describe(e.kind, e.data);
            EntryReport {
                index,
                guid: e.guid.to_string(),
                kind: e.kind,
                name: e.kind.to_string(),
                offset: e.offset,
                length: e.data.len(),
                encoding: e.encoding(),
                x509,
                x509_error,
            }
        })
        .collect();
    let warnings = table.warnings();
    InspectReport {
        file,
        size: table.as_bytes().len(),
        pages: (table.as_bytes().len() as u64).div_ceil(snp_certs::serve::PAGE_SIZE),
        entries,
        chain: time.verify(table, roots),
        warning_messages: warnings.iter().map(ToString::to_string).collect(),
        warnings,
    }
}

fn print_text(r: &InspectReport) {
    outln!(
        "{}: {} bytes ({} pages), {} entries",
        r.file.display(),
        r.size,
        r.pages,
        r.entries.len()
    );
    if !r.entries.is_empty() {
        outln!(
            "  {:>2}  {:<36}  {:<10}  {:>7}  {:>7}  encoding",
            "#",
            "guid",
            "name",
            "offset",
            "length"
        );
    }
    for e in &r.entries {
        outln!(
            "  {:>2}  {:<36}  {:<10}  {:>7}  {:>7}  {}",
            e.index,
            e.guid,
            e.name,
            e.offset,
            e.length,
            e.encoding
        );
        print_x509(e);
    }
    for line in chain_report::lines(&r.chain, false) {
        outln!("{line}");
    }
    for w in &r.warning_messages {
        outln!("warning: {w}");
    }
}

fn print_x509(e: &EntryReport) {
    let pad = "      ";
    match &e.x509 {
        Some(EntryInfo::Certificate(c)) => {
            outln!("{pad}subject  {}", c.subject);
            outln!("{pad}issuer   {}", c.issuer);
            outln!("{pad}valid    {} to {}", c.not_before, c.not_after);
            outln!("{pad}serial   {}", c.serial);
            outln!(
                "{pad}key      {} (signed with {})",
                c.key,
                c.signature_algorithm
            );
            match (&c.product, &c.product_name) {
                (Some(line), Some(name)) => outln!("{pad}product  {line} ({name})"),
                (Some(line), None) => outln!("{pad}product  {line}"),
                _ => {}
            }
            if let Some(tcb) = &c.tcb {
                outln!("{pad}tcb      {tcb}");
            }
            if let Some(hwid) = &c.hwid {
                outln!("{pad}hwid     {hwid}");
            }
            if let Some(csp) = &c.csp_id {
                outln!("{pad}csp id   {csp}");
            }
        }
        Some(EntryInfo::Crl(c)) => {
            outln!("{pad}issuer   {}", c.issuer);
            match &c.next_update {
                Some(next) => outln!("{pad}updated  {} (next {next})", c.this_update),
                None => outln!("{pad}updated  {}", c.this_update),
            }
            outln!(
                "{pad}revoked  {}",
                if c.revoked.is_empty() {
                    "none".to_owned()
                } else {
                    c.revoked.join(" ")
                }
            );
        }
        None => {
            if let Some(error) = &e.x509_error {
                outln!("{pad}not X.509: {error}");
            }
        }
    }
}

/// Runs `inspect`. Exit code 0 for a valid table (warnings or not).
pub fn run(args: &InspectArgs) -> Result<ExitCode> {
    let roots = args.time.roots()?;
    let r = files::with_locked_table(&args.file, args.timeout, "inspect", |table| {
        report(args.file.clone(), table, &args.time, &roots)
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(ExitCode::SUCCESS)
}
