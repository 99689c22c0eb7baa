//! The wire types, shared by the server, the client and the VMM, so they
//! can never drift. All are plain serde data; request types refuse unknown
//! fields.

pub mod action;
pub mod certs;
pub mod cli_options;
pub mod config;
pub mod option_parser;
pub mod vm;

pub use action::{ApiError, ApiErrorKind, ErrorBody, VmmAction, VmmApi, VmmData};
pub use certs::{
    CertsStats, LockWaitSummary, OutcomeCounts, SnpCertsInfo, SnpCertsUpdate, VmCounters,
};
pub use cli_options::VmOptions;
pub use config::{ConfigError, CpusConfig, MemoryConfig, PayloadConfig, SnpConfig, VmConfig};
pub use option_parser::{OptionError, Options, SizeError, parse_size};
pub use vm::{PingResponse, VcpuInfo, VmInfo, VmState};
