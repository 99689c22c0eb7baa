//! What a certificate or CRL says about itself, for people and for JSON.

use std::fmt;

use der::Decode;
use der::asn1::{Ia5StringRef, ObjectIdentifier};
use der::oid::db::rfc5912;
use serde::Serialize;
use x509_cert::Certificate;
use x509_cert::time::Time;

use super::{ParsedCert, ParsedCrl, X509Error, common_name, hex};

/// AMD's arc for the VCEK/VLEK extensions.
const AMD_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const AMD_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const AMD_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const AMD_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const AMD_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const AMD_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const AMD_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
const AMD_CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");

/// The type and size of a certificate's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum KeyType {
    /// An RSA key (algorithm `rsaEncryption` or `id-RSASSA-PSS`).
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// An elliptic-curve key.
    Ec {
        /// The curve (`P-384`) or its OID when it is another one.
        curve: String,
    },
    /// Anything else, or an RSA key that does not decode.
    Other {
        /// The algorithm OID.
        algorithm: String,
    },
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyType::Ec { curve } => write!(f, "EC {curve}"),
            KeyType::Other { algorithm } => write!(f, "key algorithm {algorithm}"),
        }
    }
}

/// The security patch levels (TCB) a VCEK or VLEK was issued for, from
/// AMD's `1.3.6.1.4.1.3704.1.3.*` extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tcb {
    /// Boot loader SPL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<u32>,
    /// PSP OS (TEE) SPL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee: Option<u32>,
    /// SNP firmware SPL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp: Option<u32>,
    /// Microcode SPL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microcode: Option<u32>,
    /// FMC SPL (Turin and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u32>,
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("bl", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("ucode", self.microcode),
            ("fmc", self.fmc),
        ];
        let mut first = true;
        for (name, value) in parts {
            if let Some(value) = value {
                write!(f, "{}{name}={value}", if first { "" } else { " " })?;
                first = false;
            }
        }
        Ok(())
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject, RFC 4514 (most specific attribute first: `CN=…,O=…`).
    pub subject: String,
    /// Issuer, RFC 4514.
    pub issuer: String,
    /// Start of validity, RFC 3339 (UTC).
    pub not_before: String,
    /// End of validity, RFC 3339 (UTC).
    pub not_after: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The subject's public key.
    pub key: KeyType,
    /// Signature algorithm, by name where known (else the OID).
    pub signature_algorithm: String,
    /// The AMD product line (`Milan`, `Genoa`, `Turin`, …), from the
    /// product name extension or the subject or issuer common name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The VCEK/VLEK product name extension verbatim (e.g. `Milan-B0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// The TCB a VCEK or VLEK was issued for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcb: Option<Tcb>,
    /// A VCEK's hardware (chip) ID, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hwid: Option<String>,
    /// A VLEK's cloud service provider ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csp_id: Option<String>,
}

/// What a CRL says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrlInfo {
    /// Issuer, RFC 4514.
    pub issuer: String,
    /// When the CRL was issued, RFC 3339.
    pub this_update: String,
    /// When the next CRL is due, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_update: Option<String>,
    /// Serial numbers of revoked certificates, lower-case hex.
    pub revoked: Vec<String>,
    /// Signature algorithm, by name where known.
    pub signature_algorithm: String,
    /// The AMD product line, from the issuer common name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
}

/// A table entry described as a certificate or a CRL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryInfo {
    /// An X.509 certificate.
    Certificate(CertInfo),
    /// A certificate revocation list.
    Crl(CrlInfo),
}

/// Describes certificate or CRL bytes (PEM or DER): tries a certificate
/// first, then a CRL, and returns the certificate error if neither fits.
pub fn describe(data: &[u8]) -> Result<EntryInfo, X509Error> {
    match ParsedCert::parse(data) {
        Ok(parsed) => Ok(EntryInfo::Certificate(cert_info(&parsed.cert))),
        Err(cert_error) => match ParsedCrl::parse(data) {
            Ok(parsed) => Ok(EntryInfo::Crl(crl_info(&parsed))),
            Err(_) => Err(cert_error),
        },
    }
}

