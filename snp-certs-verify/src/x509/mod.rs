//! X.509 certificates and CRLs as they appear in SNP certificate tables.
//!
//! AMD's endorsement chain is four X.509 objects:
//!
//! | entry | subject CN | issued by | key | signature |
//! | --- | --- | --- | --- | --- |
//! | ARK (AMD Root Key) | `ARK-Milan`, `ARK-Genoa`, `ARK-Turin`, … | itself | RSA 4096 | RSASSA-PSS SHA-384 |
//! | ASK (AMD SEV Key) | `SEV-Milan`, … | ARK | RSA 4096 | RSASSA-PSS SHA-384 |
//! | ASVK (AMD SEV VLEK Key), in the ASK slot | `SEV-VLEK-Milan`, … | ARK | RSA 4096 | RSASSA-PSS SHA-384 |
//! | VCEK / VLEK | `SEV-VCEK` / `SEV-VLEK` | ASK / ASVK | EC P-384 | RSASSA-PSS SHA-384 |
//! | CRL | (issuer `ARK-…`) | ARK | – | RSASSA-PSS SHA-384 |
//!
//! Every certificate signature is RSASSA-PSS with SHA-384 (MGF1 SHA-384,
//! salt 48 bytes) by a 4096-bit RSA key; the VCEK's and VLEK's own EC P-384
//! key signs attestation reports, not certificates. The product line is
//! named in the common names and, in VCEKs and VLEKs, in the product name
//! extension (`1.3.6.1.4.1.3704.1.2`, e.g. `Milan-B0`).
//!
//! This module turns table entries (DER or PEM) into DER
//! ([`to_der`]), describes them ([`describe`], [`CertInfo`], [`CrlInfo`])
//! and checks signatures ([`signature`]). [`crate::chain`] puts these
//! together into a chain check.

pub(crate) mod info;
pub mod signature;

use der::{Decode, Encode, Header, Reader, SliceReader};
use thiserror::Error;
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::name::Name;

use snp_certs::table::Encoding;

pub use info::{CertInfo, CrlInfo, EntryInfo, KeyType, Tcb, describe, product_line};

/// What a file or table entry is expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// An X.509 certificate (PEM label `CERTIFICATE`).
    Certificate,
    /// A certificate revocation list (PEM label `X509 CRL`).
    Crl,
}

impl DocumentKind {
    /// The PEM label of this kind of document.
    pub fn pem_label(self) -> &'static str {
        match self {
            DocumentKind::Certificate => "CERTIFICATE",
            DocumentKind::Crl => "X509 CRL",
        }
    }

    fn name(self) -> &'static str {
        match self {
            DocumentKind::Certificate => "X.509 certificate",
            DocumentKind::Crl => "CRL",
        }
    }
}

