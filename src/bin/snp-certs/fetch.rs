//! `snp-certs fetch`: get a platform's certificates from AMD's KDS
//! (through the host cache), verify them, and write a new certs file or a
//! directory as snphost and snpguest write them (see `cert_dir.rs`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use snp_certs::CertKind;
use snp_certs::table::CertTable;
use snp_certs_verify::x509::DocumentKind;
use snp_kds::cache::write_atomic;
use snp_kds::{Bundle, FetchRequest, Kds, SignerRequest};

use crate::cert_dir::{self, Encoding};
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
    /// Write ark.der, ask.der (asvk.der for a VLEK), vcek.der (or
    /// vlek.der) and crl.der into DIR, as snphost and snpguest name them
    /// (.pem with --encoding pem), replacing those files. A DIR holding
    /// certificates in the other encoding is refused.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The encoding of the files --dir writes, one for all of them.
    #[arg(long, value_enum, default_value_t = Encoding::Der, requires = "dir")]
    encoding: Encoding,
}

/// Writes a bundle into `dir`, every file in `encoding`.
fn write_dir(dir: &Path, bundle: &Bundle, encoding: Encoding) -> Result<Vec<PathBuf>> {
    cert_dir::check_encoding(dir, encoding)?;
    let vlek = matches!(bundle.signer, Some((CertKind::Vlek, _)));
    let cert = DocumentKind::Certificate;
    let mut files: Vec<(&str, &[u8], DocumentKind)> = vec![
        ("ark", &bundle.chain.ark, cert),
        (if vlek { "asvk" } else { "ask" }, &bundle.chain.ask, cert),
    ];
    if let Some((kind, der)) = &bundle.signer {
        files.push((kind.name(), der, cert));
    }
    if let Some(crl) = &bundle.crl {
        files.push(("crl", crl, DocumentKind::Crl));
    }
    // Everything is encoded before anything is written.
    let encoded = files
        .into_iter()
        .map(|(stem, der, kind)| {
            Ok((
                dir.join(cert_dir::file_name(stem, encoding)),
                cert_dir::encode(der, kind, encoding)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (path, bytes) in encoded {
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
    if let Some(dir) = &args.dir {
        // Before asking KDS: a directory this would leave mixed.
        cert_dir::check_encoding(dir, args.encoding)?;
    }
    let config = args.kds.config()?;
    let roots = config.roots.clone();
    let kds = Kds::new(config);
    let bundle = match kds.fetch(&request) {
        Ok(bundle) => bundle,
        Err(e) => return Ok(ExitCode::from(report_error(e, "fetch certificates"))),
    };
    let table = CertTable::parse(&bundle.table).context("the fetched table does not validate")?;
    let summary = chain_report::summary(&args.kds.time.verify(&table, &roots));
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
        let written = write_dir(dir, &bundle, args.encoding)?;
        let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        outln!("wrote {}, {summary}", names.join(", "));
    }
    print_sources(&bundle, &kds);
    Ok(ExitCode::SUCCESS)
}
