//! Chain checks against AMD's real public certificates and a synthetic
//! VLEK chain (see `tests/fixtures/README.md`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use snp_certs::table::TableBuilder;

use crate::test_fixtures::*;

/// 2027-06-01T00:00:00Z: every fixture is valid then.
fn mid_2027() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_811_808_000)
}

fn table(entries: &[(CertKind, &[u8])]) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, data) in entries {
        b.add(*kind, data.to_vec()).unwrap();
    }
    b.build().unwrap()
}

/// Checks with AMD's roots and the synthetic chain's test root trusted
/// (the root checks themselves are in `roots_tests.rs`).
fn verify(entries: &[(CertKind, &[u8])], at: SystemTime) -> ChainReport {
    let bytes = table(entries);
    let roots = TrustedRoots::amd().with_extra_root(SYN_ARK).unwrap();
    verify_table_with(&CertTable::parse(&bytes).unwrap(), at, &roots)
}

fn codes(report: &ChainReport) -> Vec<(&'static str, Option<CertKind>)> {
    report
        .problems
        .iter()
        .map(|p| (p.code(), p.entry()))
        .collect()
}

fn signatures_checked(report: &ChainReport) -> Vec<CertKind> {
    report
        .checks
        .iter()
        .filter(|c| c.check == "signature")
        .map(|c| c.entry)
        .collect()
}

