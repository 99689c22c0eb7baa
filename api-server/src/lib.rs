//! The REST API of the SNP VMM: HTTP/1.1 over a Unix socket, Cloud
//! Hypervisor style (`/api/v1/vm.snp-certs`, ...).
//!
//! * [`types`]: every request and response type, shared by the server,
//!   the client and the VMM, plus the `key=value` option parser the VMM's
//!   command line and `snp-remote` share;
//! * [`routes`]: the route table and the pure (method, path, body) →
//!   [`types::VmmAction`] parser;
//! * [`server`]: [`server::ApiServer`], which serves any
//!   [`types::VmmApi`] implementation;
//! * [`client`]: [`client::ApiClient`], a blocking client.
//!
//! The crate does not depend on the VMM: the VMM implements
//! [`types::VmmApi`]. `openapi.yaml` beside this crate's manifest
//! describes the API and is checked against [`routes::ROUTES`] by a test.

pub mod client;
pub mod routes;
pub mod server;
pub mod types;

#[cfg(test)]
mod openapi_tests;

pub use client::{ApiClient, ApiResponse, ClientError};
pub use server::{ApiServer, ServerError};
pub use types::{ApiError, ApiErrorKind, VmmAction, VmmApi, VmmData};
