//! `snp-certs export`: write each entry of a certs file to its own file,
//! named like `snpguest certificates` names them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use snp_certs::CertKind;
use snp_certs_verify::x509::{DocumentKind, to_der, to_pem};

use crate::build::{Role, role_of};
use crate::files;

/// Write each entry of a certs file to DIR: ark.der, ask.der (asvk.der in
/// a VLEK chain, as snphost and snpguest name it), vcek.der, vlek.der,
/// crl.der (or .pem with --pem), other entries as GUID.bin. Certificates
/// stored as PEM in the table are written as DER unless --pem is given.
/// Reads the file under the shared lock; existing files in DIR are
/// replaced, but a DIR holding certificates in the other encoding is
/// refused (it would end up mixed, and import-dir would refuse it).
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The certs file.
    file: PathBuf,
    /// The directory to write to (created if missing).
    dir: PathBuf,
    /// Write certificates and the CRL as PEM instead of DER.
    #[arg(long)]
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
    pem: bool,
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
    match to_der(data, document) {
        Ok(der) if pem => match to_pem(&der, document) {
            Ok(text) => (format!("{stem}.pem"), text.into_bytes()),
            Err(_) => (format!("{stem}.der"), der),
        },
        Ok(der) => (format!("{stem}.der"), der),
        Err(e) => {
            eprintln!("warning: the {kind} entry is not a valid {document:?} ({e}); written as is");
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

/// Refuses `dir` if it holds a chain file (`ark.pem`, `vcek.der`, ...) in
/// the encoding other than `extension`.
fn check_encoding(dir: &Path, extension: &str) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        let chain_file = matches!(role_of(&name), Some(role) if !matches!(role, Role::Other(_)));
        let other_encoding = match name.rsplit_once('.') {
            Some((_, ext)) => matches!(ext, "pem" | "der") && ext != extension,
            None => false,
        };
        if chain_file && other_encoding {
            bail!(
                "{} already holds {name}: exporting .{extension} files there would mix encodings, \
                 and import-dir would then find two files for one entry; \
                 export {} or into another directory",
                dir.display(),
                if extension == "pem" {
                    "without --pem"
                } else {
                    "with --pem"
                }
            );
        }
    }
    Ok(())
}

/// Runs `export`.
pub fn run(args: &ExportArgs) -> Result<ExitCode> {
    let files: Vec<(String, Vec<u8>)> =
        files::with_locked_table(&args.file, args.timeout, "export", |table| {
            let vlek_chain = table.entries().iter().any(|e| e.kind == CertKind::Vlek);
            table
                .entries()
                .iter()
                .map(|e| exported(e.kind, &e.guid, e.data, args.pem, vlek_chain))
                .collect()
        })?;
    check_encoding(&args.dir, if args.pem { "pem" } else { "der" })?;
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    for (name, bytes) in &files {
        let path = args.dir.join(name);
        write_replacing(&path, bytes)?;
        outln!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(ExitCode::SUCCESS)
}
