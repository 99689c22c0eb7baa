//! `snp-certs import-dir`: a new certs file from a directory as snphost or
//! snpguest wrote it (names in `cert_dir.rs`).
//!
//! A directory either tool filled, or both, can hold more than one file
//! for one entry: snpguest's `crl.der` beside snphost's `Milan.crl`,
//! `ark.pem` beside `ark.der`, a VCEK chain beside a VLEK chain. Files
//! holding the same certificate are one entry (the first name is taken
//! and the choice said); two different CRLs give the newer one (later
//! `thisUpdate`); other differing files are refused, since which one is
//! right cannot be told. Of a VCEK and a VLEK, the one whose CA file is
//! there is taken (`ask.*` for the VCEK, `asvk.*` for the VLEK), the VCEK
//! when both are, and `--vlek` takes the VLEK; either way it is said.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use snp_certs::CertKind;
use snp_certs_verify::x509::{DocumentKind, ParsedCrl};
use uuid::Uuid;

use crate::build::{Inputs, OutputArgs, finish, load};
use crate::cert_dir::{Role, role_of};

/// Build a new certs file from a directory as snphost or snpguest wrote
/// it: ark.*, ask.* or asvk.*, vcek.* or vlek.*, crl.* or snphost's
/// Milan.crl (Genoa.crl, Turin.crl), GUID.* or other-GUID.* for other
/// entries (extensions .pem, .der, .cert, .crt, .crl). Where one entry
/// has several files, one is taken and named. With both a VCEK and a
/// VLEK, the one whose CA file (ask.* or asvk.*) is there, the VCEK if
/// both are; --vlek takes the VLEK.
#[derive(Debug, Args)]
pub struct ImportDirArgs {
    /// The directory.
    dir: PathBuf,
    /// Take the VLEK and the ASVK when the directory holds both a VCEK
    /// and a VLEK chain.
    #[arg(long)]
    vlek: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// The files found for each entry.
#[derive(Debug, Default)]
struct Found {
    ark: Vec<PathBuf>,
    ask: Vec<PathBuf>,
    asvk: Vec<PathBuf>,
    vcek: Vec<PathBuf>,
    vlek: Vec<PathBuf>,
    crl: Vec<PathBuf>,
    others: Vec<(Uuid, PathBuf)>,
}

fn names(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    names.join(", ")
}

/// Reads the directory and sorts its files by entry.
fn scan(dir: &Path) -> Result<Found> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    paths.sort();
    let mut found = Found::default();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(role) = role_of(&name).filter(|_| path.is_file()) else {
            eprintln!("note: ignoring {}", path.display());
            continue;
        };
        match role {
            Role::Ark => found.ark.push(path),
            Role::Ask("asvk") => found.asvk.push(path),
            Role::Ask(_) => found.ask.push(path),
            Role::Signer(CertKind::Vlek) => found.vlek.push(path),
            Role::Signer(_) => found.vcek.push(path),
            Role::Crl => found.crl.push(path),
            Role::Other(guid) => {
                let kind = CertKind::from_guid(&guid);
                if kind != CertKind::Other && kind != CertKind::ExtraPlatformInfo {
                    bail!(
                        "{} is named by the {kind} GUID: name it {}.der",
                        path.display(),
                        kind.name()
                    );
                }
                found.others.push((guid, path));
            }
        }
    }
    Ok(found)
}

/// When a CRL was issued, for choosing the newer of two.
fn this_update(path: &Path) -> Result<std::time::SystemTime> {
    let der = load(path, "crl", DocumentKind::Crl)?;
    let crl = ParsedCrl::parse(&der).with_context(|| format!("crl {}", path.display()))?;
    Ok(crl.crl.tbs_cert_list.this_update.to_system_time())
}

