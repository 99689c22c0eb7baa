//! Checking the AMD endorsement chain a certificate table carries.
//!
//! A guest that receives the table verifies its attestation report with
//! the VCEK (or VLEK) and that key's certificate with the ASK (or ASVK) and
//! the ARK. [`verify_table`] does the same checks on the host, so that a
//! table that would fail in the guest is caught when it is built or
//! installed:
//!
//! 1. **Presence**: an ARK, an ASK/ASVK, and a VCEK or a VLEK.
//! 2. **Keys**: ARK and ASK/ASVK are RSA 4096; VCEK/VLEK are EC P-384.
//! 3. **Names**: the ARK is self-issued (issuer = subject); the ASK's
//!    issuer is the ARK's subject; the VCEK's/VLEK's issuer is the ASK's
//!    subject (so a VLEK needs the ASVK in the ASK slot, a VCEK the ASK).
//! 4. **Signatures**, really computed: the ARK's self-signature, the ARK's
//!    over the ASK, the ASK's over the VCEK/VLEK, all RSASSA-PSS SHA-384
//!    (see [`crate::x509::signature`]).
//! 5. **Validity** of each certificate at the given time.
//! 6. **Product line**: the ARK, ASK and VCEK/VLEK name the same one.
//! 7. **CRL** (if present): issued and signed by the ARK; the ASK/ASVK's
//!    serial is not on it. A CRL past its next update is only a note.
//! 8. **Root**: the ARK's key is one of AMD's root keys, built in (see
//!    [`roots`]), and the one of the chain's product line; or a root the
//!    caller named explicitly ([`verify_table_with`]). A chain under any
//!    other root is refused however well it hangs together.
//!
//! Every problem is collected (the check does not stop at the first), so
//! one run tells the operator everything that is wrong. Entries of other
//! kinds are not part of the chain and are ignored.

mod problem;
pub mod roots;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::x509::info::{CertInfo, KeyType, cert_info, key_type, time};
use crate::x509::{ParsedCert, ParsedCrl, common_name, hex, product_line, signature};
use snp_certs::guid::CertKind;
use snp_certs::table::CertTable;

pub use problem::ChainProblem;
pub use roots::{RootMatch, TrustedRoots};

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainStatus {
    /// Every check passed.
    Verified,
    /// At least one problem (see [`ChainReport::problems`]).
    Failed,
}

/// One check that passed, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The entry checked.
    pub entry: CertKind,
    /// What was checked: `key`, `issuer`, `signature`, `validity`,
    /// `revocation`.
    pub check: &'static str,
    /// How it passed.
    pub detail: String,
}

/// The result of [`verify_table`].
#[derive(Debug, Serialize)]
pub struct ChainReport {
    /// Verified or failed.
    pub status: ChainStatus,
    /// The report signer the chain ends in: VCEK or VLEK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<CertKind>,
    /// The product line the chain is for, if its certificates say it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The time validity was checked at, RFC 3339.
    pub checked_at: String,
    /// The checks that passed.
    pub checks: Vec<Check>,
    /// What is wrong; empty when verified.
    pub problems: Vec<ChainProblem>,
    /// Worth knowing but not a failure (e.g. a CRL past its next update).
    pub notes: Vec<String>,
}

impl ChainReport {
    /// Whether every check passed.
    pub fn is_verified(&self) -> bool {
        self.status == ChainStatus::Verified
    }
}

/// Collects checks and problems.
struct Checker {
    at: SystemTime,
    checks: Vec<Check>,
    problems: Vec<ChainProblem>,
    notes: Vec<String>,
}

impl Checker {
    fn pass(&mut self, entry: CertKind, check: &'static str, detail: impl Into<String>) {
        self.checks.push(Check {
            entry,
            check,
            detail: detail.into(),
        });
    }

    fn parse(&mut self, table: &CertTable<'_>, kind: CertKind) -> Option<ParsedCert> {
        let entry = table.get(kind)?;
        match ParsedCert::parse(entry.data) {
            Ok(parsed) => Some(parsed),
            Err(source) => {
                self.problems
                    .push(ChainProblem::Unparsable { kind, source });
                None
            }
        }
    }

    fn key(&mut self, kind: CertKind, cert: &ParsedCert, want: &KeyType) {
        let found = key_type(&cert.cert);
        if &found == want {
            self.pass(kind, "key", found.to_string());
        } else {
            self.problems.push(ChainProblem::WrongKey {
                kind,
                expected: want.to_string(),
                found: found.to_string(),
            });
        }
    }

