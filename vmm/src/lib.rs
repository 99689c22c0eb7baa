//! A small KVM VMM that answers SEV-SNP certificate requests.

pub mod doorbell;
pub mod guest;