/// One file for an entry out of `paths`: the only one, the first of
/// several holding the same document, or (CRLs) the newest.
fn pick(what: &str, paths: &[PathBuf], kind: DocumentKind) -> Result<Option<PathBuf>> {
    let Some(first) = paths.first() else {
        return Ok(None);
    };
    if paths.len() == 1 {
        return Ok(Some(first.clone()));
    }
    let ders = paths
        .iter()
        .map(|p| load(p, what, kind))
        .collect::<Result<Vec<_>>>()?;
    if ders.iter().all(|d| d == &ders[0]) {
        eprintln!(
            "note: {} hold the same {what}; took {}",
            names(paths),
            names(&paths[..1])
        );
        return Ok(Some(first.clone()));
    }
    if kind != DocumentKind::Crl {
        bail!(
            "{} hold different {what} certificates: keep the right one",
            names(paths)
        );
    }
    let mut newest = (first.clone(), this_update(first)?);
    for path in &paths[1..] {
        let issued = this_update(path)?;
        if issued > newest.1 {
            newest = (path.clone(), issued);
        }
    }
    eprintln!(
        "note: {} hold different CRLs; took the newest, {}",
        names(paths),
        names(std::slice::from_ref(&newest.0))
    );
    Ok(Some(newest.0))
}

/// Which report signer to take, and its CA files.
fn signer_choice(found: &Found, vlek: bool, dir: &Path) -> Result<Option<CertKind>> {
    let (vcek, vlek_there) = (!found.vcek.is_empty(), !found.vlek.is_empty());
    if vlek {
        if !vlek_there {
            bail!("--vlek: {} holds no vlek.* file", dir.display());
        }
        return Ok(Some(CertKind::Vlek));
    }
    Ok(match (vcek, vlek_there) {
        (true, true) => {
            let (kind, took, other) = if found.ask.is_empty() && !found.asvk.is_empty() {
                (CertKind::Vlek, &found.vlek, &found.vcek)
            } else {
                (CertKind::Vcek, &found.vcek, &found.vlek)
            };
            eprintln!(
                "note: {} holds a VCEK and a VLEK; took {} ({}), not {}{}",
                dir.display(),
                names(took),
                if kind == CertKind::Vlek {
                    "its ASVK is there, the ASK is not"
                } else {
                    "with the ASK"
                },
                names(other),
                if kind == CertKind::Vcek {
                    "; --vlek takes the VLEK and the ASVK"
                } else {
                    ""
                }
            );
            Some(kind)
        }
        (true, false) => Some(CertKind::Vcek),
        (false, true) => Some(CertKind::Vlek),
        (false, false) => None,
    })
}

/// Runs `import-dir`.
pub fn run(args: &ImportDirArgs) -> Result<ExitCode> {
    let found = scan(&args.dir)?;
    let signer = signer_choice(&found, args.vlek, &args.dir)?;
    // The CA file that goes with the signer: the ASVK for a VLEK, the ASK
    // for a VCEK; the other one only if that is all there is.
    let (ca_files, ca_name, unused) = match signer {
        Some(CertKind::Vlek) if !found.asvk.is_empty() => (&found.asvk, "asvk", &found.ask),
        _ if !found.ask.is_empty() => (&found.ask, "ask", &found.asvk),
        _ => (&found.asvk, "asvk", &found.ask),
    };
    if !unused.is_empty() && !ca_files.is_empty() {
        eprintln!(
            "note: not using {}: {} goes with the {}",
            names(unused),
            names(&ca_files[..1]),
            signer.map_or("chain", CertKind::name)
        );
    }
    let cert = DocumentKind::Certificate;
    let signer_files = match signer {
        Some(CertKind::Vlek) => &found.vlek,
        _ => &found.vcek,
    };
    let inputs = Inputs {
        ark: pick("ark", &found.ark, cert)?,
        ask: pick(ca_name, ca_files, cert)?.map(|p| (p, ca_name)),
        signer: match signer {
            Some(kind) => pick(kind.name(), signer_files, cert)?.map(|p| (kind, p)),
            None => None,
        },
        crl: pick("crl", &found.crl, DocumentKind::Crl)?,
        others: found.others.clone(),
    };
    if inputs.ark.is_none() && inputs.ask.is_none() && inputs.signer.is_none() {
        bail!(
            "{} holds no ark.*, ask.*, asvk.*, vcek.* or vlek.* file",
            args.dir.display()
        );
    }
    finish(&inputs.table()?, &args.output)
}
