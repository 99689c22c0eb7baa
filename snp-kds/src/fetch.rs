//! Getting a verified certificate bundle: cache first, KDS when needed.
//!
//! For one request [`Kds::fetch`] needs up to three documents: the
//! product's chain (ARK and ASK, or ARK and ASVK for VLEK hosts), the
//! ARK's CRL (unless left out), and the VCEK for the chip and TCB (a VLEK
//! is not on KDS: the cloud provider hands it over). Each is taken from
//! the cache if there and still valid, else requested from KDS, verified
//! (see [`crate::verify`]) and only then stored. So a second fetch of the
//! same identity makes no request at all, and a fleet that prefetches
//! before a firmware update asks KDS once per chip and TCB.
//!
//! In offline mode nothing is requested; if anything is missing from the
//! cache the error lists every missing document with its cache path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use snp_certs::CertKind;
use snp_certs_verify::chain::TrustedRoots;
use snp_certs_verify::x509::{DocumentKind, ParsedCrl, to_der};

use crate::cache::{Cache, first_default_dir};
use crate::client::{Client, ClientOptions};
use crate::clock::{Clock, SystemClock};
use crate::error::KdsError;
use crate::identity::{PlatformId, Product};
use crate::pacing::Pacer;
use crate::url::{self, DEFAULT_BASE, Family};
use crate::verify::{self, Chain, Checks};

/// Default minimum interval between two requests to one KDS host.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Where to fetch from and how.
#[derive(Debug, Clone)]
pub struct KdsConfig {
    /// KDS base URL.
    pub base: String,
    /// The cache directory (default: this user's first default, see
    /// [`crate::cache::default_dir`], which callers use to find one that
    /// can be written).
    pub cache_dir: PathBuf,
    /// Use only the cache.
    pub offline: bool,
    /// Minimum interval between requests to one host, across processes.
    pub min_interval: Duration,
    /// HTTP client settings and retries.
    pub client: ClientOptions,
    /// Check certificate validity at this time instead of now.
    pub verify_at: Option<SystemTime>,
    /// The roots a chain may end in: AMD's (the default), and only if the
    /// caller says so a stand-in of its own.
    pub roots: TrustedRoots,
}

impl Default for KdsConfig {
    fn default() -> KdsConfig {
        KdsConfig {
            base: DEFAULT_BASE.to_owned(),
            cache_dir: first_default_dir(),
            offline: false,
            min_interval: DEFAULT_MIN_INTERVAL,
            client: ClientOptions::default(),
            verify_at: None,
            roots: TrustedRoots::amd(),
        }
    }
}

/// The report signer wanted.
#[derive(Debug, Clone)]
pub enum SignerRequest {
    /// The VCEK for this chip and TCB.
    Vcek(PlatformId),
    /// This VLEK (PEM or DER), from the cloud provider.
    Vlek(Vec<u8>),
    /// No signer: the chain (and CRL) only.
    None,
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The product line.
    pub product: Product,
    /// The report signer.
    pub signer: SignerRequest,
    /// Include the ARK's CRL.
    pub crl: bool,
}

impl FetchRequest {
    /// The VCEK chain for `id`, with or without the CRL.
    pub fn vcek(id: PlatformId, crl: bool) -> FetchRequest {
        FetchRequest {
            product: id.product,
            signer: SignerRequest::Vcek(id),
            crl,
        }
    }

    fn family(&self) -> Family {
        match self.signer {
            SignerRequest::Vlek(_) => Family::Vlek,
            SignerRequest::Vcek(_) | SignerRequest::None => Family::Vcek,
        }
    }
}

/// A verified set of certificates.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The product line.
    pub product: Product,
    /// ARK and ASK/ASVK.
    pub chain: Chain,
    /// The report signer (VCEK or VLEK) and its DER, unless chain only.
    pub signer: Option<(CertKind, Vec<u8>)>,
    /// The CRL (DER), if asked for.
    pub crl: Option<Vec<u8>>,
    /// The certificate table holding all of it, verified.
    pub table: Vec<u8>,
    /// Where each document came from, one line each.
    pub sources: Vec<String>,
    /// Worth telling (a stale CRL used offline).
    pub notes: Vec<String>,
}

