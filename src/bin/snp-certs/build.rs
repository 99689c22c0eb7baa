//! `snp-certs build` (and, through it, `import-dir`): make a new certs
//! file from certificate files.
//!
//! Both read PEM or DER certificates, normalise them to DER, build the
//! table (report signer first, then ASK/ASVK, ARK, CRL, other entries),
//! validate it, check its chain, and write it to a file that must not
//! exist yet (see `files.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use snp_certs::CertKind;
use snp_certs::table::{CertTable, TableBuilder};
use snp_certs_verify::x509::{DocumentKind, to_der};
use uuid::Uuid;

use crate::chain_report::{self, ChainCheck};
use crate::files::{check_guest_limit, read_input, write_new_file};

/// Build a new certs file from certificate files (PEM or DER). The chain
/// is verified (signatures, names, validity) before anything is written.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("ca").required(true).args(["ask", "asvk"])))]
#[command(group(ArgGroup::new("signer").required(true).args(["vcek", "vlek"])))]
pub struct BuildArgs {
    /// AMD Root Key certificate.
    #[arg(long, value_name = "FILE")]
    ark: PathBuf,
    /// AMD SEV Key certificate (for a VCEK chain).
    #[arg(long, value_name = "FILE")]
    ask: Option<PathBuf>,
    /// AMD SEV VLEK Key certificate (for a VLEK chain; stored under the
    /// ASK GUID).
    #[arg(long, value_name = "FILE")]
    asvk: Option<PathBuf>,
    /// VCEK certificate.
    #[arg(long, value_name = "FILE")]
    vcek: Option<PathBuf>,
    /// VLEK certificate.
    #[arg(long, value_name = "FILE")]
    vlek: Option<PathBuf>,
    /// Certificate revocation list for the ASK/ASVK.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Any other entry, copied as is (repeatable).
    #[arg(long, value_name = "GUID=FILE", value_parser = parse_other)]
    other: Vec<(Uuid, PathBuf)>,
    #[command(flatten)]
    output: OutputArgs,
}

/// Where to write and how strict to be.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// The new certs file. Must not exist: a live file is replaced with
    /// `snp-certs update`.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Write the table even if its chain does not verify (loudly warned).
    #[arg(long)]
    allow_unverified: bool,
    /// Write a table above 16 KiB, for guests known to offer a larger
    /// buffer (Linux guests offer 16 KiB and cannot receive it).
    #[arg(long)]
    allow_large: bool,
    #[command(flatten)]
    time: ChainCheck,
}

fn parse_other(s: &str) -> Result<(Uuid, PathBuf), String> {
    let (guid, file) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not GUID=FILE"))?;
    let guid = Uuid::parse_str(guid).map_err(|e| format!("bad GUID {guid:?}: {e}"))?;
    if guid.is_nil() {
        return Err("the null GUID ends a table and cannot name an entry".to_owned());
    }
    let kind = CertKind::from_guid(&guid);
    if kind != CertKind::Other && kind != CertKind::ExtraPlatformInfo {
        return Err(format!(
            "{guid} is the {kind} GUID: use --{} instead",
            kind.name()
        ));
    }
    Ok((guid, PathBuf::from(file)))
}

/// The certificate files of one table.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    pub ark: Option<PathBuf>,
    pub ask: Option<(PathBuf, &'static str)>,
    pub signer: Option<(CertKind, PathBuf)>,
    pub crl: Option<PathBuf>,
    pub others: Vec<(Uuid, PathBuf)>,
}

/// Reads one certificate or CRL file and normalises it to DER.
pub(crate) fn load(path: &Path, what: &str, kind: DocumentKind) -> Result<Vec<u8>> {
    let data = read_input(path)?;
    to_der(&data, kind).with_context(|| format!("{what} {}", path.display()))
}

impl Inputs {
    /// Builds the table bytes.
    pub(crate) fn table(&self) -> Result<Vec<u8>> {
        let mut b = TableBuilder::new();
        let cert = DocumentKind::Certificate;
        if let Some((kind, path)) = &self.signer {
            b.add(*kind, load(path, kind.name(), cert)?)?;
        }
        if let Some((path, name)) = &self.ask {
            b.add(CertKind::Ask, load(path, name, cert)?)?;
        }
        if let Some(path) = &self.ark {
            b.add(CertKind::Ark, load(path, "ark", cert)?)?;
        }
        if let Some(path) = &self.crl {
            b.add(CertKind::Crl, load(path, "crl", DocumentKind::Crl)?)?;
        }
        for (guid, path) in &self.others {
            b.add_guid(*guid, read_input(path)?)
                .with_context(|| format!("entry {guid} from {}", path.display()))?;
        }
        Ok(b.build()?)
    }
}

/// Validates, verifies and writes a new table. Exit code 1 (and nothing
/// written) when the chain fails without `--allow-unverified`.
pub(crate) fn finish(bytes: &[u8], out: &OutputArgs) -> Result<ExitCode> {
    let table = CertTable::parse(bytes).context("the built table does not validate")?;
    check_guest_limit(bytes.len(), out.allow_large, &out.output)?;
    for w in table.warnings() {
        eprintln!("warning: {w}");
    }
    let roots = out.time.roots()?;
    let report = out.time.verify(&table, &roots);
    if !report.is_verified() {
        if !out.allow_unverified {
            for line in chain_report::lines(&report, false) {
                eprintln!("{line}");
            }
            eprintln!(
                "snp-certs: not writing {}: the chain does not verify \
                 (--allow-unverified writes it anyway)",
                out.output.display()
            );
            return Ok(ExitCode::from(1));
        }
        eprintln!("{}", chain_report::unverified_warning(&report));
    }
    write_new_file(&out.output, bytes)?;
    outln!(
        "wrote {}: {} bytes, {} entries, {}",
        out.output.display(),
        bytes.len(),
        table.entries().len(),
        chain_report::summary(&report)
    );
    for note in &report.notes {
        outln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `build`.
pub fn run_build(args: &BuildArgs) -> Result<ExitCode> {
    let inputs = Inputs {
        ark: Some(args.ark.clone()),
        ask: match (&args.ask, &args.asvk) {
            (Some(p), _) => Some((p.clone(), "ask")),
            (None, Some(p)) => Some((p.clone(), "asvk")),
            (None, None) => None,
        },
        signer: match (&args.vcek, &args.vlek) {
            (Some(p), _) => Some((CertKind::Vcek, p.clone())),
            (None, Some(p)) => Some((CertKind::Vlek, p.clone())),
            (None, None) => None,
        },
        crl: args.crl.clone(),
        others: args.other.clone(),
    };
    finish(&inputs.table()?, &args.output)
}