#[test]
fn milan_chain_verifies_with_real_signatures() {
    let r = verify(
        &[
            (CertKind::Vcek, MILAN_VCEK),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    assert!(r.is_verified(), "{:?}", r.problems);
    assert_eq!(r.signer, Some(CertKind::Vcek));
    assert_eq!(r.product.as_deref(), Some("Milan"));
    assert_eq!(
        signatures_checked(&r),
        [CertKind::Ark, CertKind::Ask, CertKind::Vcek]
    );
}

#[test]
fn turin_chain_verifies() {
    let r = verify(
        &[
            (CertKind::Vcek, TURIN_VCEK),
            (CertKind::Ask, TURIN_ASK),
            (CertKind::Ark, TURIN_ARK),
        ],
        mid_2027(),
    );
    assert!(r.is_verified(), "{:?}", r.problems);
    assert_eq!(r.product.as_deref(), Some("Turin"));
}

#[test]
fn genoa_ark_and_ask_verify_but_a_table_without_signer_fails() {
    let r = verify(
        &[(CertKind::Ask, GENOA_ASK), (CertKind::Ark, GENOA_ARK)],
        mid_2027(),
    );
    assert_eq!(r.status, ChainStatus::Failed);
    assert_eq!(codes(&r), [("no-signer", None)]);
    assert_eq!(signatures_checked(&r), [CertKind::Ark, CertKind::Ask]);
}

/// Flips one bit in the last byte of a DER certificate: inside the
/// signature value, which is the last field.
fn tamper_signature(der: &[u8]) -> Vec<u8> {
    let mut bytes = der.to_vec();
    if let Some(last) = bytes.last_mut() {
        *last ^= 0x01;
    }
    bytes
}

#[test]
fn a_flipped_signature_byte_is_rejected() {
    let vcek = tamper_signature(MILAN_VCEK);
    let r = verify(
        &[
            (CertKind::Vcek, &vcek),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    assert_eq!(codes(&r), [("bad-signature", Some(CertKind::Vcek))]);
    assert!(r.problems[0].message().contains("does not verify"));

    let ark = tamper_signature(
        &crate::x509::to_der(MILAN_ARK, crate::x509::DocumentKind::Certificate).unwrap(),
    );
    let r = verify(
        &[
            (CertKind::Vcek, MILAN_VCEK),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, &ark),
        ],
        mid_2027(),
    );
    assert_eq!(codes(&r), [("bad-signature", Some(CertKind::Ark))]);
}

#[test]
fn a_changed_signed_byte_is_rejected() {
    // Change one byte of the VCEK's TBS part (inside the hardware ID
    // extension, near the end of the TBS) without touching the signature.
    let mut vcek = MILAN_VCEK.to_vec();
    let at = vcek.len() - 600;
    vcek[at] ^= 0x80;
    let r = verify(
        &[
            (CertKind::Vcek, &vcek),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    assert_eq!(r.status, ChainStatus::Failed);
    assert!(
        codes(&r).contains(&("bad-signature", Some(CertKind::Vcek)))
            || codes(&r).contains(&("unparsable", Some(CertKind::Vcek))),
        "{:?}",
        codes(&r)
    );
}

#[test]
fn a_milan_ask_under_a_genoa_ark_is_rejected() {
    let r = verify(
        &[
            (CertKind::Vcek, MILAN_VCEK),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, GENOA_ARK),
        ],
        mid_2027(),
    );
    let codes = codes(&r);
    assert!(
        codes.contains(&("issuer-mismatch", Some(CertKind::Ask))),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("bad-signature", Some(CertKind::Ask))),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("product-mismatch", Some(CertKind::Ask))),
        "{codes:?}"
    );
    let text: Vec<String> = r.problems.iter().map(ChainProblem::message).collect();
    assert!(text.iter().any(|m| m.contains("CN=ARK-Milan")), "{text:?}");
}

#[test]
fn a_vcek_under_the_wrong_ask_is_rejected() {
    let r = verify(
        &[
            (CertKind::Vcek, TURIN_VCEK),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    let codes = codes(&r);
    assert!(
        codes.contains(&("issuer-mismatch", Some(CertKind::Vcek))),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("bad-signature", Some(CertKind::Vcek))),
        "{codes:?}"
    );
}

#[test]
fn expired_and_not_yet_valid_certificates_are_reported() {
    let chain: &[(CertKind, &[u8])] = &[
        (CertKind::Vcek, MILAN_VCEK),
        (CertKind::Ask, MILAN_ASK),
        (CertKind::Ark, MILAN_ARK),
    ];
    // The Milan VCEK is valid from 2023-04-03 to 2030-04-03.
    let r = verify(chain, UNIX_EPOCH + Duration::from_secs(1_924_992_000));
    assert_eq!(codes(&r), [("expired", Some(CertKind::Vcek))]);
    assert!(r.problems[0].message().contains("2030-04-03"));
    let r = verify(chain, UNIX_EPOCH + Duration::from_secs(1_640_995_200));
    assert_eq!(codes(&r), [("not-yet-valid", Some(CertKind::Vcek))]);
}

#[test]
fn pem_entries_are_checked_like_der() {
    let vcek = crate::x509::to_pem(MILAN_VCEK, crate::x509::DocumentKind::Certificate).unwrap();
    let r = verify(
        &[
            (CertKind::Vcek, vcek.as_bytes()),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    assert!(r.is_verified(), "{:?}", r.problems);
}

#[test]
fn a_vlek_chain_with_asvk_and_crl_verifies() {
    let r = verify(
        &[
            (CertKind::Vlek, SYN_VLEK),
            (CertKind::Ask, SYN_ASVK),
            (CertKind::Ark, SYN_ARK),
            (CertKind::Crl, SYN_CRL),
        ],
        mid_2027(),
    );
    assert!(r.is_verified(), "{:?}", r.problems);
    assert_eq!(r.signer, Some(CertKind::Vlek));
    assert_eq!(r.product.as_deref(), Some("Testonly"));
    assert_eq!(
        signatures_checked(&r),
        [CertKind::Ark, CertKind::Ask, CertKind::Vlek, CertKind::Crl]
    );
    assert!(r.checks.iter().any(|c| c.check == "revocation"));
}

#[test]
fn a_revoked_asvk_is_rejected() {
    let r = verify(
        &[
            (CertKind::Vlek, SYN_VLEK),
            (CertKind::Ask, SYN_ASVK),
            (CertKind::Ark, SYN_ARK),
            (CertKind::Crl, SYN_CRL_REVOKING),
        ],
        mid_2027(),
    );
    assert_eq!(codes(&r), [("revoked", Some(CertKind::Ask))]);
}

#[test]
fn a_crl_from_another_ark_is_rejected() {
    let r = verify(
        &[
            (CertKind::Vcek, MILAN_VCEK),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
            (CertKind::Crl, SYN_CRL),
        ],
        mid_2027(),
    );
    let codes = codes(&r);
    assert!(
        codes.contains(&("issuer-mismatch", Some(CertKind::Crl))),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("bad-signature", Some(CertKind::Crl))),
        "{codes:?}"
    );
}

#[test]
fn a_vlek_needs_the_asvk_not_the_ask() {
    let r = verify(
        &[
            (CertKind::Vlek, SYN_VLEK),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    let codes = codes(&r);
    assert!(
        codes.contains(&("issuer-mismatch", Some(CertKind::Vlek))),
        "{codes:?}"
    );
}

#[test]
fn missing_and_undecodable_entries_are_reported() {
    let r = verify(&[(CertKind::Vcek, MILAN_VCEK)], mid_2027());
    assert_eq!(
        codes(&r),
        [
            ("missing", Some(CertKind::Ark)),
            ("missing", Some(CertKind::Ask))
        ]
    );
    let r = verify(
        &[
            (CertKind::Vcek, b"\x30\x03junk"),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    assert_eq!(codes(&r), [("unparsable", Some(CertKind::Vcek))]);
}

#[test]
fn wrong_key_types_are_reported() {
    // An ASK in the VCEK slot: RSA where EC P-384 belongs (and issued by
    // the ARK, not the ASK).
    let r = verify(
        &[
            (CertKind::Vcek, MILAN_ASK),
            (CertKind::Ask, MILAN_ASK),
            (CertKind::Ark, MILAN_ARK),
        ],
        mid_2027(),
    );
    assert!(codes(&r).contains(&("wrong-key", Some(CertKind::Vcek))));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["problems"][0]["code"], "wrong-key");
    assert_eq!(json["problems"][0]["entry"], "vcek");
    assert!(
        json["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("RSA 4096")
    );
}