/// Fetches through the cache.
pub struct Kds {
    config: KdsConfig,
    cache: Cache,
    client: Client,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Kds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kds")
            .field("config", &self.config)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// One document to obtain.
struct Doc {
    what: String,
    path: PathBuf,
    url: String,
}

impl Kds {
    /// A fetcher with the real clock.
    pub fn new(config: KdsConfig) -> Kds {
        Kds::with_clock(config, Arc::new(SystemClock))
    }

    /// A fetcher with the given clock (tests).
    pub fn with_clock(config: KdsConfig, clock: Arc<dyn Clock>) -> Kds {
        let base = url::normalise_base(&config.base);
        let pacer = Pacer::new(&config.cache_dir, url::host_of(&base), config.min_interval);
        let client = Client::new(&config.client, Some(pacer), Arc::clone(&clock));
        Kds {
            cache: Cache::new(&config.cache_dir),
            config: KdsConfig { base, ..config },
            client,
            clock,
        }
    }

    /// Requests sent to KDS so far (retries included).
    pub fn requests(&self) -> u32 {
        self.client.requests()
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn at(&self) -> SystemTime {
        self.config.verify_at.unwrap_or_else(|| self.clock.now())
    }

    /// Takes a document from the cache if it passes `check`, else from
    /// KDS (then stores it once it passes). `check` is told where the
    /// bytes came from.
    fn obtain<T>(
        &self,
        doc: &Doc,
        sources: &mut Vec<String>,
        mut check: impl FnMut(&[u8], &str, bool) -> Result<T, KdsError>,
    ) -> Result<T, KdsError> {
        let shown = doc.path.display().to_string();
        // An entry that cannot be read (not a regular file, not this
        // user's) is treated as missing, and replaced once fetched.
        let cached = self.cache.read(&doc.path).unwrap_or_else(|e| {
            log::warn!("Cached {} not used: {e}", doc.what);
            None
        });
        if let Some(bytes) = cached {
            match check(&bytes, &shown, true) {
                Ok(value) => {
                    sources.push(format!("{}: from the cache, {shown}", doc.what));
                    return Ok(value);
                }
                Err(e) if self.config.offline => return Err(e),
                Err(e) => log::info!("Cached {} not used: {e}", doc.what),
            }
        }
        if self.config.offline {
            return Err(KdsError::Offline {
                missing: vec![format!("{} ({shown})", doc.what)],
            });
        }
        let bytes = self.client.get(&doc.url)?;
        let value = check(&bytes, &doc.url, false)?;
        self.cache.store(&doc.path, &bytes)?;
        sources.push(format!("{}: fetched {}", doc.what, doc.url));
        Ok(value)
    }

    fn chain_doc(&self, product: Product, family: Family) -> Doc {
        Doc {
            what: format!("{product} ARK/{} chain", family.ca_name()),
            path: self.cache.chain_path(product, family),
            url: url::chain_url(&self.config.base, product, family),
        }
    }

    fn crl_doc(&self, product: Product, family: Family) -> Doc {
        Doc {
            what: format!("{product} {} CRL", family.name().to_uppercase()),
            path: self.cache.crl_path(product, family),
            url: url::crl_url(&self.config.base, product, family),
        }
    }

    fn vcek_doc(&self, id: &PlatformId) -> Doc {
        Doc {
            what: format!("VCEK for {id}"),
            path: self.cache.vcek_path(id),
            url: url::vcek_url(&self.config.base, id),
        }
    }

    /// In offline mode, every needed document missing from the cache.
    fn missing(&self, docs: &[&Doc]) -> Result<(), KdsError> {
        let missing: Vec<String> = docs
            .iter()
            .filter(|d| !Path::new(&d.path).is_file())
            .map(|d| format!("{} ({})", d.what, d.path.display()))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(KdsError::Offline { missing })
        }
    }

