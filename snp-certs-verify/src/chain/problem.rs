//! What can be wrong with a chain.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use thiserror::Error;

use crate::x509::X509Error;
use crate::x509::signature::SignatureError;
use snp_certs::guid::CertKind;

/// One thing wrong with a table's chain.
///
/// In JSON each problem is `{"code": …, "entry": …, "message": …}`, where
/// `code` is a stable kebab-case name and `message` the text below with its
/// cause.
#[derive(Debug, Error)]
pub enum ChainProblem {
    /// A required certificate is not in the table.
    #[error("No {kind} certificate in the table")]
    Missing {
        /// The kind missing.
        kind: CertKind,
    },
    /// Neither a VCEK nor a VLEK is in the table.
    #[error("No VCEK or VLEK in the table: guests cannot verify their report")]
    NoSigner,
    /// An entry does not decode as a certificate (or CRL).
    #[error("{kind} entry does not decode")]
    Unparsable {
        /// The entry.
        kind: CertKind,
        /// Why.
        #[source]
        source: X509Error,
    },
    /// A certificate's key is not the type AMD uses for its place.
    #[error("{kind} key is {found}, expected {expected}")]
    WrongKey {
        /// The entry.
        kind: CertKind,
        /// What AMD uses there.
        expected: String,
        /// What the certificate has.
        found: String,
    },
    /// The ARK's issuer is not its subject.
    #[error("ARK is not self-signed: issuer {issuer} differs from subject {subject}")]
    NotSelfSigned {
        /// The ARK's subject.
        subject: String,
        /// The ARK's issuer.
        issuer: String,
    },
    /// A certificate names another issuer than the one in the table.
    #[error("{kind} was issued by {issuer}, but the table's {by} is {expected}")]
    IssuerMismatch {
        /// The entry.
        kind: CertKind,
        /// Its issuer name.
        issuer: String,
        /// The entry that should have issued it.
        by: CertKind,
        /// That entry's subject name.
        expected: String,
    },
    /// A signature does not verify with the issuer's key.
    #[error("{kind} signature does not verify with the {by} key")]
    BadSignature {
        /// The entry.
        kind: CertKind,
        /// The entry whose key was used.
        by: CertKind,
        /// Why.
        #[source]
        source: SignatureError,
    },
    /// A certificate is not valid yet.
    #[error("{kind} is not valid before {not_before}")]
    NotYetValid {
        /// The entry.
        kind: CertKind,
        /// Its start of validity.
        not_before: String,
    },
    /// A certificate has expired.
    #[error("{kind} expired at {not_after}")]
    Expired {
        /// The entry.
        kind: CertKind,
        /// Its end of validity.
        not_after: String,
    },
    /// The CRL revokes a certificate of the chain.
    #[error("{kind} (serial {serial}) is revoked by the table's CRL")]
    Revoked {
        /// The entry.
        kind: CertKind,
        /// Its serial number, hex.
        serial: String,
    },
    /// The ARK's key is none of the trusted roots: not AMD's, and not one
    /// the caller named.
    #[error("ARK is not a trusted root: its key (SPKI SHA-384 {found}) is not {expected}")]
    UntrustedRoot {
        /// SHA-384 of the ARK's SubjectPublicKeyInfo, hex.
        found: String,
        /// What was expected instead.
        expected: String,
    },
    /// The ARK is AMD's root of another product line than the chain's.
    #[error("ARK is AMD's {root} root key, but the chain is for {product}")]
    RootProductMismatch {
        /// The product line whose root the ARK is.
        root: String,
        /// The product line the chain's certificates name.
        product: String,
    },
    /// Two certificates name different AMD product lines.
    #[error("{kind} is for {product}, but the {by} is for {expected}")]
    ProductMismatch {
        /// The entry.
        kind: CertKind,
        /// Its product line.
        product: String,
        /// The entry it was compared with.
        by: CertKind,
        /// That entry's product line.
        expected: String,
    },
}

impl ChainProblem {
    /// A stable kebab-case code for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            ChainProblem::Missing { .. } => "missing",
            ChainProblem::NoSigner => "no-signer",
            ChainProblem::Unparsable { .. } => "unparsable",
            ChainProblem::WrongKey { .. } => "wrong-key",
            ChainProblem::NotSelfSigned { .. } => "not-self-signed",
            ChainProblem::IssuerMismatch { .. } => "issuer-mismatch",
            ChainProblem::BadSignature { .. } => "bad-signature",
            ChainProblem::NotYetValid { .. } => "not-yet-valid",
            ChainProblem::Expired { .. } => "expired",
            ChainProblem::Revoked { .. } => "revoked",
            ChainProblem::ProductMismatch { .. } => "product-mismatch",
            ChainProblem::UntrustedRoot { .. } => "untrusted-root",
            ChainProblem::RootProductMismatch { .. } => "root-product-mismatch",
        }
    }

    /// The entry the problem is about, if one.
    pub fn entry(&self) -> Option<CertKind> {
        match self {
            ChainProblem::NoSigner => None,
            ChainProblem::NotSelfSigned { .. }
            | ChainProblem::UntrustedRoot { .. }
            | ChainProblem::RootProductMismatch { .. } => Some(CertKind::Ark),
            ChainProblem::Missing { kind }
            | ChainProblem::Unparsable { kind, .. }
            | ChainProblem::WrongKey { kind, .. }
            | ChainProblem::IssuerMismatch { kind, .. }
            | ChainProblem::BadSignature { kind, .. }
            | ChainProblem::NotYetValid { kind, .. }
            | ChainProblem::Expired { kind, .. }
            | ChainProblem::Revoked { kind, .. }
            | ChainProblem::ProductMismatch { kind, .. } => Some(*kind),
        }
    }

    /// The message with its causes, one line: `A: B: C`.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}

impl Serialize for ChainProblem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ChainProblem", 3)?;
        s.serialize_field("code", self.code())?;
        s.serialize_field("entry", &self.entry())?;
        s.serialize_field("message", &self.message())?;
        s.end()
    }
}
