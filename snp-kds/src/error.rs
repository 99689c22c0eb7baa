//! Why certificates could not be had from KDS or the cache.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use snp_certs::lock::LockError;
use snp_certs::table::TableError;
use snp_certs_verify::x509::X509Error;
use thiserror::Error;

/// Why a fetch failed.
#[derive(Debug, Error)]
pub enum KdsError {
    /// KDS kept refusing (429/503/5xx) or could not be reached, and the
    /// retry budget is spent. Worth trying again later.
    #[error(
        "KDS did not serve {url} after {attempts} attempt(s) ({last}); {}",
        retry_hint(*.retry_after)
    )]
    RetriesExhausted {
        /// The document asked for.
        url: String,
        /// Requests made.
        attempts: u32,
        /// The last answer or failure.
        last: String,
        /// When KDS said it will answer again, if it said.
        retry_after: Option<Duration>,
    },
    /// KDS has no such document.
    #[error("KDS has nothing at {url} (HTTP 404)")]
    NotFound {
        /// The URL.
        url: String,
    },
    /// Any other HTTP status.
    #[error("KDS answered HTTP {status} for {url}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The request could not be made at all (bad URL, TLS setup).
    #[error("Cannot request {url}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// An answer that is not the certificate or CRL asked for.
    #[error("KDS answered {url} with something that is not a valid {what}")]
    Invalid {
        /// The URL.
        url: String,
        /// What was expected.
        what: &'static str,
        /// Why it is not.
        #[source]
        source: X509Error,
    },
    /// A `cert_chain` answer without exactly two certificates.
    #[error("KDS answered {url} with {count} PEM certificate(s), expected 2 (CA key, then ARK)")]
    ChainShape {
        /// The URL.
        url: String,
        /// Certificates found.
        count: usize,
    },
    /// Certificates that do not verify.
    #[error("The {what} does not verify: {problems}")]
    Verification {
        /// What was checked.
        what: String,
        /// What is wrong, `; `-separated.
        problems: String,
    },
    /// A VCEK for another chip or TCB than asked for.
    #[error("The VCEK from {url} is for {field} {found}, not the {asked} asked for; refusing it")]
    VcekMismatch {
        /// Where it came from.
        url: String,
        /// `hardware ID` or `TCB`.
        field: &'static str,
        /// What was asked for.
        asked: String,
        /// What the certificate says.
        found: String,
    },
    /// Offline, and the cache lacks something.
    #[error("Offline, and the cache lacks: {}", missing.join("; "))]
    Offline {
        /// Each missing document, with its cache path.
        missing: Vec<String>,
    },
    /// A cache file or directory could not be read or written.
    #[error("Cannot use cache file {path}")]
    Cache {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No default cache directory can be used.
    #[error("No usable cache directory (tried {})", tried.join("; "))]
    NoCacheDir {
        /// Each directory tried, with why it cannot be used.
        tried: Vec<String>,
    },
    /// The shared request-pacing file could not be locked.
    #[error("Cannot lock the request pacing file {path}{holders}")]
    PacingLock {
        /// The path.
        path: PathBuf,
        /// Who holds it, ` (held by pid N (cmd))`, or empty.
        holders: String,
        /// Why.
        #[source]
        source: LockError,
    },
    /// This host's turn to ask KDS comes later than the caller is willing
    /// to wait: nothing was sent.
    #[error(
        "This host may send its next request to {host} in {} s ({until}, by the request \
         pacing file {path}), more than the {} s left to wait; nothing was sent: retry after that",
        wait.as_secs_f64().ceil(),
        budget.as_secs()
    )]
    PacedTooLong {
        /// The KDS host.
        host: String,
        /// The pacing file.
        path: PathBuf,
        /// How long the turn is ahead.
        wait: Duration,
        /// What was left of the wait budget.
        budget: Duration,
        /// When the turn is, as an HTTP date.
        until: String,
    },
    /// The table could not be built.
    #[error("Cannot build the certificate table")]
    Table(#[source] TableError),
}

impl KdsError {
    /// Whether trying again later may succeed without changing anything
    /// (rate limited, KDS down, network trouble).
    pub fn is_retry_later(&self) -> bool {
        matches!(
            self,
            KdsError::RetriesExhausted { .. }
                | KdsError::PacedTooLong { .. }
                | KdsError::PacingLock { .. }
        )
    }
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(
            "KDS asks to wait {} s: retry after that",
            d.as_secs().max(1)
        ),
        None => "retry later".to_owned(),
    }
}
