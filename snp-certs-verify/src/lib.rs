//! Checking what a certificate table carries, for the operator's tools:
//! a VMM that serves tables needs none of this (it depends on `snp-certs`
//! alone and builds no RSA or X.509).
//!
//! * [`x509`]: certificates and CRLs in tables: PEM/DER, descriptions,
//!   signature checks.
//! * [`chain`]: checking the AMD endorsement chain a table carries (ARK,
//!   ASK or ASVK, VCEK or VLEK, CRL), signature by signature.

pub mod chain;
pub mod x509;

#[cfg(test)]
mod test_fixtures;
