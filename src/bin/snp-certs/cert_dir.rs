//! Certificate directories as snphost and snpguest write them, for
//! `fetch --dir`, `export` and `import-dir`.
//!
//! Both tools name a file by its role and its encoding: `ark.der`,
//! `ask.der` (`asvk.der` in a VLEK chain), `vcek.der` or `vlek.der`
//! (`.pem` for PEM), `snphost fetch ca|vek der|pem DIR` and `snpguest
//! fetch ca|vcek der|pem DIR` alike. For the CRL snpguest writes `crl.der`
//! or `crl.pem`, snphost `Milan.crl` (`Genoa.crl`, `Turin.crl`: KDS's DER,
//! named after the product line); snpguest writes other table entries as
//! `other-GUID.der`. A directory holds one encoding: what this tool writes
//! there is refused if it would mix them.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use snp_certs::CertKind;
use snp_certs_verify::x509::{DocumentKind, to_der, to_pem};
use uuid::Uuid;

/// How certificates and CRLs are written to a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// Binary DER (`.der`), what certs files hold.
    Der,
    /// Base64 PEM (`.pem`).
    Pem,
}

impl Encoding {
    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Der => "der",
            Encoding::Pem => "pem",
        }
    }

    fn other(self) -> Encoding {
        match self {
            Encoding::Der => Encoding::Pem,
            Encoding::Pem => Encoding::Der,
        }
    }

    /// `der` or `pem` from an extension, if it is one of them.
    fn of_extension(ext: &str) -> Option<Encoding> {
        match ext.to_ascii_lowercase().as_str() {
            "der" => Some(Encoding::Der),
            "pem" => Some(Encoding::Pem),
            _ => None,
        }
    }

    /// `der` (DER) or `pem` (PEM), for messages.
    fn shown(self) -> &'static str {
        match self {
            Encoding::Der => "DER",
            Encoding::Pem => "PEM",
        }
    }
}

/// What a file in a certificate directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `ark.*`.
    Ark,
    /// `ask.*` (`"ask"`) or `asvk.*` (`"asvk"`).
    Ask(&'static str),
    /// `vcek.*` or `vlek.*`.
    Signer(CertKind),
    /// `crl.*` (snpguest) or `milan.crl`, `genoa.crl`, `turin.crl`
    /// (snphost).
    Crl,
    /// `GUID.*` or snpguest's `other-GUID.*`.
    Other(Uuid),
}

/// The role a file name gives (case-insensitive): `ark`, `ask`, `asvk`,
/// `vcek`, `vlek` and `crl` with the extension `.pem`, `.der`, `.cert`,
/// `.crt` or `.crl`; snphost's product-named CRL; other entries as
/// `GUID.*` or `other-GUID.*`.
pub fn role_of(name: &str) -> Option<Role> {
    let lower = name.to_ascii_lowercase();
    let (stem, ext) = lower.rsplit_once('.')?;
    let guid = stem.strip_prefix("other-").unwrap_or(stem);
    if let Ok(guid) = Uuid::parse_str(guid) {
        return Some(Role::Other(guid));
    }
    if ext == "crl" && matches!(stem, "milan" | "genoa" | "turin") {
        return Some(Role::Crl);
    }
    if !matches!(ext, "pem" | "der" | "cert" | "crt" | "crl") {
        return None;
    }
    Some(match stem {
        "ark" => Role::Ark,
        "ask" => Role::Ask("ask"),
        "asvk" => Role::Ask("asvk"),
        "vcek" => Role::Signer(CertKind::Vcek),
        "vlek" => Role::Signer(CertKind::Vlek),
        "crl" => Role::Crl,
        _ => return None,
    })
}

/// The file name for `stem` (`ark`, `asvk`, `crl`, …) in `encoding`.
pub fn file_name(stem: &str, encoding: Encoding) -> String {
    format!("{stem}.{}", encoding.extension())
}

/// A certificate or CRL (DER or PEM) in `encoding`.
pub fn encode(data: &[u8], kind: DocumentKind, encoding: Encoding) -> Result<Vec<u8>> {
    let der = to_der(data, kind)?;
    Ok(match encoding {
        Encoding::Der => der,
        Encoding::Pem => to_pem(&der, kind)?.into_bytes(),
    })
}

/// Refuses `dir` if it holds certificate files (`ark.pem`, `vcek.der`,
/// …) in the encoding other than `encoding`: writing there would leave
/// the directory mixed. A missing `dir` is fine.
pub fn check_encoding(dir: &Path, encoding: Encoding) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let chain_file = matches!(role_of(&name), Some(role) if !matches!(role, Role::Other(_)));
        let theirs = name
            .rsplit_once('.')
            .and_then(|(_, ext)| Encoding::of_extension(ext));
        if chain_file && theirs == Some(encoding.other()) {
            found.push(name);
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    bail!(
        "{} holds {} certificates ({}): writing {} there would mix encodings; \
         use --encoding {}, or another directory",
        dir.display(),
        encoding.other().shown(),
        found.join(", "),
        encoding.shown(),
        encoding.other().extension()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_both_tools_have_roles() {
        assert_eq!(role_of("ark.pem"), Some(Role::Ark));
        assert_eq!(role_of("ASVK.der"), Some(Role::Ask("asvk")));
        assert_eq!(role_of("vlek.der"), Some(Role::Signer(CertKind::Vlek)));
        assert_eq!(role_of("crl.pem"), Some(Role::Crl));
        assert_eq!(role_of("Milan.crl"), Some(Role::Crl));
        assert_eq!(role_of("Turin.crl"), Some(Role::Crl));
        assert!(matches!(
            role_of("other-3a9c5e9e-6f3b-4f0e-9b1d-2c1f0e5d7a11.der"),
            Some(Role::Other(_))
        ));
        assert_eq!(role_of("report.bin"), None);
        assert_eq!(role_of("ark"), None);
        assert_eq!(file_name("asvk", Encoding::Pem), "asvk.pem");
    }

    #[test]
    fn a_directory_keeps_one_encoding() {
        let dir = tempfile::tempdir().unwrap();
        check_encoding(&dir.path().join("none"), Encoding::Pem).unwrap();
        fs::write(dir.path().join("ark.der"), b"x").unwrap();
        fs::write(dir.path().join("notes.pem"), b"x").unwrap();
        check_encoding(dir.path(), Encoding::Der).unwrap();
        let e = check_encoding(dir.path(), Encoding::Pem).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("holds DER certificates (ark.der)"), "{text}");
        assert!(text.contains("--encoding der"), "{text}");
    }
}
