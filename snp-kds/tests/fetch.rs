//! `Kds::fetch` against a fake KDS on 127.0.0.1 serving AMD's real
//! certificates: what is requested, verified, cached and refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::fake_kds;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_kds::{FakeKds, Throttle, chain_pem, fixture, vcek_identity, vcek_tcb};
use snp_certs::CertKind;
use snp_certs::table::CertTable;
use snp_certs_verify::chain::verify_table;
use snp_kds::clock::Clock;
use snp_kds::retry::RetryPolicy;
use snp_kds::{FetchRequest, Hwid, Kds, KdsConfig, KdsError, PlatformId, Product, TcbLevels};

/// 2027-06-01: every fixture certificate is valid then.
fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_811_808_000)
}

/// A clock that moves only when slept on, recording the sleeps.
#[derive(Default)]
struct FakeClock {
    slept: Mutex<Duration>,
    sleeps: Mutex<Vec<Duration>>,
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + *self.slept.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        *self.slept.lock().unwrap() += d;
        self.sleeps.lock().unwrap().push(d);
    }
}

fn config(kds: &FakeKds, cache: &std::path::Path) -> KdsConfig {
    let mut config = KdsConfig {
        base: kds.url(),
        cache_dir: cache.to_owned(),
        min_interval: Duration::ZERO,
        verify_at: Some(at()),
        ..KdsConfig::default()
    };
    config.client.proxy_from_env = false;
    config.client.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_total_wait: Duration::from_secs(30),
    };
    config
}

fn id(product: Product, dir: &str) -> PlatformId {
    let rel = format!("amd/{dir}/vcek.der");
    let (hwid, _) = vcek_identity(&rel);
    PlatformId {
        product,
        hwid: Hwid::parse(&hwid, product).unwrap(),
        tcb: TcbLevels::parse(&vcek_tcb(&rel), product).unwrap(),
    }
}

fn milan() -> PlatformId {
    id(Product::Milan, "milan")
}

#[test]
fn fetch_verifies_then_a_repeat_asks_kds_nothing() {
    let kds = FakeKds::with_amd_fixtures();
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Kds::new(config(&kds, cache.path()));
    let bundle = fetcher.fetch(&FetchRequest::vcek(milan(), false)).unwrap();
    assert_eq!(kds.requests(), 2, "{:?}", kds.log());
    assert_eq!(fetcher.requests(), 2);
    let table = CertTable::parse(&bundle.table).unwrap();
    assert!(verify_table(&table, at()).is_verified());
    assert_eq!(
        table.get(CertKind::Vcek).unwrap().data,
        fake_kds::fixture_der("amd/milan/vcek.der")
    );
    assert!(table.get(CertKind::Crl).is_none());
    assert!(bundle.sources.iter().all(|s| s.contains("fetched")));

    // Cached: VCEK keyed by product, hwid and TCB; chain by product.
    let vcek_path = fetcher.cache().vcek_path(&milan());
    assert!(vcek_path.ends_with(format!(
        "vcek/milan/{}/bl3-tee0-snp8-ucode115.der",
        milan().hwid
    )));
    assert!(vcek_path.is_file());
    assert!(cache.path().join("vcek/milan/cert_chain.pem").is_file());

    // Another fetcher (another process) over the same cache: no request.
    let again = Kds::new(config(&kds, cache.path()));
    let second = again.fetch(&FetchRequest::vcek(milan(), false)).unwrap();
    assert_eq!(kds.requests(), 2);
    assert_eq!(again.requests(), 0);
    assert_eq!(second.table, bundle.table);
    assert!(second.sources.iter().all(|s| s.contains("from the cache")));
}

