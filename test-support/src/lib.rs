//! Test doubles shared by the test suites of several crates, so no test
//! includes another crate's files by path:
//!
//! * [`alloc_count`]: a global allocator that counts a thread's
//!   allocations, for the tests that prove a path allocates nothing;
//! * [`fixtures`]: the certificate fixtures (AMD's real Milan, Genoa and
//!   Turin certificates and a synthetic chain) in
//!   `snp-certs-verify/tests/fixtures`;
//! * [`fake_kds`] (feature `kds`): a fake AMD Key Distribution Service on
//!   127.0.0.1, for `snp-kds`'s tests and the `snp-certs fetch` and
//!   `refresh` end-to-end tests;
//! * [`fake_vmm`] (feature `vmm`): a fake VMM behind the real API server,
//!   for `api-server`'s tests and the `snp-remote` end-to-end tests.
//!
//! A dev-dependency only (`publish = false`): nothing here is in a
//! normal build of any crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod alloc_count;
pub mod fixtures;

#[cfg(feature = "kds")]
pub mod fake_kds;

#[cfg(feature = "vmm")]
pub mod fake_vmm;
