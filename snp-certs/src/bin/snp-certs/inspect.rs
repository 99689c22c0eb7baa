//! `snp-certs inspect`: list a table's entries and warnings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use snp_certs::table::{CertTable, Encoding, TableWarning};
use snp_certs::{CertKind, CertsReader};

/// Show the entries of a certs file: GUIDs, names, offsets, lengths,
/// encodings and warnings. Reads the file under the shared lock.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The certs file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Maximum time in milliseconds to wait for the shared lock.
    #[arg(long, default_value_t = snp_certs::config::DEFAULT_CERTS_TIMEOUT_MS)]
    timeout: u64,
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
}

#[derive(Debug, Serialize)]
struct InspectReport {
    file: PathBuf,
    size: usize,
    pages: u64,
    entries: Vec<EntryReport>,
    warnings: Vec<TableWarning>,
    warning_messages: Vec<String>,
}

/// Builds the report for a table.
fn report(file: PathBuf, table: &CertTable<'_>) -> InspectReport {
    let entries = table
        .entries()
        .iter()
        .enumerate()
        .map(|(index, e)| EntryReport {
            index,
            guid: e.guid.to_string(),
            kind: e.kind,
            name: e.kind.to_string(),
            offset: e.offset,
            length: e.data.len(),
            encoding: e.encoding(),
        })
        .collect();
    let warnings = table.warnings();
    InspectReport {
        file,
        size: table.as_bytes().len(),
        pages: (table.as_bytes().len() as u64).div_ceil(snp_certs::serve::PAGE_SIZE),
        entries,
        warning_messages: warnings.iter().map(ToString::to_string).collect(),
        warnings,
    }
}

fn print_text(r: &InspectReport) {
    println!(
        "{}: {} bytes ({} pages), {} entries",
        r.file.display(),
        r.size,
        r.pages,
        r.entries.len()
    );
    if !r.entries.is_empty() {
        println!(
            "  {:>2}  {:<36}  {:<10}  {:>7}  {:>7}  encoding",
            "#", "guid", "name", "offset", "length"
        );
    }
    for e in &r.entries {
        println!(
            "  {:>2}  {:<36}  {:<10}  {:>7}  {:>7}  {}",
            e.index, e.guid, e.name, e.offset, e.length, e.encoding
        );
    }
    for w in &r.warning_messages {
        println!("warning: {w}");
    }
}

/// Runs `inspect`. Exit code 0 for a valid table (warnings or not).
pub fn run(args: &InspectArgs) -> Result<ExitCode> {
    let mut reader = CertsReader::new();
    let locked = reader
        .lock_and_read(&args.file, std::time::Duration::from_millis(args.timeout))
        .with_context(|| format!("cannot inspect {}", args.file.display()))?;
    let table = CertTable::parse(locked.bytes).context("invalid table")?;
    let r = report(args.file.clone(), &table);
    drop(locked);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(ExitCode::SUCCESS)
}