#[test]
fn turin_urls_carry_fmc_and_an_8_byte_hwid() {
    let kds = FakeKds::with_amd_fixtures();
    let cache = tempfile::tempdir().unwrap();
    let turin = id(Product::Turin, "turin");
    assert_eq!(turin.hwid.as_bytes().len(), 8);
    let fetcher = Kds::new(config(&kds, cache.path()));
    let bundle = fetcher.fetch(&FetchRequest::vcek(turin, false)).unwrap();
    assert_eq!(
        kds.log(),
        [
            "/vcek/v1/Turin/cert_chain",
            "/vcek/v1/Turin/1e550a8ee5cf9f4d?fmcSPL=00&blSPL=00&teeSPL=00&snpSPL=00&ucodeSPL=09",
        ]
    );
    assert_eq!(bundle.product, Product::Turin);
}

#[test]
fn too_many_requests_is_waited_out() {
    let kds = FakeKds::with_amd_fixtures();
    kds.throttle(Throttle {
        fail_first: 2,
        retry_after: Some("1".to_owned()),
        ..Throttle::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::default());
    let fetcher = Kds::with_clock(config(&kds, cache.path()), clock.clone());
    fetcher.fetch(&FetchRequest::vcek(milan(), false)).unwrap();
    assert_eq!(kds.throttled(), 2);
    assert_eq!(kds.requests(), 4);
    // Each Retry-After: 1 was waited (1 s plus at most 10 % jitter).
    let sleeps = clock.sleeps.lock().unwrap().clone();
    let long: Vec<_> = sleeps
        .iter()
        .filter(|d| **d >= Duration::from_secs(1))
        .collect();
    assert_eq!(long.len(), 2, "{sleeps:?}");
    assert!(long.iter().all(|d| **d <= Duration::from_millis(1100)));
}

#[test]
fn retry_after_as_an_http_date_is_honoured() {
    let kds = FakeKds::with_amd_fixtures();
    let when = httpdate_in(Duration::from_secs(20));
    kds.throttle(Throttle {
        fail_first: 1,
        retry_after: Some(when),
        ..Throttle::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::default());
    let fetcher = Kds::with_clock(config(&kds, cache.path()), clock.clone());
    fetcher.fetch(&FetchRequest::vcek(milan(), false)).unwrap();
    let total: Duration = clock.sleeps.lock().unwrap().iter().sum();
    assert!(total >= Duration::from_secs(18), "{total:?}");
    assert!(total <= Duration::from_secs(23), "{total:?}");
}

fn httpdate_in(d: Duration) -> String {
    httpdate::fmt_http_date(SystemTime::now() + d)
}

#[test]
fn an_exhausted_retry_budget_is_a_typed_error() {
    let kds = FakeKds::with_amd_fixtures();
    kds.throttle(Throttle {
        fail_first: 100,
        retry_after: None,
        ..Throttle::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::default());
    let fetcher = Kds::with_clock(config(&kds, cache.path()), clock.clone());
    let e = fetcher
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap_err();
    assert!(e.is_retry_later(), "{e}");
    let KdsError::RetriesExhausted { url, attempts, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(*attempts, 4);
    assert!(url.ends_with("/vcek/v1/Milan/cert_chain"), "{url}");
    assert_eq!(kds.requests(), 4);
    assert!(e.to_string().contains("retry later"), "{e}");
    // Backoff without Retry-After: bounded, jittered.
    let sleeps = clock.sleeps.lock().unwrap().clone();
    assert_eq!(sleeps.len(), 3);
    assert!(sleeps.iter().all(|d| *d <= Duration::from_millis(50)));
}

#[test]
fn a_retry_after_beyond_the_budget_stops_at_once_and_says_when() {
    let kds = FakeKds::with_amd_fixtures();
    kds.throttle(Throttle {
        fail_first: 100,
        retry_after: Some("3600".to_owned()),
        ..Throttle::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::default());
    let fetcher = Kds::with_clock(config(&kds, cache.path()), clock.clone());
    let e = fetcher
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap_err();
    assert_eq!(kds.requests(), 1);
    assert!(e.to_string().contains("wait 3600 s"), "{e}");
    assert!(clock.sleeps.lock().unwrap().is_empty());
    // Every process on the host is held off until then: one whose wait
    // budget cannot cover it ends at once, asking nothing, sleeping not.
    kds.throttle(Throttle::default());
    let other = Kds::with_clock(config(&kds, cache.path()), clock.clone());
    let e = other
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap_err();
    assert!(matches!(e, KdsError::PacedTooLong { .. }), "{e:?}");
    assert!(e.is_retry_later());
    assert_eq!(kds.requests(), 1);
    assert!(clock.sleeps.lock().unwrap().is_empty());
    // One with budget enough waits its turn, and says so first.
    let told = Arc::new(Mutex::new(Vec::new()));
    let mut patient = config(&kds, cache.path());
    patient.client.retry.max_total_wait = Duration::from_secs(7200);
    patient.client.on_wait = Some({
        let told = Arc::clone(&told);
        Arc::new(move |reason: &str, wait| told.lock().unwrap().push((reason.to_owned(), wait)))
    });
    Kds::with_clock(patient, clock.clone())
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap();
    let waited: Duration = clock.sleeps.lock().unwrap().iter().sum();
    assert!(waited >= Duration::from_secs(3590), "{waited:?}");
    let told = told.lock().unwrap();
    assert!(told[0].0.contains("request pacing"), "{told:?}");
    assert!(told[0].1 >= Duration::from_secs(3590), "{told:?}");
}

#[test]
fn a_vcek_for_another_tcb_or_chip_is_refused_and_not_cached() {
    let kds = FakeKds::with_amd_fixtures();
    let cache = tempfile::tempdir().unwrap();
    // KDS (or something posing as it) answers the next TCB's URL with the
    // old VCEK.
    let mut newer = milan();
    newer.tcb.microcode += 1;
    kds.serve(
        &snp_kds::url::vcek_url("", &newer),
        fixture("amd/milan/vcek.der"),
    );
    let fetcher = Kds::new(config(&kds, cache.path()));
    let e = fetcher
        .fetch(&FetchRequest::vcek(newer.clone(), false))
        .unwrap_err();
    let KdsError::VcekMismatch { field, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(*field, "TCB");
    assert!(e.to_string().contains("refusing"), "{e}");
    assert!(!fetcher.cache().vcek_path(&newer).exists());

    let mut other_chip = milan();
    other_chip.hwid = Hwid::parse(&"ab".repeat(64), Product::Milan).unwrap();
    kds.serve(
        &snp_kds::url::vcek_url("", &other_chip),
        fixture("amd/milan/vcek.der"),
    );
    let e = fetcher
        .fetch(&FetchRequest::vcek(other_chip.clone(), false))
        .unwrap_err();
    assert!(
        matches!(
            e,
            KdsError::VcekMismatch {
                field: "hardware ID",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!fetcher.cache().vcek_path(&other_chip).exists());
}

#[test]
fn another_products_chain_is_refused() {
    let kds = FakeKds::start();
    kds.serve(
        "/vcek/v1/Milan/cert_chain",
        chain_pem("amd/genoa/ask.pem", "amd/genoa/ark.pem"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Kds::new(config(&kds, cache.path()));
    let e = fetcher
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap_err();
    assert!(e.to_string().contains("for Genoa, not Milan"), "{e}");
    assert!(!cache.path().join("vcek/milan/cert_chain.pem").exists());
    // A chain whose ASK the ARK did not sign.
    kds.serve(
        "/vcek/v1/Milan/cert_chain",
        chain_pem("amd/genoa/ask.pem", "amd/milan/ark.pem"),
    );
    let e = fetcher
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap_err();
    assert!(matches!(e, KdsError::Verification { .. }), "{e:?}");
}

#[test]
fn a_crl_from_another_ark_is_refused_and_not_cached() {
    let kds = FakeKds::with_amd_fixtures();
    kds.serve("/vcek/v1/Milan/crl", fixture("synthetic/crl.der"));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Kds::new(config(&kds, cache.path()));
    let e = fetcher
        .fetch(&FetchRequest::vcek(milan(), true))
        .unwrap_err();
    let KdsError::Verification { what, problems } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(what, "Milan CRL");
    assert!(problems.contains("CRL"), "{problems}");
    assert!(!cache.path().join("vcek/milan/crl.der").exists());
    // The chain, verified, was cached; the VCEK was not asked for.
    assert!(cache.path().join("vcek/milan/cert_chain.pem").is_file());
    assert_eq!(kds.requests(), 2);
}

#[test]
fn offline_uses_only_the_cache_and_lists_what_is_missing() {
    let kds = FakeKds::with_amd_fixtures();
    let cache = tempfile::tempdir().unwrap();
    let offline = KdsConfig {
        offline: true,
        ..config(&kds, cache.path())
    };
    let e = Kds::new(offline.clone())
        .fetch(&FetchRequest::vcek(milan(), true))
        .unwrap_err();
    let KdsError::Offline { missing } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert!(missing[0].contains("Milan ARK/ASK chain"), "{missing:?}");
    assert!(missing[1].contains("CRL"), "{missing:?}");
    assert!(
        missing[2].contains("bl3-tee0-snp8-ucode115.der"),
        "{missing:?}"
    );
    assert_eq!(kds.requests(), 0);

    Kds::new(config(&kds, cache.path()))
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap();
    let requests = kds.requests();
    let bundle = Kds::new(offline)
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap();
    assert_eq!(kds.requests(), requests);
    assert!(CertTable::parse(&bundle.table).is_ok());
}

#[test]
fn a_missing_crl_is_an_error_unless_left_out() {
    let kds = FakeKds::with_amd_fixtures();
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Kds::new(config(&kds, cache.path()));
    let e = fetcher
        .fetch(&FetchRequest::vcek(milan(), true))
        .unwrap_err();
    assert!(
        matches!(e, KdsError::NotFound { ref url } if url.ends_with("/vcek/v1/Milan/crl")),
        "{e:?}"
    );
    fetcher.fetch(&FetchRequest::vcek(milan(), false)).unwrap();
}

#[test]
fn the_minimum_interval_spaces_real_requests() {
    let kds = FakeKds::with_amd_fixtures();
    let cache = tempfile::tempdir().unwrap();
    let config = KdsConfig {
        min_interval: Duration::from_millis(300),
        ..config(&kds, cache.path())
    };
    let start = std::time::Instant::now();
    Kds::new(config)
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap();
    assert_eq!(kds.requests(), 2);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let port = kds.url().rsplit(':').next().unwrap().to_owned();
    assert!(
        cache
            .path()
            .join(format!("pacing/127.0.0.1_{port}"))
            .is_file()
    );
}

#[test]
fn cache_entries_gone_bad_are_fetched_again_never_waited_on() {
    let kds = FakeKds::with_amd_fixtures();
    let cache = tempfile::tempdir().unwrap();
    let chain = cache.path().join("vcek/milan/cert_chain.pem");
    std::fs::create_dir_all(chain.parent().unwrap()).unwrap();
    // A FIFO nobody writes to: opening it for reading would block.
    let path = std::ffi::CString::new(chain.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    // Another product's chain where Milan's should be.
    let vcek_dir = cache
        .path()
        .join(format!("vcek/milan/{}", milan().hwid.to_hex()));
    std::fs::create_dir_all(&vcek_dir).unwrap();
    std::fs::write(
        vcek_dir.join(format!("{}.der", milan().tcb.cache_key())),
        fixture("amd/turin/vcek.der"),
    )
    .unwrap();
    let bundle = Kds::new(config(&kds, cache.path()))
        .fetch(&FetchRequest::vcek(milan(), false))
        .unwrap();
    assert_eq!(kds.requests(), 2, "{:?}", kds.log());
    assert!(std::fs::symlink_metadata(&chain).unwrap().is_file());
    assert_eq!(
        bundle.signer.unwrap().1,
        snp_certs_verify::x509::to_der(
            &fixture("amd/milan/vcek.der"),
            snp_certs_verify::x509::DocumentKind::Certificate
        )
        .unwrap()
    );
}
