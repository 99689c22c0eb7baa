//! A small blocking client for the API, used by `snp-remote` and tests.
//!
//! Each call opens a connection to the Unix socket, sends one HTTP/1.1
//! request with hyper and reads the whole answer. Typed helpers decode
//! successful answers and turn error answers into [`ClientError::Api`]
//! with the server's message.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::net::UnixStream;

use crate::routes::{API_ROOT, Method};
use vmm_api::{
    CounterMap, ErrorBody, PingResponse, SnpCertsInfo, SnpCertsUpdate, VmConfig, VmInfo, Warnings,
};

/// Default time limit for one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read.
const MAX_RESPONSE_SIZE: usize = 16 << 20;

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The client's runtime could not be created.
    #[error("Cannot start the client runtime")]
    Runtime(#[source] io::Error),
    /// The socket could not be reached.
    #[error("Cannot connect to API socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with the VMM failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer within the time limit.
    #[error("No answer from the VMM within {0:?}")]
    Timeout(Duration),
    /// The request body could not be encoded.
    #[error("Cannot encode the request body")]
    Encode(#[source] serde_json::Error),
    /// A successful answer that is not the expected JSON.
    #[error("Unexpected answer from {endpoint}")]
    Decode {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The server refused the request; `chain` is its explanation,
    /// outermost first.
    #[error("{}", .chain.join(": "))]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error chain.
        chain: Vec<String>,
    },
}

/// A raw answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// The `Allow` header, if any.
    pub allow: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error chain of an error answer, outermost first: the JSON
    /// array of strings the server sends, or else the body text, or else
    /// the status.
    pub fn error_chain(&self) -> Vec<String> {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(ErrorBody(chain)) if !chain.is_empty() => chain,
            _ if !self.body.is_empty() => vec![self.text()],
            _ => vec![format!("HTTP status {}", self.status)],
        }
    }

    /// The error chain on one line (`outer: inner`), as `ch-remote`
    /// prints it.
    pub fn error_message(&self) -> String {
        self.error_chain().join(": ")
    }

    /// [`ClientError::Api`] unless the status is 2xx.
    pub fn ok(self) -> Result<ApiResponse, ClientError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(ClientError::Api {
                status: self.status,
                chain: self.error_chain(),
            })
        }
    }

    /// Decodes a successful answer's body.
    pub fn json<T: DeserializeOwned>(self, endpoint: &str) -> Result<T, ClientError> {
        let response = self.ok()?;
        serde_json::from_slice(&response.body).map_err(|source| ClientError::Decode {
            endpoint: endpoint.to_owned(),
            source,
        })
    }
}

/// A blocking API client.
#[derive(Debug)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

impl ApiClient {
    /// A client for the API socket at `socket_path`. Connects per call.
    pub fn new(socket_path: impl Into<PathBuf>) -> Result<ApiClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(ApiClient {
            socket: socket_path.into(),
            timeout: DEFAULT_TIMEOUT,
            runtime,
        })
    }

    /// Sets the time limit for each call.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Sends `body` (as JSON) to `endpoint` (such as `vm.info`) and returns
    /// the answer, whatever its status.
    pub fn request<T: Serialize + ?Sized>(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&T>,
    ) -> Result<ApiResponse, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(ClientError::Encode)?;
        self.raw_request(method.as_str(), &format!("{API_ROOT}{endpoint}"), body)
    }

    /// Sends any method, path and body bytes, for tests of refusals.
    pub fn raw_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<ApiResponse, ClientError> {
        let timeout = self.timeout;
        self.runtime
            .block_on(async {
                tokio::time::timeout(timeout, exchange(&self.socket, method, path, body)).await
            })
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    fn get<R: DeserializeOwned>(&self, endpoint: &str) -> Result<R, ClientError> {
        self.request(Method::Get, endpoint, None::<&()>)?
            .json(endpoint)
    }

    fn put_empty(&self, endpoint: &str) -> Result<(), ClientError> {
        self.request(Method::Put, endpoint, None::<&()>)?
            .ok()
            .map(drop)
    }

    /// `GET vmm.ping`.
    pub fn ping(&self) -> Result<PingResponse, ClientError> {
        self.get("vmm.ping")
    }

    /// `PUT vmm.shutdown`.
    pub fn shutdown_vmm(&self) -> Result<(), ClientError> {
        self.put_empty("vmm.shutdown")
    }

    /// `PUT vm.create`; returns the warnings about Cloud Hypervisor
    /// settings the VMM ignores (none: empty).
    pub fn create_vm(&self, config: &VmConfig) -> Result<Vec<String>, ClientError> {
        let response = self.request(Method::Put, "vm.create", Some(config))?.ok()?;
        if response.body.is_empty() {
            return Ok(Vec::new());
        }
        response.json::<Warnings>("vm.create").map(|w| w.warnings)
    }

    /// `PUT vm.boot`.
    pub fn boot_vm(&self) -> Result<(), ClientError> {
        self.put_empty("vm.boot")
    }

    /// `GET vm.info`.
    pub fn info(&self) -> Result<VmInfo, ClientError> {
        self.get("vm.info")
    }

    /// `PUT vm.shutdown`.
    pub fn shutdown_vm(&self) -> Result<(), ClientError> {
        self.put_empty("vm.shutdown")
    }

    /// `PUT vm.delete`.
    pub fn delete_vm(&self) -> Result<(), ClientError> {
        self.put_empty("vm.delete")
    }

    /// `GET vm.snp-certs`.
    pub fn snp_certs(&self) -> Result<SnpCertsInfo, ClientError> {
        self.get("vm.snp-certs")
    }

    /// `PUT vm.snp-certs`; returns the configuration now in force.
    pub fn put_snp_certs(&self, update: &SnpCertsUpdate) -> Result<SnpCertsInfo, ClientError> {
        self.request(Method::Put, "vm.snp-certs", Some(update))?
            .json("vm.snp-certs")
    }

    /// `GET vm.counters`: device → counter → value.
    pub fn counters(&self) -> Result<CounterMap, ClientError> {
        self.get("vm.counters")
    }
}

/// One connection, one request.
async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<ApiResponse, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let http = |e: hyper::Error| ClientError::Http(Box::new(e));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost");
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(Box::new(e)))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(http)?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = response.status().as_u16();
        let allow = header(hyper::header::ALLOW);
        let content_type = header(CONTENT_TYPE);
        let body = Limited::new(response.into_body(), MAX_RESPONSE_SIZE)
            .collect()
            .await
            .map_err(ClientError::Http)?
            .to_bytes()
            .to_vec();
        Ok(ApiResponse {
            status,
            allow,
            content_type,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
