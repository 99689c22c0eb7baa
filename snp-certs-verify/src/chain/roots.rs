//! AMD's root keys, built in, and the roots a chain may end in.
//!
//! A chain is only as good as its root. Every certificate in a table can
//! be internally consistent (the ARK self-signed, the ASK signed by it,
//! the VCEK by the ASK) and still be someone else's making: a KDS mirror,
//! a proxy, or anything posing as KDS can hand out a chain under a root of
//! its own. So the ARK of every chain is compared with AMD's published
//! root keys, pinned here, as go-sev-guest embeds AMD's roots and virtee's
//! `sev` crate carries them built in.
//!
//! # What is pinned
//!
//! The SHA-384 of each ARK's DER-encoded `SubjectPublicKeyInfo`: the key,
//! not the certificate, so a re-issued ARK certificate for the same key
//! still matches, and nothing else does. One key per product line:
//!
//! | product line | ARK | source of the certificate hashed |
//! | --- | --- | --- |
//! | Milan | `ARK-Milan`, serial `0x010000`, 2020-10-22 to 2045-10-22 | KDS `/vcek/v1/Milan/cert_chain`, as shipped in virtee `sev` 8.0.0 `src/certs/snp/builtin/milan/ark.pem` |
//! | Genoa (also Bergamo and Siena) | `ARK-Genoa`, serial `0x020000`, 2022-01-26 to 2047-01-26 | KDS `/vcek/v1/Genoa/cert_chain`, virtee `sev` 8.0.0 `builtin/genoa/ark.pem` |
//! | Turin | `ARK-Turin`, serial `0x030000`, 2023-05-15 to 2048-05-15 | KDS `/vcek/v1/Turin/cert_chain`, virtee `sev` 8.0.0 `builtin/turin/ark.pem` |
//!
//! The ASVK (the CA of the VLEK chains, KDS `/vlek/v1/{product}/cert_chain`)
//! is signed by the same ARK as the ASK: the ARKs in go-sev-guest's
//! `verify/trust/ask_ark_genoa_vlek.pem` and `ask_ark_turin_vlek.pem` are
//! the very certificates above (same serial, validity and signature;
//! Genoa's has the same SHA-256 fingerprint). So one pin per product line
//! covers both families.
//!
//! To recompute a value from an ARK certificate:
//!
//! ```text
//! openssl x509 -in ark.pem -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha384
//! ```
//!
//! The copies of these certificates in `tests/fixtures/amd/` are checked
//! against the pins by the unit tests.
//!
//! # Other roots
//!
//! Tests and lab stand-ins use chains of their own (the synthetic
//! `ARK-Testonly` chain of the fixtures, a fake KDS). Such a root is only
//! accepted when the caller names it explicitly:
//! [`TrustedRoots::with_extra_root`]. [`TrustedRoots::amd`] is the only
//! default.

use std::fmt;

use der::Encode;
use sha2::{Digest, Sha384};

use crate::x509::{ParsedCert, X509Error, common_name, hex};

/// One of AMD's root keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmdRoot {
    /// The product line it is the root of, as AMD names it (`Milan`).
    pub product: &'static str,
    /// SHA-384 of the ARK's DER `SubjectPublicKeyInfo`, lower-case hex.
    pub spki_sha384: &'static str,
}

/// AMD's root keys, one per product line (see the module docs for where
/// each value comes from).
pub const AMD_ROOTS: [AmdRoot; 3] = [
    AmdRoot {
        product: "Milan",
        spki_sha384: "1249f67f15cf229a4069195e1a9ce537d1765ef706a1f4a1\
                      23c36be9518786515d25ecc007f366b564d2b3f31c48082e",
    },
    AmdRoot {
        product: "Genoa",
        spki_sha384: "32ab53a6ce5ec14926207396e5c475ae768a6a9831b7e860\
                      b5acf2e1c1dff222bc5a8bfc43eb5e06393189c1f246d880",
    },
    AmdRoot {
        product: "Turin",
        spki_sha384: "3475f08a9727f8ac9a1deaea5f2a2097aa59d64d05c2a678\
                      c229c873e6359d3a6926287a2a22cd5f88a385e333a2fcc5",
    },
];