    fn validity(&mut self, kind: CertKind, cert: &ParsedCert) {
        let validity = &cert.cert.tbs_certificate.validity;
        if self.at < validity.not_before.to_system_time() {
            self.problems.push(ChainProblem::NotYetValid {
                kind,
                not_before: time(&validity.not_before),
            });
        } else if self.at > validity.not_after.to_system_time() {
            self.problems.push(ChainProblem::Expired {
                kind,
                not_after: time(&validity.not_after),
            });
        } else {
            self.pass(
                kind,
                "validity",
                format!(
                    "{} to {}",
                    time(&validity.not_before),
                    time(&validity.not_after)
                ),
            );
        }
    }

    /// Checks that `issuer` issued and signed `cert`.
    fn link(&mut self, kind: CertKind, cert: &ParsedCert, by: CertKind, issuer: &ParsedCert) {
        if cert.issuer() == issuer.subject() {
            self.pass(kind, "issuer", format!("issued by {}", issuer.subject()));
        } else {
            self.problems.push(ChainProblem::IssuerMismatch {
                kind,
                issuer: cert.issuer().to_string(),
                by,
                expected: issuer.subject().to_string(),
            });
        }
        let result = cert
            .tbs()
            .map_err(signature::SignatureError::Encoding)
            .and_then(|tbs| {
                signature::verify(
                    tbs,
                    &cert.cert.signature_algorithm,
                    &cert.cert.signature,
                    &issuer.cert.tbs_certificate.subject_public_key_info,
                )
            });
        match result {
            Ok(()) => self.pass(kind, "signature", format!("signed by the {by} key")),
            Err(source) => self
                .problems
                .push(ChainProblem::BadSignature { kind, by, source }),
        }
    }

    /// Checks that the ARK's key is a trusted root, and for AMD's roots
    /// that it is the root of `product`.
    fn root(&mut self, ark: &ParsedCert, roots: &TrustedRoots, product: Option<&str>) {
        match roots.find(ark) {
            Some(RootMatch::Amd(root))
                if product.is_some_and(|p| !p.eq_ignore_ascii_case(root.product)) =>
            {
                self.problems.push(ChainProblem::RootProductMismatch {
                    root: root.product.to_owned(),
                    product: product.unwrap_or_default().to_owned(),
                });
            }
            Some(found) => self.pass(CertKind::Ark, "root", found.to_string()),
            None => self.problems.push(ChainProblem::UntrustedRoot {
                found: roots::spki_sha384(ark),
                expected: roots.expected(product),
            }),
        }
    }

    fn crl(&mut self, data: &[u8], ark: Option<&ParsedCert>, ask: Option<&ParsedCert>) {
        let kind = CertKind::Crl;
        let parsed = match ParsedCrl::parse(data) {
            Ok(parsed) => parsed,
            Err(source) => {
                self.problems
                    .push(ChainProblem::Unparsable { kind, source });
                return;
            }
        };
        let tbs = &parsed.crl.tbs_cert_list;
        if let Some(ark) = ark {
            if &tbs.issuer == ark.subject() {
                self.pass(kind, "issuer", format!("issued by {}", ark.subject()));
            } else {
                self.problems.push(ChainProblem::IssuerMismatch {
                    kind,
                    issuer: tbs.issuer.to_string(),
                    by: CertKind::Ark,
                    expected: ark.subject().to_string(),
                });
            }
            let result = parsed
                .tbs()
                .map_err(signature::SignatureError::Encoding)
                .and_then(|signed| {
                    signature::verify(
                        signed,
                        &parsed.crl.signature_algorithm,
                        &parsed.crl.signature,
                        &ark.cert.tbs_certificate.subject_public_key_info,
                    )
                });
            match result {
                Ok(()) => self.pass(kind, "signature", "signed by the ARK key"),
                Err(source) => self.problems.push(ChainProblem::BadSignature {
                    kind,
                    by: CertKind::Ark,
                    source,
                }),
            }
        }
        if let Some(next) = &tbs.next_update {
            if self.at > next.to_system_time() {
                self.notes.push(format!(
                    "The CRL's next update ({}) has passed: fetch a fresh one",
                    time(next)
                ));
            }
        }
        if let Some(ask) = ask {
            let serial = &ask.cert.tbs_certificate.serial_number;
            let revoked = tbs
                .revoked_certificates
                .iter()
                .flatten()
                .any(|r| &r.serial_number == serial);
            if revoked {
                self.problems.push(ChainProblem::Revoked {
                    kind: CertKind::Ask,
                    serial: hex(serial.as_bytes()),
                });
            } else {
                self.pass(kind, "revocation", "the ASK/ASVK is not revoked");
            }
        }
    }
}

