//! One HTTP GET to KDS, with pacing and retries (see [`crate::retry`] and
//! [`crate::pacing`]).
//!
//! Every wait for one document, this host's turn in the request pacing as
//! much as a `Retry-After` or a backoff, counts against one budget
//! ([`RetryPolicy::max_total_wait`]): a wait that does not fit in what is
//! left ends the fetch at once. Each wait of a second or more is told to
//! [`ClientOptions::on_wait`] before it starts.
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
use crate::pacing::{MAX_RETRY_AFTER, Pacer};
use crate::retry::{RetryPolicy, jittered, parse_retry_after};

/// Largest answer accepted (a certificate chain is about 4 KiB, a CRL a
/// few KiB).
pub const MAX_BODY: u64 = 1024 * 1024;

/// Told about each wait before it starts: a one-line reason, and for how
/// long the client now waits (e.g. to tell an operator why nothing moves).
pub type WaitNotice = Arc<dyn Fn(&str, Duration) + Send + Sync>;

/// Pacing waits at least this long are told to [`ClientOptions::on_wait`]
/// (shorter ones are the ordinary spacing between two requests).
pub const ANNOUNCE_PACING: Duration = Duration::from_secs(1);

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
    /// Called before each wait (a retry's, or a pacing wait of at least
    /// [`ANNOUNCE_PACING`]) and when the pacing file had to be repaired,
    /// with a one-line reason.
    pub on_wait: Option<WaitNotice>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("proxy_from_env", &self.proxy_from_env)
            .field("retry", &self.retry)
            .field("on_wait", &self.on_wait.is_some())
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
            on_wait: None,
        }
    }
}

/// A KDS client.
pub struct Client {
    agent: ureq::Agent,
    retry: RetryPolicy,
    on_wait: Option<WaitNotice>,
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
            on_wait: options.on_wait.clone(),
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

    fn notify(&self, reason: &str, wait: Duration) {
        log::info!("{reason}");
        if let Some(notify) = &self.on_wait {
            notify(reason, wait);
        }
    }

    /// Waits for this host's turn in the request pacing, if there is a
    /// pacer; returns how long it waited. Fails at once when the turn is
    /// further off than `budget`.
    fn take_turn(&self, url: &str, budget: Duration) -> Result<Duration, KdsError> {
        let Some(pacer) = &self.pacer else {
            return Ok(Duration::ZERO);
        };
        let turn = pacer.book(self.clock.as_ref(), budget)?;
        if let Some(repaired) = &turn.repaired {
            self.notify(repaired, Duration::ZERO);
        }
        if turn.wait >= ANNOUNCE_PACING {
            self.notify(
                &format!(
                    "waiting {:.1} s for this host's turn to ask for {url} (request pacing, {})",
                    turn.wait.as_secs_f64(),
                    pacer.path().display()
                ),
                turn.wait,
            );
        }
        // The slot is booked: wait for it without holding anything.
        if !turn.wait.is_zero() {
            self.clock.sleep(turn.wait);
        }
        Ok(turn.wait)
    }

    /// GETs `url`, retrying as the policy allows; returns the body of the
    /// `200 OK` answer.
    pub fn get(&self, url: &str) -> Result<Vec<u8>, KdsError> {
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        loop {
            let budget_left = self.retry.max_total_wait.saturating_sub(waited);
            waited += self.take_turn(url, budget_left)?;
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
                // A Retry-After of any size (KDS's, or a hostile server's
                // u64::MAX seconds) is booked as at most MAX_RETRY_AFTER.
                let until = self.clock.now() + d.min(MAX_RETRY_AFTER);
                pacer.defer(self.clock.as_ref(), until)?;
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
            self.notify(
                &format!(
                    "waiting for KDS: {url}: {last}; retrying in {:.1} s (attempt {attempts} of {})",
                    wait.as_secs_f64(),
                    self.retry.max_attempts
                ),
                wait,
            );
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::{SystemTime, UNIX_EPOCH};

    use snp_certs::lock::{LockKind, try_lock};

    use super::*;

    /// A clock that moves only when slept on; each sleep first checks that
    /// nobody holds the pacing file's lock.
    struct LockCheckingClock {
        now: Mutex<SystemTime>,
        pacing: PathBuf,
        sleeps: Mutex<Vec<Duration>>,
    }

    impl Clock for LockCheckingClock {
        fn now(&self) -> SystemTime {
            *self.now.lock().unwrap()
        }
        fn sleep(&self, d: Duration) {
            let file = File::open(&self.pacing).unwrap();
            assert!(
                try_lock(&file, LockKind::Shared).unwrap(),
                "the pacing file is locked during a wait"
            );
            *self.now.lock().unwrap() += d;
            self.sleeps.lock().unwrap().push(d);
        }
    }

    #[test]
    fn a_turn_is_announced_and_waited_for_without_the_pacing_lock() {
        let dir = tempfile::tempdir().unwrap();
        let pacer = Pacer::new(dir.path(), "127.0.0.1:1", Duration::from_secs(5));
        let clock = Arc::new(LockCheckingClock {
            now: Mutex::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            pacing: pacer.path().to_owned(),
            sleeps: Mutex::new(Vec::new()),
        });
        // Someone else took the current slot: ours is 5 s later.
        pacer.book(clock.as_ref(), Duration::ZERO).unwrap();
        let told = Arc::new(Mutex::new(Vec::new()));
        let options = ClientOptions {
            proxy_from_env: false,
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            on_wait: Some({
                let told = Arc::clone(&told);
                Arc::new(move |reason: &str, wait| {
                    told.lock().unwrap().push((reason.to_owned(), wait));
                })
            }),
            ..ClientOptions::default()
        };
        let client = Client::new(&options, Some(pacer), clock.clone());
        // Nothing listens on port 1: the one attempt fails.
        let e = client.get("http://127.0.0.1:1/vcek/v1/Milan/cert_chain");
        assert!(matches!(e, Err(KdsError::RetriesExhausted { .. })), "{e:?}");
        assert_eq!(*clock.sleeps.lock().unwrap(), [Duration::from_secs(5)]);
        let told = told.lock().unwrap();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].0.starts_with("waiting 5.0 s for this host's turn"));
        assert_eq!(told[0].1, Duration::from_secs(5));
    }

    #[test]
    fn the_pacing_wait_counts_against_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let pacer = Pacer::new(dir.path(), "127.0.0.1:1", Duration::from_secs(50));
        let clock = Arc::new(LockCheckingClock {
            now: Mutex::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            pacing: pacer.path().to_owned(),
            sleeps: Mutex::new(Vec::new()),
        });
        pacer.book(clock.as_ref(), Duration::ZERO).unwrap();
        let options = ClientOptions {
            proxy_from_env: false,
            retry: RetryPolicy {
                max_total_wait: Duration::from_secs(49),
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        };
        let client = Client::new(&options, Some(pacer), clock.clone());
        let e = client.get("http://127.0.0.1:1/x").unwrap_err();
        assert!(matches!(e, KdsError::PacedTooLong { .. }), "{e:?}");
        assert_eq!(client.requests(), 0);
        assert!(clock.sleeps.lock().unwrap().is_empty());
    }
}
