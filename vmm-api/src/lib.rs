//! The VMM's wire and configuration types, shared by the VMM, the API
//! server and `snp-remote`, so they can never drift.
//!
//! Plain serde data and no HTTP: the `vmm` crate implements [`VmmApi`],
//! the `api-server` crate serves it over HTTP, and both read these types.
//! Request types refuse unknown fields (a `VmConfig` takes Cloud
//! Hypervisor's fields aside first: see [`ch_fields`]).
//!
//! * [`config`]: the VM configuration (`PUT vm.create`, and what the
//!   command line builds), with [`cli_options`] reading it from Cloud
//!   Hypervisor-style option strings, and [`ch_fields`] saying what
//!   becomes of Cloud Hypervisor's fields snp-vmm does not implement.
//! * [`payload`]: what the guest runs.
//! * [`certs`]: the certs configuration and counters as the API shows
//!   them, and the run-time update (`PUT vm.snp-certs`).
//! * [`vm`]: `vmm.ping` and `vm.info`.
//! * [`action`]: what the API asks of the VMM ([`VmmAction`]), what it
//!   answers ([`VmmData`], [`ApiError`]), and the [`VmmApi`] trait.

pub mod action;
pub mod certs;
pub mod ch_fields;
pub mod cli_options;
pub mod config;
pub mod payload;
pub mod vm;

pub use action::{
    ApiError, ApiErrorKind, ErrorBody, VmmAction, VmmApi, VmmData, Warnings, error_chain,
    error_messages,
};
pub use certs::{
    COUNTERS_DEVICE, CounterMap, LockWaitSummary, OutcomeCounts, SnpCertsInfo, SnpCertsUpdate,
    VmCounters,
};
pub use cli_options::VmOptions;
pub use config::{ConfigError, CpusConfig, MemoryConfig, PlatformConfig, SnpConfig, VmConfig};
pub use payload::{PayloadConfig, PayloadError, TestGuestConfig};
pub use vm::{
    FEATURE_KVM, FEATURE_MOCK, FEATURE_SEV_SNP, FEATURE_SNP_REQ_CERTS, PingResponse, VcpuInfo,
    VmInfo, VmState,
};