/// The pinned root of a product line (`Milan`, `genoa`, …), if AMD has
/// one built in here.
pub fn amd_root(product: &str) -> Option<&'static AmdRoot> {
    AMD_ROOTS
        .iter()
        .find(|r| r.product.eq_ignore_ascii_case(product))
}

/// SHA-384 of a certificate's DER `SubjectPublicKeyInfo`, lower-case hex.
pub fn spki_sha384(cert: &ParsedCert) -> String {
    let spki = &cert.cert.tbs_certificate.subject_public_key_info;
    // Re-encoding a decoded SPKI gives back its DER: DER has exactly one
    // encoding per value.
    let der = spki.to_der().unwrap_or_default();
    hex(&Sha384::digest(&der))
}

/// A root named by the operator, not AMD's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExtraRoot {
    spki_sha384: String,
    name: String,
}

/// The roots a chain may end in: AMD's, plus any the caller named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedRoots {
    extra: Vec<ExtraRoot>,
}

/// Which trusted root an ARK's key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootMatch {
    /// One of AMD's, built in.
    Amd(&'static AmdRoot),
    /// One the caller named; its subject common name (or subject).
    Extra(String),
}

impl fmt::Display for RootMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootMatch::Amd(root) => write!(f, "AMD's {} root key (built in)", root.product),
            RootMatch::Extra(name) => write!(f, "the root given as trusted ({name}), not AMD's"),
        }
    }
}

impl TrustedRoots {
    /// AMD's root keys only: the default, and the only one a real host
    /// needs.
    pub fn amd() -> TrustedRoots {
        TrustedRoots::default()
    }

    /// Also trusts the key of `root` (a certificate, PEM or DER): a test
    /// or lab stand-in for AMD's ARK, named explicitly by the operator.
    pub fn with_extra_root(mut self, root: &[u8]) -> Result<TrustedRoots, X509Error> {
        let parsed = ParsedCert::parse(root)?;
        let name = common_name(parsed.subject()).unwrap_or_else(|| parsed.subject().to_string());
        self.extra.push(ExtraRoot {
            spki_sha384: spki_sha384(&parsed),
            name,
        });
        Ok(self)
    }

    /// Whether roots other than AMD's are trusted.
    pub fn has_extra(&self) -> bool {
        !self.extra.is_empty()
    }

    /// Which trusted root `ark`'s key is, if any.
    pub fn find(&self, ark: &ParsedCert) -> Option<RootMatch> {
        let hash = spki_sha384(ark);
        if let Some(root) = AMD_ROOTS.iter().find(|r| r.spki_sha384 == hash) {
            return Some(RootMatch::Amd(root));
        }
        self.extra
            .iter()
            .find(|r| r.spki_sha384 == hash)
            .map(|r| RootMatch::Extra(r.name.clone()))
    }

    /// What a chain for `product` (if known) must end in, for messages.
    pub fn expected(&self, product: Option<&str>) -> String {
        let amd = match product.and_then(amd_root) {
            Some(root) => format!(
                "AMD's {} root key (SPKI SHA-384 {})",
                root.product, root.spki_sha384
            ),
            None => {
                let names: Vec<&str> = AMD_ROOTS.iter().map(|r| r.product).collect();
                format!("one of AMD's root keys ({})", names.join(", "))
            }
        };
        if self.extra.is_empty() {
            amd
        } else {
            let names: Vec<&str> = self.extra.iter().map(|r| r.name.as_str()).collect();
            format!("{amd} or a root given as trusted ({})", names.join(", "))
        }
    }
}

#[cfg(test)]
#[path = "roots_tests.rs"]
mod tests;
