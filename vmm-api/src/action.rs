//! What the API asks of the VMM, what the VMM answers, and the trait the
//! VMM implements.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::certs::{CounterMap, SnpCertsInfo, SnpCertsUpdate};
use super::config::VmConfig;
use super::vm::{PingResponse, VmInfo};

/// One API request, decoded. Each endpoint maps to one variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    /// `GET vmm.ping`.
    Ping,
    /// `PUT vmm.shutdown`: stop the VMM process.
    ShutdownVmm,
    /// `PUT vm.create`.
    CreateVm(Box<VmConfig>),
    /// `PUT vm.boot`.
    BootVm,
    /// `GET vm.info`.
    VmInfo,
    /// `PUT vm.shutdown`.
    ShutdownVm,
    /// `PUT vm.delete`.
    DeleteVm,
    /// `GET vm.snp-certs`.
    GetSnpCerts,
    /// `PUT vm.snp-certs`.
    PutSnpCerts(SnpCertsUpdate),
    /// `GET vm.counters`.
    VmCounters,
}

/// The VMM's answer to a [`VmmAction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmData {
    /// Done, nothing to show: HTTP 204.
    Empty,
    /// Done, with warnings about what was asked (for [`VmmAction::CreateVm`]:
    /// the Cloud Hypervisor settings it ignores): HTTP 200 with a
    /// [`Warnings`] body; none at all is answered as [`VmmData::Empty`].
    Warnings(Warnings),
    /// For [`VmmAction::Ping`].
    Ping(PingResponse),
    /// For [`VmmAction::VmInfo`].
    VmInfo(Box<VmInfo>),
    /// For [`VmmAction::GetSnpCerts`] and [`VmmAction::PutSnpCerts`] (the
    /// configuration now in force).
    SnpCerts(Box<SnpCertsInfo>),
    /// For [`VmmAction::VmCounters`]: Cloud Hypervisor's map, device →
    /// counter → value.
    Counters(CounterMap),
}

/// The body of an answer that carries warnings:
/// `{"warnings": ["serial is ignored (...)"]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warnings {
    /// One sentence per warning.
    pub warnings: Vec<String>,
}

impl VmmData {
    /// [`VmmData::Warnings`] with `warnings`, or [`VmmData::Empty`] when
    /// there are none.
    pub fn with_warnings(warnings: Vec<String>) -> VmmData {
        if warnings.is_empty() {
            VmmData::Empty
        } else {
            VmmData::Warnings(Warnings { warnings })
        }
    }
}

/// The class of an [`ApiError`]; the server maps each to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiErrorKind {
    /// 400: bad input (malformed JSON, unknown field, invalid value, a
    /// certs file that is missing or invalid).
    BadRequest,
    /// 404: unknown endpoint, or no VM.
    NotFound,
    /// 405: the endpoint does not take this method.
    MethodNotAllowed,
    /// 409: the VM is in the wrong state for this request.
    Conflict,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 500: an internal fault.
    Internal,
}

impl ApiErrorKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            ApiErrorKind::BadRequest => 400,
            ApiErrorKind::NotFound => 404,
            ApiErrorKind::MethodNotAllowed => 405,
            ApiErrorKind::Conflict => 409,
            ApiErrorKind::PayloadTooLarge => 413,
            ApiErrorKind::Internal => 500,
        }
    }
}

/// A refused request: a class and the chain of messages for the user,
/// outermost first (each message says what failed, the next one why).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}", .chain.join(": "))]
pub struct ApiError {
    /// The class, and so the HTTP status.
    pub kind: ApiErrorKind,
    /// What went wrong, outermost first; never empty.
    pub chain: Vec<String>,
}

impl ApiError {
    /// An error of `kind` with one `message`.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            chain: vec![message.into()],
        }
    }

    /// An error of `kind` whose chain is `error` and its sources.
    pub fn from_error(kind: ApiErrorKind, error: &dyn std::error::Error) -> ApiError {
        ApiError {
            kind,
            chain: error_messages(error),
        }
    }

    /// The same error with `outer` in front of its chain.
    pub fn context(mut self, outer: impl Into<String>) -> ApiError {
        self.chain.insert(0, outer.into());
        self
    }

    /// The same error with `inner` at the end of its chain, as the reason
    /// for what is already there.
    pub fn context_inner(mut self, inner: impl Into<String>) -> ApiError {
        self.chain.push(inner.into());
        self
    }

    /// The chain on one line, `outer: inner: root`.
    pub fn message(&self) -> String {
        self.chain.join(": ")
    }

    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::BadRequest, message)
    }

    /// A 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::NotFound, message)
    }

    /// A 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::Conflict, message)
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::Internal, message)
    }
}

/// The JSON body of every error response, in Cloud Hypervisor's shape: an
/// array of strings, the error chain outermost first
/// (`["Invalid vm.create body", "cpus.boot_vcpus must be ..."]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorBody(pub Vec<String>);

impl From<&ApiError> for ErrorBody {
    fn from(e: &ApiError) -> ErrorBody {
        ErrorBody(e.chain.clone())
    }
}

/// The messages of `error` and its sources, outermost first.
pub fn error_messages(error: &dyn std::error::Error) -> Vec<String> {
    let mut chain = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    chain
}

/// An error with its chain of sources on one line (`outer: inner: root`),
/// as logs show it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    error_messages(error).join(": ")
}

/// The VMM side of the API. The server calls [`VmmApi::handle`] once per
/// request on a blocking thread pool, never on its accept loop; calls may
/// come from several threads at once.
pub trait VmmApi: Send + Sync + 'static {
    /// Carries out `action`. May block briefly (a certs file is validated
    /// under its lock, waiting at most `certs_timeout`).
    fn handle(&self, action: VmmAction) -> Result<VmmData, ApiError>;
}
