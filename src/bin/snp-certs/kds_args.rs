//! Options shared by `fetch` and `refresh`: where KDS and the cache are,
//! how politely to ask, which platform to ask for, and the exit codes for
//! KDS failures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use snp_certs::CertKind;
use snp_certs::table::CertTable;
use snp_certs_verify::x509::{CertInfo, EntryInfo, describe};
use snp_kds::client::ClientOptions;
use snp_kds::identity::{host, report};
use snp_kds::retry::RetryPolicy;
use snp_kds::{Hwid, KdsConfig, KdsError, PlatformId, Product, TcbLevels};

use crate::chain_report::ChainCheck;

/// Exit code: the certificates KDS sent (or the cache held) do not verify,
/// or are not for the platform asked for; nothing was written.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: `--offline` and the cache lacks something (EX_NOINPUT).
pub const EXIT_NOT_CACHED: u8 = 66;
/// Exit code: KDS kept answering "too many requests" or could not be
/// reached within the retry budget; try again later (EX_UNAVAILABLE).
pub const EXIT_KDS_UNAVAILABLE: u8 = 69;

/// Where KDS and the cache are, and how politely to ask.
#[derive(Debug, Clone, Args)]
pub struct KdsArgs {
    /// KDS base URL: AMD's KDS, or a caching proxy in front of it shared
    /// by a fleet. Whatever answers, chains must end in AMD's root keys.
    #[arg(long, value_name = "URL", default_value = snp_kds::url::DEFAULT_BASE)]
    pub kds: String,
    /// Cache of verified KDS documents, shared by all processes using it
    /// (and so is their request pacing). Default: /var/cache/snp-certs/kds
    /// for root; otherwise $XDG_CACHE_HOME/snp-certs/kds, else
    /// ~/.cache/snp-certs/kds, else $TMPDIR/snp-certs-UID/kds.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Use only the cache; never contact KDS.
    #[arg(long)]
    pub offline: bool,
    /// Minimum time between two requests to KDS from this host (all
    /// processes using the same cache), in milliseconds, 0 to 60000.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub min_interval_ms: u64,
    /// Requests per document at most, retries included.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub max_attempts: u32,
    /// Longest total wait for one document (this host's turn in the
    /// request pacing, Retry-After and backoff together), in seconds. A
    /// wait that does not fit ends the fetch at once (exit 69).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub max_wait: u64,
    /// Timeout for one HTTP request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub http_timeout: u64,
    #[command(flatten)]
    pub time: ChainCheck,
}

impl KdsArgs {
    /// The cache directory: `--cache`, or this user's default.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        match &self.cache {
            Some(dir) => Ok(dir.clone()),
            None => snp_kds::cache::default_dir().map_err(|e| {
                anyhow::Error::new(e).context("give a cache directory with --cache DIR")
            }),
        }
    }

    /// The library's configuration.
    pub fn config(&self) -> Result<KdsConfig> {
        Ok(KdsConfig {
            base: self.kds.clone(),
            cache_dir: self.cache_dir()?,
            offline: self.offline,
            min_interval: Duration::from_millis(self.min_interval_ms),
            client: ClientOptions {
                timeout: Duration::from_secs(self.http_timeout),
                retry: RetryPolicy {
                    max_attempts: self.max_attempts.max(1),
                    max_total_wait: Duration::from_secs(self.max_wait),
                    ..RetryPolicy::default()
                },
                // Waits can be long: say why nothing moves.
                on_wait: Some(Arc::new(|reason, _| {
                    eprintln!("snp-certs: {reason}");
                })),
                ..ClientOptions::default()
            },
            verify_at: self.time.at.map(|_| self.time.time()),
            roots: self.time.roots()?,
        })
    }
}

