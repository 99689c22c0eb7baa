//! The REST API of the SNP VMM: HTTP/1.1 over a Unix socket, Cloud
//! Hypervisor style (`/api/v1/vm.snp-certs`, ...).
//!
//! * [`routes`]: the route table and the pure (method, path, body) →
//!   [`vmm_api::VmmAction`] parser;
//! * [`server`]: [`server::ApiServer`], which serves any
//!   [`vmm_api::VmmApi`] implementation;
//! * [`client`]: [`client::ApiClient`], a blocking client.
//!
//! The crate does not depend on the VMM: the VMM implements
//! [`vmm_api::VmmApi`]. `openapi.yaml` beside this crate's manifest
//! describes the API and is checked against [`routes::ROUTES`] by a test.

pub mod client;
pub mod routes;
pub mod server;

#[cfg(test)]
mod openapi_tests;

pub use client::{ApiClient, ApiResponse, ClientError};
pub use server::{ApiServer, ServerError};
pub use vmm_api::{ApiError, ApiErrorKind, VmmAction, VmmApi, VmmData};
