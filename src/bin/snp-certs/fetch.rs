//! `snp-certs fetch`: get a platform's certificates from AMD's KDS
//! (through the host cache), verify them, and write a new certs file or a
//! snphost-style directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use snp_certs::CertKind;
use snp_certs::table::CertTable;
use snp_certs_verify::x509::{DocumentKind, to_pem};
use snp_kds::cache::write_atomic;
use snp_kds::{Bundle, FetchRequest, Kds, SignerRequest};

use crate::chain_report;
use crate::files::{exists_error, read_input, write_new_file};
use crate::kds_args::{IdentityArgs, KdsArgs, report_error};

/// Fetch the VCEK for a chip and TCB (or, with --vlek, the VLEK chain),
/// the ASK/ASVK and ARK, and the CRL from AMD's Key Distribution Service,
/// through a verified host cache: a second fetch of the same identity
/// makes no request. Everything is verified (signatures, and that the VCEK
/// is for exactly this chip and TCB) before it is cached or written.
/// Exit codes: 0 written; 1 refused (does not verify, or not for this
/// platform); 66 --offline and not cached; 69 KDS rate limited or
/// unreachable past the retry budget (run again later); 2 other errors.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("out").required(true).args(["output", "dir"])))]
pub struct FetchArgs {
    #[command(flatten)]
    id: IdentityArgs,
    /// A VLEK host: the VLEK certificate the cloud provider gave (PEM or
    /// DER). The ASVK/ARK chain and CRL come from KDS's /vlek/ tree;
    /// needs --product.
    #[arg(
        long,
        value_name = "FILE",
        requires = "product",
        conflicts_with_all = ["hwid", "tcb", "from_report", "from_host"]
    )]
    vlek: Option<PathBuf>,
    /// Leave the CRL out (then a KDS without one is no error).
    #[arg(long)]
    no_crl: bool,
    #[command(flatten)]
    kds: KdsArgs,
    /// Write a new certs file (must not exist: replace a live one with
    /// `snp-certs update` or `snp-certs refresh`).
    #[arg(short, long, value_name = "NEWFILE")]
    output: Option<PathBuf>,
    /// Write ark.pem, ask.pem (or asvk.pem), vcek.der (or vlek.der) and
    /// crl.der into DIR, as snphost names them (replacing those files).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Writes a bundle as snphost-style files into `dir`.
fn write_dir(dir: &Path, bundle: &Bundle) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let vlek = matches!(bundle.signer, Some((CertKind::Vlek, _)));
    let pem = |der: &[u8]| to_pem(der, DocumentKind::Certificate).map(String::into_bytes);
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("ark.pem", pem(&bundle.chain.ark)?),
        (
            if vlek { "asvk.pem" } else { "ask.pem" },
            pem(&bundle.chain.ask)?,
        ),
    ];
    if let Some((kind, der)) = &bundle.signer {
        let name = if *kind == CertKind::Vlek {
            "vlek.der"
        } else {
            "vcek.der"
        };
        files.push((name, der.clone()));
    }
    if let Some(crl) = &bundle.crl {
        files.push(("crl.der", crl.clone()));
    }
    let mut written = Vec::new();
    for (name, bytes) in files {
        let path = dir.join(name);
        write_atomic(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Prints where each document came from and how many requests were made.
pub fn print_sources(bundle: &Bundle, kds: &Kds) {
    for source in &bundle.sources {
        outln!("  {source}");
    }
    for note in &bundle.notes {
        outln!("note: {note}");
    }
    outln!("KDS requests: {}", kds.requests());
}

/// Runs `fetch`.
pub fn run(args: &FetchArgs) -> Result<ExitCode> {
    if let Some(out) = &args.output {
        if fs::symlink_metadata(out).is_ok() {
            return Err(exists_error(out));
        }
    }
    let request = match &args.vlek {
        Some(path) => FetchRequest {
            product: args.id.product.context("--vlek needs --product")?,
            signer: SignerRequest::Vlek(read_input(path)?),
            crl: !args.no_crl,
        },
        None => FetchRequest::vcek(args.id.resolve()?, !args.no_crl),
    };
    let kds = Kds::new(args.kds.config());
    let bundle = match kds.fetch(&request) {
        Ok(bundle) => bundle,
        Err(e) => return Ok(ExitCode::from(report_error(e, "fetch certificates"))),
    };
    let table = CertTable::parse(&bundle.table).context("the fetched table does not validate")?;
    let summary = chain_report::summary(&args.kds.time.verify(&table));
    if let Some(out) = &args.output {
        write_new_file(out, &bundle.table)?;
        outln!(
            "wrote {}: {} bytes, {} entries, {summary}",
            out.display(),
            bundle.table.len(),
            table.entries().len()
        );
    }
    if let Some(dir) = &args.dir {
        let written = write_dir(dir, &bundle)?;
        let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        outln!("wrote {}, {summary}", names.join(", "));
    }
    print_sources(&bundle, &kds);
    Ok(ExitCode::SUCCESS)
}
