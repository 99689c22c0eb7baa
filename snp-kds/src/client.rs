//! One HTTP GET to KDS, with pacing and retries (see [`crate::retry`] and
//! [`crate::pacing`]).
//!
//! The transport is a [`ureq::Agent`]: HTTP/1.1, TLS by rustls with
//! Mozilla's root certificates (webpki-roots), a global timeout per
//! request and a shorter connect timeout, proxies from `ALL_PROXY`,
//! `HTTPS_PROXY` or `HTTP_PROXY` (with `NO_PROXY` honoured), and
//! redirects followed. Status codes are handled here rather than by ureq,
//! so that 429 and 503 can be told apart and their `Retry-After` read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::error::KdsError;
use crate::pacing::Pacer;
use crate::retry::{RetryPolicy, jittered, parse_retry_after};

/// Largest answer accepted (a certificate chain is about 4 KiB, a CRL a
/// few KiB).
pub const MAX_BODY: u64 = 1024 * 1024;

/// Told about each wait before a retry: what happened, and for how long
/// the client now waits (e.g. to tell an operator why nothing moves).
pub type RetryNotice = Arc<dyn Fn(&str, Duration) + Send + Sync>;

/// How to talk to KDS.
#[derive(Clone)]
pub struct ClientOptions {
    /// Maximum time for one request, connecting included.
    pub timeout: Duration,
    /// Maximum time to connect.
    pub connect_timeout: Duration,
    /// Use the proxy named by the environment.
    pub proxy_from_env: bool,
    /// Retries.
    pub retry: RetryPolicy,
    /// Called before each wait for a retry, with a one-line reason.
    pub on_retry: Option<RetryNotice>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("proxy_from_env", &self.proxy_from_env)
            .field("retry", &self.retry)
            .field("on_retry", &self.on_retry.is_some())
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            proxy_from_env: true,
            retry: RetryPolicy::default(),
            on_retry: None,
        }
    }
}

/// A KDS client.
pub struct Client {
    agent: ureq::Agent,
    retry: RetryPolicy,
    on_retry: Option<RetryNotice>,
    pacer: Option<Pacer>,
    clock: Arc<dyn Clock>,
    requests: AtomicU32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("retry", &self.retry)
            .field("pacer", &self.pacer)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Vec<u8>),
    /// Worth retrying: what happened, and KDS's `Retry-After` if any.
    Again(String, Option<Duration>),
}

impl Client {
    /// A client; `pacer` spaces its requests (and other processes').
    pub fn new(options: &ClientOptions, pacer: Option<Pacer>, clock: Arc<dyn Clock>) -> Client {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            .timeout_connect(Some(options.connect_timeout))
            .http_status_as_error(false)
            .user_agent(format!("snp-certs/{}", env!("CARGO_PKG_VERSION")));
        if !options.proxy_from_env {
            config = config.proxy(None);
        }
        Client {
            agent: config.build().into(),
            retry: options.retry.clone(),
            on_retry: options.on_retry.clone(),
            pacer,
            clock,
            requests: AtomicU32::new(0),
        }
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    fn attempt(&self, url: &str) -> Result<Attempt, KdsError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut response = match self.agent.get(url).call() {
            Ok(response) => response,
            Err(e) if is_transient(&e) => return Ok(Attempt::Again(e.to_string(), None)),
            Err(e) => {
                return Err(KdsError::Request {
                    url: url.to_owned(),
                    source: Box::new(e),
                });
            }
        };
        let status = response.status().as_u16();
        match status {
            200 => {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_BODY)
                    .read_to_vec();
                match body {
                    Ok(body) => Ok(Attempt::Done(body)),
                    Err(e) => Ok(Attempt::Again(format!("reading the answer: {e}"), None)),
                }
            }
            404 => Err(KdsError::NotFound {
                url: url.to_owned(),
            }),
            429 | 500..=599 => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, self.clock.now()));
                let reason = response
                    .status()
                    .canonical_reason()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default();
                Ok(Attempt::Again(
                    format!("HTTP {status}{reason}"),
                    retry_after,
                ))
            }
            _ => Err(KdsError::Status {
                url: url.to_owned(),
                status,
            }),
        }
    }

    /// GETs `url`, retrying as the policy allows; returns the body of the
    /// `200 OK` answer.
    pub fn get(&self, url: &str) -> Result<Vec<u8>, KdsError> {
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        loop {
            if let Some(pacer) = &self.pacer {
                pacer.wait_turn(self.clock.as_ref())?;
            }
            attempts += 1;
            let (last, retry_after) = match self.attempt(url)? {
                Attempt::Done(body) => {
                    log::debug!(
                        "GET {url}: {} bytes after {attempts} attempt(s)",
                        body.len()
                    );
                    return Ok(body);
                }
                Attempt::Again(last, retry_after) => (last, retry_after),
            };
            let wait = match retry_after {
                Some(d) => jittered(d),
                None => self.retry.backoff(attempts),
            };
            if let (Some(pacer), Some(d)) = (&self.pacer, retry_after) {
                pacer.defer(self.clock.now() + d)?;
            }
            let budget_left = self.retry.max_total_wait.saturating_sub(waited);
            if attempts >= self.retry.max_attempts || wait > budget_left {
                return Err(KdsError::RetriesExhausted {
                    url: url.to_owned(),
                    attempts,
                    last,
                    retry_after,
                });
            }
            let reason = format!(
                "{url}: {last}; retrying in {:.1} s (attempt {attempts} of {})",
                wait.as_secs_f64(),
                self.retry.max_attempts
            );
            log::info!("{reason}");
            if let Some(notify) = &self.on_retry {
                notify(&reason, wait);
            }
            self.clock.sleep(wait);
            waited += wait;
        }
    }
}

/// Transport failures worth retrying.
fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::ConnectProxyFailed(_)
            | ureq::Error::BodyStalled
    )
}
