//! The checks in `snp_kds::verify` on their own, with the real AMD chains
//! and the synthetic VLEK chain (product line `Testonly`, with CRLs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::fake_kds;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_kds::{chain_pem, fixture, fixture_der};
use snp_certs::CertKind;
use snp_certs_verify::chain::TrustedRoots;
use snp_kds::verify::{self, Checks, check_chain, check_crl, parse_chain};
use snp_kds::{Family, KdsError};

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_811_808_000)
}

/// AMD's roots, and the synthetic test root when `synthetic`.
fn roots(synthetic: bool) -> TrustedRoots {
    let amd = TrustedRoots::amd();
    if synthetic {
        amd.with_extra_root(&fixture("synthetic/ark.pem")).unwrap()
    } else {
        amd
    }
}

fn checks<'a>(product_line: &'a str, roots: &'a TrustedRoots) -> Checks<'a> {
    Checks {
        product_line,
        at: at(),
        roots,
    }
}

#[test]
fn cert_chain_answers_are_ca_key_then_ark() {
    let pem = chain_pem("amd/milan/ask.pem", "amd/milan/ark.pem");
    let chain = parse_chain("u", Family::Vcek, &pem).unwrap();
    assert_eq!(chain.ask, fixture_der("amd/milan/ask.pem"));
    assert_eq!(chain.ark, fixture_der("amd/milan/ark.pem"));
    let amd = roots(false);
    check_chain(&chain, checks("Milan", &amd)).unwrap();
    // Round trip through the cache format.
    assert_eq!(
        parse_chain("u", Family::Vcek, &verify::chain_pem(&chain).unwrap()).unwrap(),
        chain
    );
    // Swapped: the "ARK" is not self-signed.
    let swapped = chain_pem("amd/milan/ark.pem", "amd/milan/ask.pem");
    let chain = parse_chain("u", Family::Vcek, &swapped).unwrap();
    assert!(check_chain(&chain, checks("Milan", &amd)).is_err());
    // One certificate, or three, is not a chain.
    let e = parse_chain("u", Family::Vcek, &fixture("amd/milan/ark.pem")).unwrap_err();
    assert!(matches!(e, KdsError::ChainShape { count: 1, .. }), "{e:?}");
    let e = parse_chain("u", Family::Vcek, b"<html>busy</html>").unwrap_err();
    assert!(matches!(e, KdsError::ChainShape { count: 0, .. }), "{e:?}");
}

#[test]
fn crls_must_come_from_the_ark_and_not_revoke_the_ca_key() {
    let pem = chain_pem("synthetic/asvk.pem", "synthetic/ark.pem");
    let chain = parse_chain("u", Family::Vlek, &pem).unwrap();
    let test = roots(true);
    check_chain(&chain, checks("Testonly", &test)).unwrap();
    let e = check_chain(&chain, checks("Milan", &test)).unwrap_err();
    assert!(e.to_string().contains("for Testonly, not Milan"), "{e}");
    check_crl(
        &chain,
        &fixture("synthetic/crl.der"),
        checks("Testonly", &test),
    )
    .unwrap();
    let e = check_crl(
        &chain,
        &fixture("synthetic/crl-revokes-asvk.der"),
        checks("Testonly", &test),
    )
    .unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    // A CRL from another ARK.
    let milan = parse_chain(
        "u",
        Family::Vcek,
        &chain_pem("amd/milan/ask.pem", "amd/milan/ark.pem"),
    )
    .unwrap();
    assert!(
        check_crl(
            &milan,
            &fixture("synthetic/crl.der"),
            checks("Milan", &test)
        )
        .is_err()
    );
}

#[test]
fn the_final_table_is_checked_as_a_guest_would() {
    let pem = chain_pem("synthetic/asvk.pem", "synthetic/ark.pem");
    let chain = parse_chain("u", Family::Vlek, &pem).unwrap();
    let vlek = fixture_der("synthetic/vlek.der");
    let crl = fixture("synthetic/crl.der");
    let test = roots(true);
    let table = verify::final_table(
        Some((CertKind::Vlek, &vlek)),
        &chain,
        Some(&crl),
        checks("Testonly", &test),
    )
    .unwrap();
    let parsed = snp_certs::CertTable::parse(&table).unwrap();
    assert_eq!(parsed.entries().len(), 4);
    // Chain only (no signer) is a valid table too.
    verify::final_table(None, &chain, None, checks("Testonly", &test)).unwrap();
    // A VCEK under the ASVK does not verify.
    let vcek = fixture_der("amd/milan/vcek.der");
    assert!(
        verify::final_table(
            Some((CertKind::Vcek, &vcek)),
            &chain,
            None,
            checks("Testonly", &test)
        )
        .is_err()
    );
}

#[test]
fn a_chain_under_a_root_of_its_own_is_refused_by_default() {
    // Well formed, self-consistent, signatures right: but not AMD's root.
    let pem = chain_pem("synthetic/asvk.pem", "synthetic/ark.pem");
    let chain = parse_chain("u", Family::Vlek, &pem).unwrap();
    let amd = roots(false);
    let e = check_chain(&chain, checks("Testonly", &amd)).unwrap_err();
    assert!(matches!(e, KdsError::Verification { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("ARK is not a trusted root"), "{text}");
    assert!(text.contains("one of AMD's root keys"), "{text}");
    let vlek = fixture_der("synthetic/vlek.der");
    assert!(
        verify::final_table(
            Some((CertKind::Vlek, &vlek)),
            &chain,
            None,
            checks("Testonly", &amd)
        )
        .is_err()
    );
}
