//! Checking one certificate or CRL signature against its issuer's key.
//!
//! Only what AMD uses is accepted: RSASSA-PSS with SHA-384 as hash and as
//! MGF1 hash (the salt length and trailer field are read from the
//! parameters; AMD uses 48 and 1). `sha384WithRSAEncryption` (PKCS#1 v1.5)
//! is accepted too, since it is equally strong and some test chains use
//! it. Anything else is reported as unsupported rather than guessed at.

use der::asn1::BitString;
use der::oid::db::rfc5912;
use rsa::pkcs1::{DecodeRsaPublicKey, RsaPssParams, TrailerField};
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::{Digest, Sha384};
use thiserror::Error;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::info::algorithm_name;

/// Why a signature was not accepted.
#[derive(Debug, Error)]
pub enum SignatureError {
    /// A signature algorithm other than RSASSA-PSS or PKCS#1 v1.5 with
    /// SHA-384.
    #[error("Unsupported signature algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// RSASSA-PSS parameters missing, malformed or not SHA-384.
    #[error("Unsupported RSASSA-PSS parameters: {0}")]
    PssParameters(String),
    /// The issuer's key is not an RSA key.
    #[error("Issuer key is not an RSA key")]
    IssuerKeyNotRsa,
    /// The signature field has unused bits.
    #[error("Signature is not a whole number of bytes")]
    BitString,
    /// The signed part could not be located in the encoding.
    #[error("Cannot locate the signed part")]
    Encoding(#[source] der::Error),
    /// The signature does not match.
    #[error("Signature does not verify")]
    Mismatch(#[source] rsa::Error),
}

/// The issuer's RSA public key from its subject public key info (either
/// `rsaEncryption` or `id-RSASSA-PSS`; both hold a PKCS#1 `RSAPublicKey`).
pub fn rsa_key(spki: &SubjectPublicKeyInfoOwned) -> Result<RsaPublicKey, SignatureError> {
    let oid = spki.algorithm.oid;
    if oid != rfc5912::RSA_ENCRYPTION && oid != rfc5912::ID_RSASSA_PSS {
        return Err(SignatureError::IssuerKeyNotRsa);
    }
    let bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or(SignatureError::IssuerKeyNotRsa)?;
    RsaPublicKey::from_pkcs1_der(bytes).map_err(|_| SignatureError::IssuerKeyNotRsa)
}

/// Reads and checks RSASSA-PSS parameters; returns the salt length.
fn pss_salt_len(algorithm: &AlgorithmIdentifierOwned) -> Result<usize, SignatureError> {
    let params = algorithm
        .parameters
        .as_ref()
        .ok_or_else(|| SignatureError::PssParameters("parameters absent".to_owned()))?;
    let params: RsaPssParams<'_> = params
        .decode_as()
        .map_err(|e| SignatureError::PssParameters(e.to_string()))?;
    if params.hash.oid != rfc5912::ID_SHA_384 {
        return Err(SignatureError::PssParameters(format!(
            "hash {} is not SHA-384",
            algorithm_name(&params.hash.oid)
        )));
    }
    let mgf_hash = params.mask_gen.parameters.map(|p| p.oid);
    if params.mask_gen.oid != rfc5912::ID_MGF_1 || mgf_hash != Some(rfc5912::ID_SHA_384) {
        return Err(SignatureError::PssParameters(
            "mask generation is not MGF1 with SHA-384".to_owned(),
        ));
    }
    if params.trailer_field != TrailerField::BC {
        return Err(SignatureError::PssParameters(
            "trailer field is not 1".to_owned(),
        ));
    }
    Ok(usize::from(params.salt_len))
}

/// Verifies `signature` (by `algorithm`) over `signed` with the issuer's
/// key `issuer`.
pub fn verify(
    signed: &[u8],
    algorithm: &AlgorithmIdentifierOwned,
    signature: &BitString,
    issuer: &SubjectPublicKeyInfoOwned,
) -> Result<(), SignatureError> {
    let signature = signature.as_bytes().ok_or(SignatureError::BitString)?;
    let digest = Sha384::digest(signed);
    match algorithm.oid {
        rfc5912::ID_RSASSA_PSS => {
            let salt = pss_salt_len(algorithm)?;
            let key = rsa_key(issuer)?;
            key.verify(Pss::new_with_salt::<Sha384>(salt), &digest, signature)
                .map_err(SignatureError::Mismatch)
        }
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION => {
            let key = rsa_key(issuer)?;
            key.verify(Pkcs1v15Sign::new::<Sha384>(), &digest, signature)
                .map_err(SignatureError::Mismatch)
        }
        other => Err(SignatureError::UnsupportedAlgorithm(algorithm_name(&other))),
    }
}
