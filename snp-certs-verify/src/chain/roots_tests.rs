//! The pinned roots against AMD's real ARKs and the synthetic test root.

use std::time::{Duration, UNIX_EPOCH};

use der::{Decode, Encode};
use x509_cert::Certificate;

use super::*;
use crate::chain::{ChainProblem, verify_table, verify_table_with};
use crate::test_fixtures::*;
use crate::x509::{DocumentKind, to_der};
use snp_certs::guid::CertKind;
use snp_certs::table::{CertTable, TableBuilder};

fn parsed(pem: &[u8]) -> ParsedCert {
    ParsedCert::parse(pem).unwrap()
}

fn table(entries: &[(CertKind, &[u8])]) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, data) in entries {
        b.add(*kind, data.to_vec()).unwrap();
    }
    b.build().unwrap()
}

fn codes(entries: &[(CertKind, &[u8])], roots: &TrustedRoots) -> Vec<&'static str> {
    let bytes = table(entries);
    let at = UNIX_EPOCH + Duration::from_secs(1_811_808_000);
    verify_table_with(&CertTable::parse(&bytes).unwrap(), at, roots)
        .problems
        .iter()
        .map(ChainProblem::code)
        .collect()
}

#[test]
fn the_fixture_arks_are_the_pinned_keys() {
    for (product, ark) in [
        ("Milan", MILAN_ARK),
        ("Genoa", GENOA_ARK),
        ("Turin", TURIN_ARK),
    ] {
        let root = amd_root(product).unwrap();
        assert_eq!(spki_sha384(&parsed(ark)), root.spki_sha384, "{product}");
        assert_eq!(
            TrustedRoots::amd().find(&parsed(ark)),
            Some(RootMatch::Amd(root))
        );
    }
    assert_eq!(amd_root("milan"), amd_root("MILAN"));
    assert!(amd_root("Testonly").is_none());
    // The ASK is not a root.
    assert_eq!(TrustedRoots::amd().find(&parsed(MILAN_ASK)), None);
}

#[test]
fn a_root_of_its_own_is_refused_unless_named() {
    let vlek_chain: &[(CertKind, &[u8])] = &[
        (CertKind::Vlek, SYN_VLEK),
        (CertKind::Ask, SYN_ASVK),
        (CertKind::Ark, SYN_ARK),
    ];
    assert_eq!(codes(vlek_chain, &TrustedRoots::amd()), ["untrusted-root"]);
    let bytes = table(vlek_chain);
    let at = UNIX_EPOCH + Duration::from_secs(1_811_808_000);
    let report = verify_table(&CertTable::parse(&bytes).unwrap(), at);
    let message = report.problems[0].message();
    assert!(
        message.contains(&spki_sha384(&parsed(SYN_ARK))),
        "{message}"
    );
    assert!(message.contains("one of AMD's root keys (Milan, Genoa, Turin)"));

    let named = TrustedRoots::amd().with_extra_root(SYN_ARK).unwrap();
    assert!(named.has_extra());
    assert!(codes(vlek_chain, &named).is_empty());
    let bytes = table(vlek_chain);
    let report = verify_table_with(&CertTable::parse(&bytes).unwrap(), at, &named);
    let root = report.checks.iter().find(|c| c.check == "root").unwrap();
    assert!(root.detail.contains("ARK-Testonly"), "{}", root.detail);
    assert!(root.detail.contains("not AMD's"), "{}", root.detail);
}

#[test]
fn amd_chains_pass_the_root_check_by_default() {
    let bytes = table(&[
        (CertKind::Vcek, MILAN_VCEK),
        (CertKind::Ask, MILAN_ASK),
        (CertKind::Ark, MILAN_ARK),
    ]);
    let at = UNIX_EPOCH + Duration::from_secs(1_811_808_000);
    let report = verify_table(&CertTable::parse(&bytes).unwrap(), at);
    assert!(report.is_verified(), "{:?}", report.problems);
    let root = report.checks.iter().find(|c| c.check == "root").unwrap();
    assert_eq!(root.detail, "AMD's Milan root key (built in)");
}

/// Genoa's ARK certificate carrying Milan's key: the names say Genoa, the
/// key is Milan's root.
fn genoa_ark_with_milan_key() -> Vec<u8> {
    let milan =
        Certificate::from_der(&to_der(MILAN_ARK, DocumentKind::Certificate).unwrap()).unwrap();
    let mut genoa =
        Certificate::from_der(&to_der(GENOA_ARK, DocumentKind::Certificate).unwrap()).unwrap();
    genoa.tbs_certificate.subject_public_key_info =
        milan.tbs_certificate.subject_public_key_info.clone();
    genoa.to_der().unwrap()
}

#[test]
fn an_amd_root_of_another_product_line_is_refused() {
    let ark = genoa_ark_with_milan_key();
    let found = codes(
        &[(CertKind::Ask, GENOA_ASK), (CertKind::Ark, &ark)],
        &TrustedRoots::amd(),
    );
    assert!(found.contains(&"root-product-mismatch"), "{found:?}");
    let bytes = table(&[(CertKind::Ark, &ark)]);
    let at = UNIX_EPOCH + Duration::from_secs(1_811_808_000);
    let report = verify_table(&CertTable::parse(&bytes).unwrap(), at);
    let messages: Vec<String> = report.problems.iter().map(ChainProblem::message).collect();
    assert!(
        messages
            .iter()
            .any(|m| m == "ARK is AMD's Milan root key, but the chain is for Genoa"),
        "{messages:?}"
    );
}

#[test]
fn expected_names_the_product_line_root() {
    let roots = TrustedRoots::amd();
    assert!(roots.expected(Some("genoa")).contains(GENOA_PIN_PREFIX));
    let named = roots.with_extra_root(SYN_ARK).unwrap();
    assert!(
        named
            .expected(None)
            .ends_with("or a root given as trusted (ARK-Testonly)")
    );
    assert!(
        TrustedRoots::amd()
            .with_extra_root(b"not a certificate")
            .is_err()
    );
}

const GENOA_PIN_PREFIX: &str = "AMD's Genoa root key (SPKI SHA-384 32ab53a6";