/// Why bytes are not the expected certificate or CRL.
#[derive(Debug, Error)]
pub enum X509Error {
    /// No bytes at all.
    #[error("Empty input")]
    Empty,
    /// PEM armour that does not decode.
    #[error("Invalid PEM")]
    Pem(#[source] der::Error),
    /// A PEM block with another label than expected.
    #[error("PEM block is labelled {found:?}, expected {expected:?}")]
    PemLabel {
        /// The label found.
        found: String,
        /// The label expected.
        expected: &'static str,
    },
    /// More than one PEM block where one is expected.
    #[error("Input holds {count} PEM blocks; give one {kind} per file")]
    SeveralPemBlocks {
        /// How many `-----BEGIN` lines.
        count: usize,
        /// What was expected.
        kind: &'static str,
    },
    /// DER that does not decode as the expected document.
    #[error("Not a valid DER {kind}")]
    Der {
        /// What was expected.
        kind: &'static str,
        /// The decoder's complaint.
        #[source]
        source: der::Error,
    },
}

/// Normalises a certificate or CRL given as PEM or DER to DER, checking
/// that it decodes as `kind`. PEM input must hold exactly one block with
/// the label of `kind`; text around the block (as `openssl x509 -text`
/// leaves it) is ignored.
pub fn to_der(data: &[u8], kind: DocumentKind) -> Result<Vec<u8>, X509Error> {
    if data.trim_ascii().is_empty() {
        return Err(X509Error::Empty);
    }
    let pem_start = match Encoding::detect(data) {
        Encoding::Der => None,
        Encoding::Pem | Encoding::Unknown => find(data, b"-----BEGIN "),
    };
    let der = if let Some(start) = pem_start {
        let count = count(data, b"-----BEGIN ");
        if count > 1 {
            return Err(X509Error::SeveralPemBlocks {
                count,
                kind: kind.name(),
            });
        }
        let block = pem_block(&data[start..]);
        let (label, der) = der::pem::decode_vec(block).map_err(|e| X509Error::Pem(e.into()))?;
        if label != kind.pem_label() {
            return Err(X509Error::PemLabel {
                found: label.to_owned(),
                expected: kind.pem_label(),
            });
        }
        der
    } else {
        data.to_vec()
    };
    let checked = match kind {
        DocumentKind::Certificate => Certificate::from_der(&der).map(drop),
        DocumentKind::Crl => CertificateList::from_der(&der).map(drop),
    };
    checked.map_err(|source| X509Error::Der {
        kind: kind.name(),
        source,
    })?;
    Ok(der)
}

/// Encodes DER as one PEM block with the label of `kind` (LF line endings).
pub fn to_pem(der: &[u8], kind: DocumentKind) -> Result<String, X509Error> {
    der::pem::encode_string(kind.pem_label(), der::pem::LineEnding::LF, der)
        .map_err(|e| X509Error::Pem(e.into()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The PEM block at the start of `text`, up to the end of its `-----END
/// …-----` line, so that text after it does not upset the strict decoder.
fn pem_block(text: &[u8]) -> &[u8] {
    const END: &[u8] = b"-----END ";
    let Some(end) = find(text, END) else {
        return text;
    };
    let after = end + END.len();
    match find(&text[after..], b"-----") {
        Some(close) => &text[..after + close + 5],
        None => text,
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// A decoded certificate together with its DER bytes, from which the
/// signed part is taken verbatim.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    /// The DER encoding.
    pub der: Vec<u8>,
    /// The decoded certificate.
    pub cert: Certificate,
}

impl ParsedCert {
    /// Decodes a certificate given as PEM or DER.
    pub fn parse(data: &[u8]) -> Result<ParsedCert, X509Error> {
        let der = to_der(data, DocumentKind::Certificate)?;
        let cert = Certificate::from_der(&der).map_err(|source| X509Error::Der {
            kind: DocumentKind::Certificate.name(),
            source,
        })?;
        Ok(ParsedCert { der, cert })
    }

    /// The signed bytes (`tbsCertificate`), exactly as encoded.
    pub fn tbs(&self) -> Result<&[u8], der::Error> {
        first_element(&self.der)
    }

    /// The subject name.
    pub fn subject(&self) -> &Name {
        &self.cert.tbs_certificate.subject
    }

    /// The issuer name.
    pub fn issuer(&self) -> &Name {
        &self.cert.tbs_certificate.issuer
    }
}

/// A decoded CRL together with its DER bytes.
#[derive(Debug, Clone)]
pub struct ParsedCrl {
    /// The DER encoding.
    pub der: Vec<u8>,
    /// The decoded CRL.
    pub crl: CertificateList,
}

impl ParsedCrl {
    /// Decodes a CRL given as PEM or DER.
    pub fn parse(data: &[u8]) -> Result<ParsedCrl, X509Error> {
        let der = to_der(data, DocumentKind::Crl)?;
        let crl = CertificateList::from_der(&der).map_err(|source| X509Error::Der {
            kind: DocumentKind::Crl.name(),
            source,
        })?;
        Ok(ParsedCrl { der, crl })
    }

    /// The signed bytes (`tbsCertList`), exactly as encoded.
    pub fn tbs(&self) -> Result<&[u8], der::Error> {
        first_element(&self.der)
    }
}

/// The complete encoding (tag, length, value) of the first element inside
/// the outer SEQUENCE of `der`: the to-be-signed part of a certificate or
/// CRL. Taken from the input rather than re-encoded, so the signature is
/// checked over exactly the bytes the issuer signed.
fn first_element(der: &[u8]) -> Result<&[u8], der::Error> {
    let mut reader = SliceReader::new(der)?;
    let _outer = Header::decode(&mut reader)?;
    let inner = reader.peek_header()?;
    let len = (inner.encoded_len()? + inner.length)?;
    reader.read_slice(len)
}

/// The common name (CN) of a name, if it has one that is a string.
pub fn common_name(name: &Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == der::oid::db::rfc4519::COMMON_NAME)
        .and_then(|atv| std::str::from_utf8(atv.value.value()).ok())
        .map(str::to_owned)
}

/// Lower-case hex of bytes, as serial numbers and hardware IDs are shown.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
