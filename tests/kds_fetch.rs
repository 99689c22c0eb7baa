//! `snp-certs fetch` against a fake KDS on 127.0.0.1 serving AMD's real
//! certificates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kds_support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kds_support::*;
use snp_certs::CertKind;
use snp_certs::table::CertTable;
use snp_kds::identity::report::synthetic_report;
use snp_kds::{Hwid, PlatformId, Product, TcbLevels};

#[test]
fn fetch_writes_a_table_verify_accepts_and_a_repeat_asks_kds_nothing() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("certs.bin");
    let first = run(fetch_milan(&kds, &cache).arg("-o").arg(&out));
    assert!(first.status.success());
    assert!(stdout(&first).contains("KDS requests: 2"));
    assert!(stdout(&first).contains("chain: verified (Milan, VCEK)"));
    assert_eq!(kds.requests(), 2);
    assert!(verifies(&out));
    let bytes = fs::read(&out).unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert_eq!(
        table.get(CertKind::Vcek).unwrap().data,
        fixture_der("amd/milan/vcek.der")
    );

    let again = dir.path().join("again.bin");
    let second = run(fetch_milan(&kds, &cache).arg("-o").arg(&again));
    assert!(second.status.success());
    assert!(stdout(&second).contains("KDS requests: 0"));
    assert!(stdout(&second).contains("from the cache"));
    assert_eq!(kds.requests(), 2, "{:?}", kds.log());
    assert_eq!(fs::read(&again).unwrap(), bytes);

    // An existing output is refused before anything is asked.
    let refused = run(fetch_milan(&kds, &cache).arg("-o").arg(&out));
    assert_fails_with(&refused, 2, "exists");
}

#[test]
fn fetch_from_a_report_and_into_a_snphost_directory() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (hwid, tcb) = milan();
    let id = PlatformId {
        product: Product::Milan,
        hwid: Hwid::parse(&hwid, Product::Milan).unwrap(),
        tcb: TcbLevels::parse(&tcb, Product::Milan).unwrap(),
    };
    let report = dir.path().join("report.bin");
    fs::write(&report, synthetic_report(&id, 3, Some((0x19, 0x01)))).unwrap();
    let certs = dir.path().join("certs");
    let out = run(snp_certs("fetch", &kds, &cache)
        .arg("--from-report")
        .arg(&report)
        .arg("--no-crl")
        .arg("--dir")
        .arg(&certs));
    assert!(out.status.success());
    // One encoding, DER by default, named as snphost and snpguest do.
    let mut names: Vec<String> = fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ark.der", "ask.der", "vcek.der"]);
    assert_eq!(
        fs::read(certs.join("vcek.der")).unwrap(),
        fixture_der("amd/milan/vcek.der")
    );
    // PEM into that directory would mix encodings: refused before asking.
    let requests = kds.requests();
    let out = run(snp_certs("fetch", &kds, &cache)
        .arg("--from-report")
        .arg(&report)
        .args(["--no-crl", "--encoding", "pem", "--dir"])
        .arg(&certs));
    assert_fails_with(&out, 2, "use --encoding der");
    assert_eq!(kds.requests(), requests);
    // PEM into a directory of its own: all PEM.
    let pem = dir.path().join("pem");
    let out = run(snp_certs("fetch", &kds, &cache)
        .arg("--from-report")
        .arg(&report)
        .args(["--no-crl", "--encoding", "pem", "--dir"])
        .arg(&pem));
    assert!(out.status.success());
    for name in ["ark.pem", "ask.pem", "vcek.pem"] {
        let text = fs::read_to_string(pem.join(name)).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
    }
    // The directory imports into a table that verifies.
    let table = dir.path().join("imported.bin");
    let imported = run(snp_certs_bin()
        .arg("import-dir")
        .arg(&certs)
        .arg("-o")
        .arg(&table)
        .args(["--at", AT]));
    assert!(imported.status.success());
    assert!(verifies(&table));
}