/// The product line a common name or product name names: `ARK-Milan`,
/// `SEV-Milan`, `SEV-VLEK-Milan` and `Milan-B0` all give `Milan`; the
/// leaf names `SEV-VCEK` and `SEV-VLEK` give nothing.
pub fn product_line(name: &str) -> Option<String> {
    let rest = if let Some(rest) = name.strip_prefix("ARK-") {
        rest
    } else if let Some(rest) = name.strip_prefix("SEV-VLEK-") {
        rest
    } else if name == "SEV-VCEK" || name == "SEV-VLEK" {
        return None;
    } else if let Some(rest) = name.strip_prefix("SEV-") {
        rest
    } else if name.contains(' ') || name.contains('=') {
        return None;
    } else {
        name
    };
    let line = rest.split('-').next().unwrap_or(rest).trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// Formats an X.509 time as RFC 3339.
pub(crate) fn time(t: &Time) -> String {
    t.to_date_time().to_string()
}

/// A name for a signature or key algorithm OID.
pub(crate) fn algorithm_name(oid: &ObjectIdentifier) -> String {
    match *oid {
        rfc5912::ID_RSASSA_PSS => "RSASSA-PSS".to_owned(),
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION => "sha384WithRSAEncryption".to_owned(),
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION => "sha256WithRSAEncryption".to_owned(),
        rfc5912::ECDSA_WITH_SHA_384 => "ecdsa-with-SHA384".to_owned(),
        rfc5912::ECDSA_WITH_SHA_256 => "ecdsa-with-SHA256".to_owned(),
        other => other.to_string(),
    }
}

/// The key type of a certificate's subject public key.
pub(crate) fn key_type(cert: &Certificate) -> KeyType {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let oid = spki.algorithm.oid;
    if oid == rfc5912::RSA_ENCRYPTION || oid == rfc5912::ID_RSASSA_PSS {
        let bits = spki.subject_public_key.as_bytes().and_then(|key| {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            rsa::RsaPublicKey::from_pkcs1_der(key)
                .ok()
                .map(|k| k.n().bits())
        });
        return match bits {
            Some(bits) => KeyType::Rsa { bits },
            None => KeyType::Other {
                algorithm: oid.to_string(),
            },
        };
    }
    if oid == rfc5912::ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        let curve = match curve {
            Some(rfc5912::SECP_384_R_1) => "P-384".to_owned(),
            Some(rfc5912::SECP_256_R_1) => "P-256".to_owned(),
            Some(other) => other.to_string(),
            None => "unknown curve".to_owned(),
        };
        return KeyType::Ec { curve };
    }
    KeyType::Other {
        algorithm: oid.to_string(),
    }
}

/// The value of an AMD extension, decoded as `T` if it is DER-wrapped.
fn extension<'a, T: Decode<'a>>(cert: &'a Certificate, oid: ObjectIdentifier) -> Option<T> {
    let value = extension_bytes(cert, oid)?;
    T::from_der(value).ok()
}

fn extension_bytes(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn ia5(cert: &Certificate, oid: ObjectIdentifier) -> Option<String> {
    extension::<Ia5StringRef<'_>>(cert, oid).map(|s| s.as_str().to_owned())
}

fn tcb(cert: &Certificate) -> Option<Tcb> {
    let tcb = Tcb {
        bootloader: extension(cert, AMD_BL_SPL),
        tee: extension(cert, AMD_TEE_SPL),
        snp: extension(cert, AMD_SNP_SPL),
        microcode: extension(cert, AMD_UCODE_SPL),
        fmc: extension(cert, AMD_FMC_SPL),
    };
    (tcb != Tcb::default()).then_some(tcb)
}

/// Describes a decoded certificate.
pub(crate) fn cert_info(cert: &Certificate) -> CertInfo {
    let tbs = &cert.tbs_certificate;
    let product_name = ia5(cert, AMD_PRODUCT_NAME);
    let product = product_name
        .as_deref()
        .and_then(product_line)
        .or_else(|| common_name(&tbs.subject).and_then(|cn| product_line(&cn)))
        .or_else(|| common_name(&tbs.issuer).and_then(|cn| product_line(&cn)));
    CertInfo {
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        not_before: time(&tbs.validity.not_before),
        not_after: time(&tbs.validity.not_after),
        serial: hex(tbs.serial_number.as_bytes()),
        key: key_type(cert),
        signature_algorithm: algorithm_name(&cert.signature_algorithm.oid),
        product,
        product_name,
        tcb: tcb(cert),
        hwid: extension_bytes(cert, AMD_HWID).map(hex),
        csp_id: ia5(cert, AMD_CSP_ID),
    }
}

/// Describes a decoded CRL.
pub(crate) fn crl_info(parsed: &ParsedCrl) -> CrlInfo {
    let tbs = &parsed.crl.tbs_cert_list;
    CrlInfo {
        issuer: tbs.issuer.to_string(),
        this_update: time(&tbs.this_update),
        next_update: tbs.next_update.as_ref().map(time),
        revoked: tbs
            .revoked_certificates
            .iter()
            .flatten()
            .map(|r| hex(r.serial_number.as_bytes()))
            .collect(),
        signature_algorithm: algorithm_name(&parsed.crl.signature_algorithm.oid),
        product: common_name(&tbs.issuer).and_then(|cn| product_line(&cn)),
    }
}