/// Which platform to fetch for.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// The product line: milan, genoa, bergamo, siena or turin, in any
    /// case (bergamo and siena are Genoa parts and get Genoa's
    /// certificates).
    #[arg(long, value_parser = parse_product)]
    pub product: Option<Product>,
    /// The chip's hardware ID in hex (64 bytes; 8 on Turin).
    #[arg(long, value_name = "HEX", conflicts_with_all = ["from_report", "from_host"])]
    pub hwid: Option<String>,
    /// The TCB: the reported-TCB value in hex (as attestation reports and
    /// snphost show it) or bl=N,tee=N,snp=N,ucode=N (and fmc=N on Turin).
    #[arg(long, value_name = "TCB", conflicts_with_all = ["from_report", "from_host"])]
    pub tcb: Option<String>,
    /// Take the chip ID, reported TCB and product from a binary
    /// attestation report.
    #[arg(long, value_name = "FILE", conflicts_with = "from_host")]
    pub from_report: Option<PathBuf>,
    /// Take them from this host's SEV firmware (/dev/sev; root only).
    #[arg(long)]
    pub from_host: bool,
}

/// Parses `--product`.
pub fn parse_product(s: &str) -> Result<Product, String> {
    s.parse().map_err(|e: snp_kds::IdentityError| e.to_string())
}

impl IdentityArgs {
    /// The platform identity these arguments name.
    pub fn resolve(&self) -> Result<PlatformId> {
        if let Some(path) = &self.from_report {
            return Ok(report::from_report_file(path, self.product)?);
        }
        if self.from_host {
            return Ok(host::read_host(self.product)?);
        }
        let (Some(product), Some(hwid), Some(tcb)) = (self.product, &self.hwid, &self.tcb) else {
            bail!(
                "name the platform with --product, --hwid and --tcb, \
                 or use --from-report FILE or --from-host"
            );
        };
        Ok(PlatformId {
            product,
            hwid: Hwid::parse(hwid, product)?,
            tcb: TcbLevels::parse(tcb, product)?,
        })
    }
}

/// The exit code for a KDS error.
pub fn exit_code(e: &KdsError) -> u8 {
    match e {
        e if e.is_retry_later() => EXIT_KDS_UNAVAILABLE,
        KdsError::Offline { .. } => EXIT_NOT_CACHED,
        KdsError::Verification { .. }
        | KdsError::VcekMismatch { .. }
        | KdsError::ChainShape { .. }
        | KdsError::Invalid { .. } => EXIT_REFUSED,
        _ => 2,
    }
}

/// Prints a KDS error with what to do about it; returns its exit code.
pub fn report_error(e: KdsError, doing: &str) -> u8 {
    let code = exit_code(&e);
    let hint = match (&e, code) {
        (KdsError::PacedTooLong { .. }, _) => {
            "; nothing was written: run the same command again then, or allow a longer \
             --max-wait"
        }
        (_, EXIT_KDS_UNAVAILABLE) => "; nothing was written: run the same command again later",
        (_, EXIT_NOT_CACHED) => {
            "; run it once without --offline (or with --prefetch) to fill the cache"
        }
        (KdsError::Verification { problems, .. }, EXIT_REFUSED)
            if problems.contains("not a trusted root") =>
        {
            "; nothing was stored or written (only AMD's root keys are trusted; a root of \
             your own, a test stand-in, is accepted when named with --trust-root FILE)"
        }
        (_, EXIT_REFUSED) => "; nothing was stored or written",
        (KdsError::Cache { .. } | KdsError::NoCacheDir { .. }, _) => {
            "; give a cache directory this user can write with --cache DIR"
        }
        _ => "",
    };
    eprintln!(
        "snp-certs: cannot {doing}: {:#}{hint}",
        anyhow::Error::new(e)
    );
    code
}

/// What a table's VCEK says about itself, if it has one that parses.
pub fn table_vcek(table: &CertTable<'_>) -> Option<CertInfo> {
    let entry = table.get(CertKind::Vcek)?;
    match describe(entry.data) {
        Ok(EntryInfo::Certificate(info)) => Some(info),
        _ => None,
    }
}

/// The product and hardware ID a VCEK's description names.
pub fn vcek_platform(info: &CertInfo) -> Result<(Product, Hwid)> {
    let product: Product = info
        .product
        .as_deref()
        .context("the VCEK names no product line")?
        .parse()?;
    let hwid = info
        .hwid
        .as_deref()
        .context("the VCEK has no hardware ID")?;
    Ok((product, Hwid::parse(hwid, product)?))
}
