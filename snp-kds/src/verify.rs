//! Checking what KDS sent before it is stored or written anywhere.
//!
//! * A `cert_chain` answer is two PEM certificates, the CA key (ASK or
//!   ASVK) first, then the ARK. Both are checked with
//!   [`snp_certs_verify::chain::verify_table`] on a table holding just them (the
//!   "no report signer" finding aside): RSA 4096 keys, the ARK
//!   self-signed, the ARK's signature over the CA key, validity, and the
//!   product line, which must be the one asked for.
//! * A CRL must be issued and signed by that ARK, and must not revoke the
//!   CA key.
//! * A VCEK must be signed by the ASK, and its hardware ID and TCB
//!   extensions must name exactly the chip and levels asked for: KDS (or
//!   anything posing as it) answering with another chip's or another TCB's
//!   VCEK is refused.
//! * The ARK must be one of AMD's root keys, built into
//!   [`snp_certs_verify::chain::roots`], and the one of the product line asked
//!   for; a mirror or anything posing as KDS cannot hand out a chain of
//!   its own making. Other roots only when the caller trusts them
//!   explicitly ([`TrustedRoots::with_extra_root`], for test stand-ins).
//! * Finally the whole table is checked once more, as guests will see it.

use std::time::SystemTime;

use snp_certs::CertKind;
use snp_certs::table::{CertTable, TableBuilder};
use snp_certs_verify::chain::{ChainProblem, ChainReport, TrustedRoots, verify_table_with};
use snp_certs_verify::x509::{CertInfo, DocumentKind, EntryInfo, describe, to_der};

use crate::error::KdsError;
use crate::identity::PlatformId;
use crate::url::Family;

/// An ARK and the CA key (ASK or ASVK) it signed, DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The chain's family.
    pub family: Family,
    /// The AMD root key.
    pub ark: Vec<u8>,
    /// The ASK (VCEK family) or ASVK (VLEK family).
    pub ask: Vec<u8>,
}

/// Splits a PEM bundle into its certificates (DER), in order.
pub fn split_pem(url: &str, data: &[u8]) -> Result<Vec<Vec<u8>>, KdsError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let starts: Vec<usize> = data
        .windows(BEGIN.len())
        .enumerate()
        .filter(|(_, w)| *w == BEGIN)
        .map(|(i, _)| i)
        .collect();
    let ends = starts.iter().skip(1).copied().chain([data.len()]);
    starts
        .iter()
        .zip(ends)
        .map(|(&start, end)| {
            to_der(&data[start..end], DocumentKind::Certificate).map_err(|source| {
                KdsError::Invalid {
                    url: url.to_owned(),
                    what: "PEM certificate",
                    source,
                }
            })
        })
        .collect()
}

/// Parses a `cert_chain` answer (CA key, then ARK).
pub fn parse_chain(url: &str, family: Family, data: &[u8]) -> Result<Chain, KdsError> {
    let mut certs = split_pem(url, data)?;
    if certs.len() != 2 {
        return Err(KdsError::ChainShape {
            url: url.to_owned(),
            count: certs.len(),
        });
    }
    let ark = certs.pop().unwrap_or_default();
    let ask = certs.pop().unwrap_or_default();
    Ok(Chain { family, ark, ask })
}

/// The chain as KDS serves it, PEM (CA key, then ARK), for the cache.
pub fn chain_pem(chain: &Chain) -> Result<Vec<u8>, KdsError> {
    let mut out = String::new();
    for der in [&chain.ask, &chain.ark] {
        let pem =
            snp_certs_verify::x509::to_pem(der, DocumentKind::Certificate).map_err(|source| {
                KdsError::Invalid {
                    url: "cache".to_owned(),
                    what: "certificate",
                    source,
                }
            })?;
        out.push_str(&pem);
    }
    Ok(out.into_bytes())
}

fn table(entries: &[(CertKind, &[u8])]) -> Result<Vec<u8>, KdsError> {
    let mut b = TableBuilder::new();
    for (kind, data) in entries {
        b.add(*kind, data.to_vec()).map_err(KdsError::Table)?;
    }
    b.build().map_err(KdsError::Table)
}

/// How to check: when, and under which roots.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    /// The product line asked for (`Milan`, …).
    pub product_line: &'a str,
    /// When certificates must be valid.
    pub at: SystemTime,
    /// The roots a chain may end in.
    pub roots: &'a TrustedRoots,
}