fn product_of(info: &CertInfo) -> Option<String> {
    info.product.clone()
}

/// Checks the chain in `table` as of `at`, trusting AMD's root keys only.
/// See the module docs.
pub fn verify_table(table: &CertTable<'_>, at: SystemTime) -> ChainReport {
    verify_table_with(table, at, &TrustedRoots::amd())
}

/// Checks the chain in `table` as of `at`, trusting `roots`.
pub fn verify_table_with(
    table: &CertTable<'_>,
    at: SystemTime,
    roots: &TrustedRoots,
) -> ChainReport {
    let mut c = Checker {
        at,
        checks: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    let rsa4096 = KeyType::Rsa { bits: 4096 };
    let p384 = KeyType::Ec {
        curve: "P-384".to_owned(),
    };

    let signer = if table.get(CertKind::Vcek).is_some() {
        Some(CertKind::Vcek)
    } else if table.get(CertKind::Vlek).is_some() {
        Some(CertKind::Vlek)
    } else {
        None
    };
    for kind in [CertKind::Ark, CertKind::Ask] {
        if table.get(kind).is_none() {
            c.problems.push(ChainProblem::Missing { kind });
        }
    }
    if signer.is_none() {
        c.problems.push(ChainProblem::NoSigner);
    }

    let ark = c.parse(table, CertKind::Ark);
    let ask = c.parse(table, CertKind::Ask);
    if let Some(ark) = &ark {
        c.key(CertKind::Ark, ark, &rsa4096);
        if ark.issuer() == ark.subject() {
            c.link(CertKind::Ark, ark, CertKind::Ark, ark);
        } else {
            c.problems.push(ChainProblem::NotSelfSigned {
                subject: ark.subject().to_string(),
                issuer: ark.issuer().to_string(),
            });
        }
        c.validity(CertKind::Ark, ark);
    }
    if let Some(ask) = &ask {
        c.key(CertKind::Ask, ask, &rsa4096);
        if let Some(ark) = &ark {
            c.link(CertKind::Ask, ask, CertKind::Ark, ark);
        }
        c.validity(CertKind::Ask, ask);
    }
    // Both report signers are checked when a table has both.
    let mut leaves = Vec::new();
    for kind in [CertKind::Vcek, CertKind::Vlek] {
        if let Some(leaf) = c.parse(table, kind) {
            c.key(kind, &leaf, &p384);
            if let Some(ask) = &ask {
                c.link(kind, &leaf, CertKind::Ask, ask);
            }
            c.validity(kind, &leaf);
            leaves.push((kind, leaf));
        }
    }
    if let Some(crl) = table.get(CertKind::Crl) {
        c.crl(crl.data, ark.as_ref(), ask.as_ref());
    }

    // Product line: every certificate that names one must name the same.
    let mut named: Vec<(CertKind, String)> = Vec::new();
    let members = [(CertKind::Ark, ark.as_ref()), (CertKind::Ask, ask.as_ref())]
        .into_iter()
        .chain(leaves.iter().map(|(k, l)| (*k, Some(l))));
    for (kind, cert) in members {
        if let Some(product) = cert
            .map(|p| cert_info(&p.cert))
            .as_ref()
            .and_then(product_of)
        {
            named.push((kind, product));
        }
    }
    let product = named.first().map(|(_, p)| p.clone());
    if let Some((first_kind, first)) = named.first() {
        for (kind, other) in &named[1..] {
            if !other.eq_ignore_ascii_case(first) {
                c.problems.push(ChainProblem::ProductMismatch {
                    kind: *kind,
                    product: other.clone(),
                    by: *first_kind,
                    expected: first.clone(),
                });
            }
        }
    }
    if let Some(ark) = &ark {
        c.root(ark, roots, product.as_deref());
    }
    if product.is_none() {
        if let Some(cn) = ark.as_ref().and_then(|a| common_name(a.subject())) {
            if product_line(&cn).is_none() {
                c.notes
                    .push(format!("The ARK's name {cn:?} names no AMD product line"));
            }
        }
    }

    let checked_at = der::DateTime::from_system_time(at)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| {
            let secs = at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("@{secs}")
        });
    ChainReport {
        status: if c.problems.is_empty() {
            ChainStatus::Verified
        } else {
            ChainStatus::Failed
        },
        signer,
        product,
        checked_at,
        checks: c.checks,
        problems: c.problems,
        notes: c.notes,
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