#[test]
fn too_many_requests_is_waited_out() {
    let kds = FakeKds::with_amd_fixtures();
    // The chain and the VCEK are asked for back to back: the second request
    // comes too soon and is told to come back in a second.
    kds.throttle(Throttle {
        min_gap: Duration::from_millis(500),
        retry_after: Some("1".to_owned()),
        ..Throttle::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs.bin");
    let start = Instant::now();
    let result = run(fetch_milan(&kds, &dir.path().join("cache"))
        .arg("-o")
        .arg(&out));
    assert!(result.status.success());
    assert!(stderr(&result).contains("HTTP 429 Too Many Requests; retrying in 1."));
    assert!(kds.throttled() >= 1);
    assert_eq!(kds.requests() as u32, 2 + kds.throttled());
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(verifies(&out));
}

#[test]
fn an_exhausted_retry_budget_exits_69_and_names_what_to_retry() {
    let kds = FakeKds::with_amd_fixtures();
    kds.throttle(Throttle {
        fail_first: 100,
        retry_after: Some("1".to_owned()),
        ..Throttle::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs.bin");
    let result = run(fetch_milan(&kds, &dir.path().join("cache"))
        .args(["--max-attempts", "2"])
        .arg("-o")
        .arg(&out));
    assert_eq!(result.status.code(), Some(69));
    let err = stderr(&result);
    assert!(err.contains("/vcek/v1/Milan/cert_chain"), "{err}");
    assert!(err.contains("after 2 attempt(s)"), "{err}");
    assert!(err.contains("run the same command again later"), "{err}");
    assert_eq!(kds.requests(), 2);
    assert!(!out.exists());
}

#[test]
fn a_vcek_for_another_tcb_is_refused_with_exit_1() {
    let kds = FakeKds::with_amd_fixtures();
    let (hwid, tcb) = milan();
    let mut newer = TcbLevels::parse(&tcb, Product::Milan).unwrap();
    newer.microcode += 1;
    let id = PlatformId {
        product: Product::Milan,
        hwid: Hwid::parse(&hwid, Product::Milan).unwrap(),
        tcb: newer,
    };
    kds.serve(
        &snp_kds::url::vcek_url("", &id),
        fixture("amd/milan/vcek.der"),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("certs.bin");
    let result = run(snp_certs("fetch", &kds, &cache)
        .args(["--product", "milan", "--hwid", &hwid, "--no-crl"])
        .args(["--tcb", &newer.to_string()])
        .arg("-o")
        .arg(&out));
    assert_fails_with(&result, 1, "refusing");
    assert!(!out.exists());
    assert!(!cache.join(format!("vcek/milan/{hwid}")).exists());
}

#[test]
fn offline_says_what_is_missing_and_exits_66() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let result = run(fetch_milan(&kds, &dir.path().join("cache"))
        .arg("--offline")
        .arg("-o")
        .arg(dir.path().join("certs.bin")));
    assert_eq!(result.status.code(), Some(66));
    let err = stderr(&result);
    assert!(err.contains("Milan ARK/ASK chain"), "{err}");
    assert!(err.contains("cert_chain.pem"), "{err}");
    assert!(err.contains("bl3-tee0-snp8-ucode115.der"), "{err}");
    assert_eq!(kds.requests(), 0);
}

/// Where the firmware cannot be asked: no `/dev/sev`, on every host (see
/// [`without_dev_sev`]).
#[test]
fn from_host_without_dev_sev_fails_clearly() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let result = run(&mut without_dev_sev(
        snp_certs("fetch", &kds, &dir.path().join("cache"))
            .arg("--from-host")
            .arg("-o")
            .arg(dir.path().join("certs.bin")),
    ));
    assert_fails_with(&result, 2, "Cannot open /dev/sev");
    assert_eq!(kds.requests(), 0);
}

#[test]
fn a_vlek_chain_comes_from_the_vlek_tree_and_must_be_for_the_product() {
    let kds = FakeKds::start();
    // The synthetic VLEK chain names product line "Testonly": served as
    // Milan's, it must be refused.
    kds.serve(
        "/vlek/v1/Milan/cert_chain",
        chain_pem("synthetic/asvk.pem", "synthetic/ark.pem"),
    );
    let dir = tempfile::tempdir().unwrap();
    let vlek = fake_kds::fixtures().join("synthetic/vlek.der");
    let out = dir.path().join("certs.bin");
    let result = run(snp_certs("fetch", &kds, &dir.path().join("cache"))
        .args(["--product", "milan", "--no-crl"])
        .arg("--vlek")
        .arg(&vlek)
        .arg("-o")
        .arg(&out));
    assert_fails_with(&result, 1, "for Testonly, not Milan");
    assert_eq!(kds.log(), ["/vlek/v1/Milan/cert_chain"]);
    assert!(!out.exists());
}

/// `snp-certs fetch` for the Milan fixture chip without `--cache`, as
/// user 65534 (nobody) when the tests run as root, else as the user they
/// run as: either way a user who is not root.
fn fetch_as_nobody(kds: &FakeKds, home: &Path, tmp: &Path, out: &Path) -> std::process::Output {
    let mut fetch = snp_certs_at("fetch", kds);
    fetch
        .args(milan_platform())
        .arg("--no-crl")
        .arg("-o")
        .arg(out)
        .env("HOME", home)
        .env("TMPDIR", tmp)
        .env_remove("XDG_CACHE_HOME");
    // SAFETY: geteuid() has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return run(&mut fetch);
    }
    let mut nobody = Command::new("setpriv");
    nobody.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    run(&mut through(Some(nobody), &fetch))
}

#[test]
fn fetch_works_for_a_user_who_is_not_root_with_the_default_cache() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let tmp = dir.path().join("tmp");
    fs::create_dir(&home).unwrap();
    fs::create_dir(&tmp).unwrap();
    // SAFETY: geteuid() has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let root = euid == 0;
    if root {
        for d in [dir.path(), &home, &tmp] {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
    }
    // The default: ~/.cache/snp-certs/kds.
    let out = home.join("certs.bin");
    let result = fetch_as_nobody(&kds, &home, &tmp, &out);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(verifies(&out));
    let cache = home.join(".cache/snp-certs/kds");
    assert!(cache.join("vcek/milan/cert_chain.pem").is_file());
    assert!(cache.join("pacing").is_dir());
    assert_eq!(kds.requests(), 2);

    // A home that does not exist (as `su nobody` gives, /nonexistent):
    // a private directory under TMPDIR instead.
    let again = tmp.join("again.bin");
    let result = fetch_as_nobody(&kds, Path::new("/nonexistent"), &tmp, &again);
    assert!(result.status.success(), "{}", stderr(&result));
    let uid = if root { 65534 } else { euid };
    let private = tmp.join(format!("snp-certs-{uid}"));
    assert!(private.join("kds/vcek/milan/cert_chain.pem").is_file());
    let meta = fs::metadata(&private).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), uid);
}

