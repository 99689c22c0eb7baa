//! PEM/DER handling and descriptions of AMD's real certificates.

use super::*;

use crate::test_fixtures::*;

fn cert(data: &[u8]) -> CertInfo {
    match describe(data).unwrap() {
        EntryInfo::Certificate(info) => info,
        other => panic!("not a certificate: {other:?}"),
    }
}

#[test]
fn pem_and_der_normalise_to_the_same_der() {
    let der = to_der(MILAN_ARK, DocumentKind::Certificate).unwrap();
    assert_eq!(der[0], 0x30);
    assert_eq!(to_der(&der, DocumentKind::Certificate).unwrap(), der);
    let pem = to_pem(&der, DocumentKind::Certificate).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert_eq!(
        to_der(pem.as_bytes(), DocumentKind::Certificate).unwrap(),
        der
    );
    // Text around the block, as `openssl x509 -text` leaves it, is ignored.
    let wrapped = format!("Certificate:\n  blah\n{pem}trailing words\n");
    assert_eq!(
        to_der(wrapped.as_bytes(), DocumentKind::Certificate).unwrap(),
        der
    );
}

#[test]
fn bad_inputs_are_refused_with_reasons() {
    let two = [MILAN_ASK, MILAN_ARK].concat();
    assert!(matches!(
        to_der(&two, DocumentKind::Certificate),
        Err(X509Error::SeveralPemBlocks { count: 2, .. })
    ));
    assert!(matches!(
        to_der(MILAN_ARK, DocumentKind::Crl),
        Err(X509Error::PemLabel { .. })
    ));
    assert!(matches!(
        to_der(b" \n", DocumentKind::Crl),
        Err(X509Error::Empty)
    ));
    assert!(matches!(
        to_der(b"\x30\x03abc", DocumentKind::Certificate),
        Err(X509Error::Der { .. })
    ));
    assert!(matches!(
        to_der(SYN_CRL, DocumentKind::Certificate),
        Err(X509Error::Der { .. })
    ));
    let crl_pem = to_pem(SYN_CRL, DocumentKind::Crl).unwrap();
    assert!(crl_pem.starts_with("-----BEGIN X509 CRL-----"));
    assert_eq!(
        to_der(crl_pem.as_bytes(), DocumentKind::Crl).unwrap(),
        SYN_CRL
    );
}

#[test]
fn describes_amd_ark_and_ask() {
    let ark = cert(MILAN_ARK);
    assert!(ark.subject.starts_with("CN=ARK-Milan,"), "{}", ark.subject);
    assert_eq!(ark.subject, ark.issuer);
    assert_eq!(ark.serial, "010000");
    assert_eq!(ark.key, KeyType::Rsa { bits: 4096 });
    assert_eq!(ark.signature_algorithm, "RSASSA-PSS");
    assert_eq!(ark.product.as_deref(), Some("Milan"));
    assert_eq!(ark.not_before, "2020-10-22T17:23:05Z");
    assert_eq!(ark.not_after, "2045-10-22T17:23:05Z");
    assert_eq!(ark.tcb, None);
    let ask = cert(MILAN_ASK);
    assert!(ask.subject.starts_with("CN=SEV-Milan,"));
    assert!(ask.issuer.starts_with("CN=ARK-Milan,"));
}

#[test]
fn describes_vceks_with_their_amd_extensions() {
    let vcek = cert(MILAN_VCEK);
    assert!(vcek.subject.starts_with("CN=SEV-VCEK,"));
    assert_eq!(
        vcek.key,
        KeyType::Ec {
            curve: "P-384".to_owned()
        }
    );
    assert_eq!(vcek.product_name.as_deref(), Some("Milan-B0"));
    assert_eq!(vcek.product.as_deref(), Some("Milan"));
    let tcb = vcek.tcb.unwrap();
    assert_eq!(
        (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc),
        (Some(3), Some(0), Some(8), Some(115), None)
    );
    assert_eq!(tcb.to_string(), "bl=3 tee=0 snp=8 ucode=115");
    assert_eq!(vcek.hwid.map(|h| h.len()), Some(128));

    let turin = cert(TURIN_VCEK);
    assert_eq!(turin.product.as_deref(), Some("Turin"));
    assert_eq!(turin.tcb.unwrap().fmc, Some(0));

    let vlek = cert(SYN_VLEK);
    assert_eq!(vlek.csp_id.as_deref(), Some("snp-certs tests"));
    assert_eq!(vlek.hwid, None);
}

#[test]
fn describes_crls() {
    let EntryInfo::Crl(crl) = describe(SYN_CRL).unwrap() else {
        panic!("not a CRL");
    };
    assert!(crl.issuer.starts_with("CN=ARK-Testonly,"));
    assert_eq!(crl.revoked, ["0a0099"]);
    assert_eq!(crl.product.as_deref(), Some("Testonly"));
    assert!(crl.next_update.is_some());
}

#[test]
fn product_lines_from_names() {
    for (name, line) in [
        ("ARK-Milan", Some("Milan")),
        ("SEV-Genoa", Some("Genoa")),
        ("SEV-VLEK-Turin", Some("Turin")),
        ("Milan-B0", Some("Milan")),
        ("Turin", Some("Turin")),
        ("SEV-VCEK", None),
        ("SEV-VLEK", None),
        ("Some CA", None),
        ("", None),
    ] {
        assert_eq!(product_line(name).as_deref(), line, "{name}");
    }
}

#[test]
fn the_signed_part_is_taken_verbatim() {
    let parsed = ParsedCert::parse(MILAN_VCEK).unwrap();
    let tbs = parsed.tbs().unwrap();
    assert_eq!(
        tbs,
        der::Encode::to_der(&parsed.cert.tbs_certificate).unwrap()
    );
    // Right after the outer SEQUENCE header (30 82 LL LL).
    assert_eq!(tbs, &MILAN_VCEK[4..4 + tbs.len()]);
}