/// Runs the chain check on `entries`; `signer_expected` says whether a
/// missing VCEK/VLEK counts.
fn check(
    what: String,
    entries: &[(CertKind, &[u8])],
    checks: Checks<'_>,
    signer_expected: bool,
) -> Result<ChainReport, KdsError> {
    let Checks {
        product_line,
        at,
        roots,
    } = checks;
    let bytes = table(entries)?;
    let parsed = CertTable::parse(&bytes).map_err(KdsError::Table)?;
    let report = verify_table_with(&parsed, at, roots);
    let mut problems: Vec<String> = report
        .problems
        .iter()
        .filter(|p| signer_expected || !matches!(p, ChainProblem::NoSigner))
        .map(ChainProblem::message)
        .collect();
    match &report.product {
        Some(p) if p.eq_ignore_ascii_case(product_line) => {}
        Some(p) => problems.push(format!("it is for {p}, not {product_line}")),
        None => problems.push(format!(
            "it names no product line ({product_line} expected)"
        )),
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(KdsError::Verification {
            what,
            problems: problems.join("; "),
        })
    }
}

/// Checks an ARK and CA key for the product line of `checks`.
pub fn check_chain(chain: &Chain, checks: Checks<'_>) -> Result<(), KdsError> {
    check(
        format!(
            "{} ARK/{} chain",
            checks.product_line,
            chain.family.ca_name()
        ),
        &[(CertKind::Ask, &chain.ask), (CertKind::Ark, &chain.ark)],
        checks,
        false,
    )
    .map(drop)
}

/// Checks a CRL (DER) against the chain.
pub fn check_crl(chain: &Chain, crl: &[u8], checks: Checks<'_>) -> Result<(), KdsError> {
    check(
        format!("{} CRL", checks.product_line),
        &[
            (CertKind::Ask, &chain.ask),
            (CertKind::Ark, &chain.ark),
            (CertKind::Crl, crl),
        ],
        checks,
        false,
    )
    .map(drop)
}

fn cert_info(url: &str, der: &[u8]) -> Result<CertInfo, KdsError> {
    match describe(der) {
        Ok(EntryInfo::Certificate(info)) => Ok(info),
        Ok(EntryInfo::Crl(_)) => Err(KdsError::Verification {
            what: format!("certificate from {url}"),
            problems: "it is a CRL".to_owned(),
        }),
        Err(source) => Err(KdsError::Invalid {
            url: url.to_owned(),
            what: "certificate",
            source,
        }),
    }
}

/// Checks that a VCEK (DER) is for exactly `id` and is signed by the
/// chain's ASK.
pub fn check_vcek(
    url: &str,
    vcek: &[u8],
    id: &PlatformId,
    chain: &Chain,
    checks: Checks<'_>,
) -> Result<(), KdsError> {
    let info = cert_info(url, vcek)?;
    let hwid = info.hwid.clone().unwrap_or_else(|| "(none)".to_owned());
    if !hwid.eq_ignore_ascii_case(&id.hwid.to_hex()) {
        return Err(KdsError::VcekMismatch {
            url: url.to_owned(),
            field: "hardware ID",
            asked: id.hwid.to_hex(),
            found: hwid,
        });
    }
    let tcb_matches = info.tcb.as_ref().is_some_and(|t| id.tcb.matches(t));
    if !tcb_matches {
        return Err(KdsError::VcekMismatch {
            url: url.to_owned(),
            field: "TCB",
            asked: id.tcb.to_string(),
            found: info
                .tcb
                .map_or_else(|| "(none)".to_owned(), |t| t.to_string().replace(' ', ",")),
        });
    }
    check(
        format!("VCEK from {url}"),
        &[
            (CertKind::Vcek, vcek),
            (CertKind::Ask, &chain.ask),
            (CertKind::Ark, &chain.ark),
        ],
        Checks {
            product_line: id.product.kds_name(),
            ..checks
        },
        true,
    )
    .map(drop)
}

/// Builds the final table (report signer, CA key, ARK, CRL) and checks it
/// as a guest would.
pub fn final_table(
    signer: Option<(CertKind, &[u8])>,
    chain: &Chain,
    crl: Option<&[u8]>,
    checks: Checks<'_>,
) -> Result<Vec<u8>, KdsError> {
    let mut entries: Vec<(CertKind, &[u8])> = Vec::new();
    entries.extend(signer);
    entries.push((CertKind::Ask, &chain.ask));
    entries.push((CertKind::Ark, &chain.ark));
    if let Some(crl) = crl {
        entries.push((CertKind::Crl, crl));
    }
    check(
        format!("{} certificate table", checks.product_line),
        &entries,
        checks,
        signer.is_some(),
    )?;
    table(&entries)
}