    /// Gets, verifies and caches what `request` asks for, and builds the
    /// verified table.
    pub fn fetch(&self, request: &FetchRequest) -> Result<Bundle, KdsError> {
        let product = request.product;
        let family = request.family();
        let checks = Checks {
            product_line: product.kds_name(),
            at: self.at(),
            roots: &self.config.roots,
        };
        let chain_doc = self.chain_doc(product, family);
        let crl_doc = request.crl.then(|| self.crl_doc(product, family));
        let vcek_doc = match &request.signer {
            SignerRequest::Vcek(id) => Some(self.vcek_doc(id)),
            SignerRequest::Vlek(_) | SignerRequest::None => None,
        };
        if self.config.offline {
            let docs: Vec<&Doc> = [Some(&chain_doc), crl_doc.as_ref(), vcek_doc.as_ref()]
                .into_iter()
                .flatten()
                .collect();
            self.missing(&docs)?;
        }
        let mut sources = Vec::new();
        let mut notes = Vec::new();

        let chain = self.obtain(&chain_doc, &mut sources, |bytes, from, _| {
            let chain = verify::parse_chain(from, family, bytes)?;
            verify::check_chain(&chain, checks)?;
            Ok(chain)
        })?;

        let crl = match &crl_doc {
            Some(doc) => Some(self.obtain(doc, &mut sources, |bytes, from, cached| {
                let der = crl_der(from, bytes)?;
                verify::check_crl(&chain, &der, checks)?;
                if cached && self.crl_is_stale(&der) {
                    if !self.config.offline {
                        return Err(KdsError::Verification {
                            what: format!("cached CRL {from}"),
                            problems: "its nextUpdate has passed".to_owned(),
                        });
                    }
                    notes.push(format!(
                        "Offline: using the cached CRL {from} although its nextUpdate has passed"
                    ));
                }
                Ok(der)
            })?),
            None => None,
        };

        let signer = match &request.signer {
            SignerRequest::Vcek(id) => {
                let doc = vcek_doc.unwrap_or_else(|| self.vcek_doc(id));
                let der = self.obtain(&doc, &mut sources, |bytes, from, _| {
                    let der = to_der(bytes, DocumentKind::Certificate).map_err(|source| {
                        KdsError::Invalid {
                            url: from.to_owned(),
                            what: "VCEK certificate",
                            source,
                        }
                    })?;
                    verify::check_vcek(from, &der, id, &chain, checks)?;
                    Ok(der)
                })?;
                Some((CertKind::Vcek, der))
            }
            SignerRequest::Vlek(data) => {
                let der = to_der(data, DocumentKind::Certificate).map_err(|source| {
                    KdsError::Invalid {
                        url: "--vlek".to_owned(),
                        what: "VLEK certificate",
                        source,
                    }
                })?;
                sources.push("VLEK: given".to_owned());
                Some((CertKind::Vlek, der))
            }
            SignerRequest::None => None,
        };

        let table = verify::final_table(
            signer.as_ref().map(|(k, d)| (*k, d.as_slice())),
            &chain,
            crl.as_deref(),
            checks,
        )?;
        Ok(Bundle {
            product,
            chain,
            signer,
            crl,
            table,
            sources,
            notes,
        })
    }

    /// Whether a CRL's nextUpdate has passed (by the real clock).
    fn crl_is_stale(&self, der: &[u8]) -> bool {
        let Ok(parsed) = ParsedCrl::parse(der) else {
            return true;
        };
        parsed
            .crl
            .tbs_cert_list
            .next_update
            .as_ref()
            .is_some_and(|next| self.clock.now() > next.to_system_time())
    }
}

fn crl_der(from: &str, bytes: &[u8]) -> Result<Vec<u8>, KdsError> {
    to_der(bytes, DocumentKind::Crl).map_err(|source| KdsError::Invalid {
        url: from.to_owned(),
        what: "CRL",
        source,
    })
}
