//! `snp-certs export`: write each entry of a certs file to its own file,
//! named as snphost and snpguest name them (see `cert_dir.rs`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use snp_certs::CertKind;
use snp_certs_verify::x509::DocumentKind;

use crate::cert_dir::{self, Encoding};
use crate::files;

/// Write each entry of a certs file to DIR: ark.der, ask.der (asvk.der in
/// a VLEK chain, as snphost and snpguest name it), vcek.der, vlek.der,
/// crl.der (all .pem with --encoding pem), other entries as GUID.bin.
/// Reads the file under the shared lock; existing files in DIR are
/// replaced, but a DIR holding certificates in the other encoding is
/// refused (it would end up mixed).
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The certs file.
    file: PathBuf,
    /// The directory to write to (created if missing).
    dir: PathBuf,
    /// The encoding of the certificates and the CRL written.
    #[arg(long, value_enum, default_value_t = Encoding::Der)]
    encoding: Encoding,
    /// The same as --encoding pem (kept for older scripts).
    #[arg(long, hide = true, conflicts_with = "encoding")]
    pem: bool,
    /// Maximum time in milliseconds to wait for the shared lock.
    #[arg(long, default_value_t = snp_certs::config::DEFAULT_CERTS_TIMEOUT_MS)]
    timeout: u64,
}

/// File name and content for one entry.
fn exported(
    kind: CertKind,
    guid: &uuid::Uuid,
    data: &[u8],
    encoding: Encoding,
    vlek_chain: bool,
) -> (String, Vec<u8>) {
    let document = match kind {
        CertKind::Ark | CertKind::Ask | CertKind::Vcek | CertKind::Vlek => {
            Some(DocumentKind::Certificate)
        }
        CertKind::Crl => Some(DocumentKind::Crl),
        CertKind::ExtraPlatformInfo | CertKind::Other => None,
    };
    let stem = match document {
        Some(_) if kind == CertKind::Ask && vlek_chain => "asvk".to_owned(),
        Some(_) => kind.name().to_owned(),
        None => guid.to_string(),
    };
    let Some(document) = document else {
        return (format!("{stem}.bin"), data.to_vec());
    };
    match cert_dir::encode(data, document, encoding) {
        Ok(bytes) => (cert_dir::file_name(&stem, encoding), bytes),
        Err(e) => {
            eprintln!(
                "warning: the {kind} entry is not a valid {document:?} ({e:#}); written as is"
            );
            (format!("{stem}.bin"), data.to_vec())
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader of the exported file never sees half of it.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = fs::File::create(&temp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `export`.
pub fn run(args: &ExportArgs) -> Result<ExitCode> {
    let encoding = if args.pem {
        Encoding::Pem
    } else {
        args.encoding
    };
    let files: Vec<(String, Vec<u8>)> =
        files::with_locked_table(&args.file, args.timeout, "export", |table| {
            let vlek_chain = table.entries().iter().any(|e| e.kind == CertKind::Vlek);
            table
                .entries()
                .iter()
                .map(|e| exported(e.kind, &e.guid, e.data, encoding, vlek_chain))
                .collect()
        })?;
    cert_dir::check_encoding(&args.dir, encoding)?;
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    for (name, bytes) in &files {
        let path = args.dir.join(name);
        write_replacing(&path, bytes)?;
        outln!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(ExitCode::SUCCESS)
}