#[test]
fn an_unwritable_cache_names_the_cache_option() {
    // Nobody, root included, can make a directory in /proc.
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let result = run(fetch_milan(&kds, Path::new("/proc/snp-certs-cache"))
        .arg("-o")
        .arg(dir.path().join("certs.bin")));
    assert_fails_with(&result, 2, "--cache DIR");
}

#[test]
fn bergamo_and_siena_are_genoa_in_any_case() {
    let kds = FakeKds::with_amd_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let hwid = "ab".repeat(64);
    for product in ["bergamo", "SIENA", "Genoa"] {
        let result = run(snp_certs("fetch", &kds, &dir.path().join("cache"))
            .args([
                "--product",
                product,
                "--hwid",
                &hwid,
                "--tcb",
                "bl=1,tee=0,snp=2,ucode=3",
            ])
            .arg("--offline")
            .arg("-o")
            .arg(dir.path().join("certs.bin")));
        assert_eq!(result.status.code(), Some(66), "{product}");
        assert!(stderr(&result).contains("Genoa ARK/ASK chain"), "{product}");
        assert!(stderr(&result).contains("vcek/genoa/"), "{product}");
    }
    let result = run(snp_certs("fetch", &kds, &dir.path().join("cache")).args([
        "--product",
        "rome",
        "--offline",
        "-o",
        "x",
    ]));
    assert_fails_with(&result, 2, "milan, genoa, bergamo, siena or turin");
}

#[test]
fn vcek_url_prints_the_kds_url_of_a_vcek() {
    let (hwid, tcb) = milan();
    let out = run(snp_certs_bin().args([
        "vcek-url",
        "--product",
        "milan",
        "--hwid",
        &hwid,
        "--tcb",
        &tcb,
    ]));
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "https://kdsintf.amd.com/vcek/v1/Milan/{hwid}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
        )
    );
    // Through a fleet's caching proxy, for a Bergamo (a Genoa part).
    let out = run(snp_certs_bin()
        .args(["vcek-url", "--kds", "http://kds-cache.internal:8080/"])
        .args(["--product", "bergamo", "--hwid", &"cd".repeat(64)])
        .args(["--tcb", "0xdb18000000000004"]));
    assert!(out.status.success());
    assert!(
        stdout(&out).starts_with("http://kds-cache.internal:8080/vcek/v1/Genoa/cdcd"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("?blSPL=04&teeSPL=00&snpSPL=24&ucodeSPL=219"));
    // This host's own VCEK: from the firmware, here without /dev/sev on
    // any host (see `without_dev_sev`).
    let out = run(&mut without_dev_sev(snp_certs_bin().arg("vcek-url")));
    assert_fails_with(&out, 2, "Cannot open /dev/sev");
}

#[test]
fn a_hostile_retry_after_ends_the_fetch_and_holds_the_host_off_an_hour_at_most() {
    let kds = FakeKds::with_amd_fixtures();
    kds.throttle(Throttle {
        fail_first: 100,
        retry_after: Some(u64::MAX.to_string()),
        ..Throttle::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let start = Instant::now();
    let result = run(fetch_milan(&kds, &cache)
        .arg("-o")
        .arg(dir.path().join("a.bin")));
    assert_eq!(result.status.code(), Some(69));
    assert!(!stderr(&result).contains("panicked"), "{}", stderr(&result));
    assert_eq!(kds.requests(), 1);
    // The next fetch on this host is told when its turn is, at most an
    // hour ahead, and asks nothing.
    kds.throttle(Throttle::default());
    let result = run(fetch_milan(&kds, &cache)
        .arg("-o")
        .arg(dir.path().join("b.bin")));
    assert_eq!(result.status.code(), Some(69));
    let err = stderr(&result);
    assert!(err.contains("request pacing file"), "{err}");
    let secs: u64 = err
        .split(" in ")
        .nth(1)
        .and_then(|s| s.split(" s ").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!((3500..=3600).contains(&secs), "{secs}");
    assert_eq!(kds.requests(), 1);
    assert!(start.elapsed() < Duration::from_secs(60));
}
