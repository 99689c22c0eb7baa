//! Helpers for the `snp-certs fetch` and `refresh` end-to-end tests: the
//! fake KDS (`test_support::fake_kds`, shared with `snp-kds/tests`), the
//! fixtures' identities, running the binary against them, and running it
//! where `/dev/sev` does not exist ([`without_dev_sev`]).

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub use test_support::fake_kds;

mod no_dev_sev;

use std::path::Path;
use std::process::{Command, Output};

pub use no_dev_sev::without_dev_sev;

pub use fake_kds::{FakeKds, Throttle, chain_pem, fixture, fixture_der, vcek_identity, vcek_tcb};

/// 2027-06-01T00:00:00Z: every fixture certificate is valid then.
pub const AT: &str = "1811808000";

/// The Milan fixture VCEK's hardware ID (hex) and TCB (`bl=…`).
pub fn milan() -> (String, String) {
    let rel = "amd/milan/vcek.der";
    (vcek_identity(rel).0, vcek_tcb(rel))
}

/// `--product milan --hwid HEX --tcb TCB`: the Milan fixture chip.
pub fn milan_platform() -> [String; 6] {
    let (hwid, tcb) = milan();
    [
        "--product".into(),
        "milan".into(),
        "--hwid".into(),
        hwid,
        "--tcb".into(),
        tcb,
    ]
}

/// The `snp-certs` binary, with no proxy from the environment (the fake
/// KDS is local).
pub fn snp_certs_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snp-certs"));
    for proxy in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        c.env_remove(proxy);
    }
    c
}

/// `snp-certs SUB --kds URL`, no pacing delay, validity checked at
/// [`AT`]: the options every KDS test needs but the cache.
pub fn snp_certs_at(sub: &str, kds: &FakeKds) -> Command {
    let mut c = snp_certs_bin();
    c.arg(sub)
        .args(["--kds", &kds.url()])
        .args(["--min-interval-ms", "0", "--at", AT]);
    c
}

/// [`snp_certs_at`] with the private cache `cache`.
pub fn snp_certs(sub: &str, kds: &FakeKds, cache: &Path) -> Command {
    let mut c = snp_certs_at(sub, kds);
    c.arg("--cache").arg(cache);
    c
}

/// `snp-certs fetch` for the Milan fixture chip, without CRL.
pub fn fetch_milan(kds: &FakeKds, cache: &Path) -> Command {
    let mut c = snp_certs("fetch", kds, cache);
    c.args(milan_platform()).arg("--no-crl");
    c
}

/// `snp-certs refresh FILE` for the Milan fixture chip, without CRL.
pub fn refresh_milan(kds: &FakeKds, cache: &Path, file: &Path) -> Command {
    let mut c = snp_certs("refresh", kds, cache);
    c.arg(file).args(milan_platform()).arg("--no-crl");
    c
}

/// A copy of `cmd` (program, arguments, environment, directory) run
/// through `prefix`, a command that executes the program and arguments
/// appended to it (`setpriv ... --`, `unshare ... -- sh -c 'exec "$0"
/// "$@"'`); with no prefix, a copy of `cmd` itself.
pub fn through(prefix: Option<Command>, cmd: &Command) -> Command {
    let mut c = match prefix {
        Some(mut prefix) => {
            prefix.arg(cmd.get_program());
            prefix
        }
        None => Command::new(cmd.get_program()),
    };
    c.args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => c.env(key, value),
            None => c.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}

/// Asserts that `out` exited with `code` and said `needle` on stderr.
pub fn assert_fails_with(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
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
    snp_certs_bin()
        .arg("verify")
        .arg(path)
        .args(["--at", AT])
        .status()
        .unwrap()
        .success()
}
