//! Helpers for the `snp-certs fetch` and `refresh` end-to-end tests: the
//! fake KDS (`test_support::fake_kds`, shared with `snp-kds/tests`), the fixtures' identities, and
//! running the binary against them.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub use test_support::fake_kds;

use std::path::Path;
use std::process::{Command, Output};

pub use fake_kds::{FakeKds, Throttle, chain_pem, fixture, fixture_der, vcek_identity, vcek_tcb};

/// 2027-06-01T00:00:00Z: every fixture certificate is valid then.
pub const AT: &str = "1811808000";

/// The Milan fixture VCEK's hardware ID (hex) and TCB (`bl=…`).
pub fn milan() -> (String, String) {
    let rel = "amd/milan/vcek.der";
    (vcek_identity(rel).0, vcek_tcb(rel))
}

/// `snp-certs` with the options every KDS test needs: the fake KDS, a
/// private cache, no pacing delay, validity checked at [`AT`].
pub fn snp_certs(sub: &str, kds: &FakeKds, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snp-certs"));
    c.arg(sub)
        .args(["--kds", &kds.url()])
        .arg("--cache")
        .arg(cache)
        .args(["--min-interval-ms", "0", "--at", AT])
        // The fake KDS is local: no proxy from the environment.
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy");
    c
}

/// `snp-certs fetch` for the Milan fixture chip, without CRL.
pub fn fetch_milan(kds: &FakeKds, cache: &Path) -> Command {
    let (hwid, tcb) = milan();
    let mut c = snp_certs("fetch", kds, cache);
    c.args([
        "--product",
        "milan",
        "--hwid",
        &hwid,
        "--tcb",
        &tcb,
        "--no-crl",
    ]);
    c
}

/// Runs and returns the output, printing it for failed assertions.
pub fn run(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    eprintln!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `snp-certs verify FILE --at AT` succeeds.
pub fn verifies(path: &Path) -> bool {
    Command::new(env!("CARGO_BIN_EXE_snp-certs"))
        .arg("verify")
        .arg(path)
        .args(["--at", AT])
        .status()
        .unwrap()
        .success()
}
