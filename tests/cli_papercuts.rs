//! Operator papercuts that must not come back: closed pipes, JSON output
//! and errors, certificates given where a table is wanted, and the file
//! names snphost and snpguest use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod certs_support;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use certs_support::{AT, build_synthetic_vlek, closed_pipe, fixture, snp_certs, stderr};
use serde_json::Value;

fn example_table() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/certs.bin")
}

fn snp_vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snp-vmm"))
}

/// Runs `cmd` with a stdout whose reader is already gone, as in
/// `cmd | head -0`, and checks it ended as `grep` does there: killed by
/// SIGPIPE, without a panic message.
fn assert_quiet_on_closed_pipe(mut cmd: Command) {
    let writer = closed_pipe();
    let out = cmd.stdout(writer).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{cmd:?}: {err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{cmd:?}: {:?}, stderr {err}",
        out.status
    );
}

#[test]
fn closed_pipes_end_quietly() {
    let mut verify = snp_certs();
    verify.arg("verify").arg(example_table()).arg("--json");
    assert_quiet_on_closed_pipe(verify);
    let mut inspect = snp_certs();
    inspect.arg("inspect").arg(example_table());
    assert_quiet_on_closed_pipe(inspect);
    let mut vmm = snp_vmm();
    vmm.args([
        "--hypervisor",
        "mock",
        "--snp",
        "doorbell=on",
        "--payload",
        "attest,requests=2",
    ]);
    assert_quiet_on_closed_pipe(vmm);
    // The host report, text and JSON: no "Broken pipe", no exit 2.
    for json in [false, true] {
        let mut check = snp_vmm();
        check.arg("--check-host");
        if json {
            check.arg("--json");
        }
        assert_quiet_on_closed_pipe(check);
    }
    let mut url = snp_certs();
    url.args([
        "vcek-url",
        "--product",
        "turin",
        "--hwid",
        "0102030405060708",
    ])
    .args(["--tcb", "fmc=1,bl=2,tee=3,snp=4,ucode=5"]);
    assert_quiet_on_closed_pipe(url);
}

#[test]
fn each_binary_opens_its_help_with_its_own_purpose() {
    for (binary, purpose) in [
        (
            env!("CARGO_BIN_EXE_snp-vmm"),
            "Run a VM that answers SEV-SNP certificate requests from a certs file",
        ),
        (
            env!("CARGO_BIN_EXE_snp-remote"),
            "Drive a running snp-vmm through its API socket",
        ),
        (
            env!("CARGO_BIN_EXE_snp-certs"),
            "Build, inspect, verify, update and probe SEV-SNP certificate tables",
        ),
    ] {
        let out = Command::new(binary).arg("--help").output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with(purpose), "{binary}: {first}");
        // Not the workspace's description.
        assert!(
            !text.contains("The snp-vmm VMM, the snp-remote API client"),
            "{binary}"
        );
    }
}

#[test]
fn snp_vmm_help_names_what_this_build_runs() {
    let out = snp_vmm().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("refused by this build"), "{text}");
    for word in ["mock-snp", "snp-attest", "c_bit=N", "sev_snp=on|off"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn an_event_monitor_given_a_bare_path_says_path_equals() {
    let out = snp_vmm()
        .args(["--event-monitor", "/var/log/snp-vmm.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("write path=/var/log/snp-vmm.jsonl"), "{err}");
}

fn json_stderr(out: &Output) -> Value {
    let text = stderr(out);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn snp_vmm_json_summary_and_errors() {
    let out = snp_vmm()
        .args([
            "--hypervisor",
            "mock",
            "--json",
            "--snp",
            "doorbell=on",
            "--payload",
            "attest,requests=3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    // One JSON object, nothing else.
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["hypervisor"], "mock");
    assert_eq!(v["reports"], 3);
    assert_eq!(v["matched"], 3);
    assert_eq!(v["success"], true);
    assert_eq!(v["counters"]["requests"]["failed"], 0);
    assert!(
        v["counters"]["requests"]["delivered"].as_u64().unwrap() >= 3,
        "{v}"
    );

    let out = snp_vmm()
        .args(["--hypervisor", "mock", "--json", "--cpus", "boot=2,max=3"])
        .args(["--payload", "attest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let chain = json_stderr(&out)["error"].clone();
    let chain: Vec<&str> = chain
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        chain
            .iter()
            .any(|m| m.contains("cpus.max_vcpus must equal cpus.boot_vcpus (2)")),
        "{chain:?}"
    );

    let out = snp_vmm()
        .args(["--hypervisor", "mock", "--platform", "sev_snp=on"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("KVM does not offer the SNP VM type (KVM_X86_SNP_VM)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_certificate_is_not_a_table() {
    let out = snp_certs()
        .arg("inspect")
        .arg(fixture("amd/milan/ark.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "is a PEM certificate, not a certificate table; use `snp-certs build` or `import-dir`"
        ),
        "{}",
        stderr(&out)
    );
    for (file, what) in [
        ("amd/milan/vcek.der", "a DER certificate"),
        ("synthetic/crl.der", "a DER CRL"),
    ] {
        let out = snp_certs()
            .args(["inspect", "--json"])
            .arg(fixture(file))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        // Under --json the error is JSON too.
        let v = json_stderr(&out);
        let first = v["error"][0].as_str().unwrap();
        assert!(first.contains(what), "{file}: {v}");
    }
}

#[test]
fn export_names_the_vlek_signer_asvk_and_refuses_mixed_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = d.join("vlek.bin");
    let out = build_synthetic_vlek(&table)
        .arg("--trust-root")
        .arg(fixture("synthetic/ark.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = snp_certs()
        .arg("export")
        .arg(&table)
        .arg(d.join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.join("out/asvk.der").is_file());
    assert!(!d.join("out/ask.der").exists());
    // The exported directory imports back to the same table.
    let again = d.join("again.bin");
    let out = snp_certs()
        .arg("import-dir")
        .arg(d.join("out"))
        .arg("--trust-root")
        .arg(fixture("synthetic/ark.pem"))
        .args(["--at", AT, "-o"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&again).unwrap(), fs::read(&table).unwrap());

    // PEM into a directory of DER files: refused, nothing written, and
    // the message names the one encoding that fits.
    for pem in [&["--encoding", "pem"][..], &["--pem"][..]] {
        let out = snp_certs()
            .arg("export")
            .arg(&table)
            .arg(d.join("out"))
            .args(pem)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains("would mix encodings"), "{err}");
        assert!(err.contains("use --encoding der"), "{err}");
        assert!(!d.join("out/ark.pem").exists());
    }
    // Into a directory of its own: every file PEM.
    let out = snp_certs()
        .arg("export")
        .arg(&table)
        .arg(d.join("pem"))
        .args(["--encoding", "pem"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut names: Vec<String> = fs::read_dir(d.join("pem"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ark.pem", "asvk.pem", "vlek.pem"]);
    assert!(
        fs::read(d.join("pem/vlek.pem"))
            .unwrap()
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );
}

#[test]
fn import_dir_takes_snphost_crl_and_snpguest_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["ark.pem", "ask.pem", "vcek.der"] {
        fs::copy(fixture(&format!("amd/milan/{name}")), d.join(name)).unwrap();
    }
    fs::copy(fixture("synthetic/crl.der"), d.join("milan.crl")).unwrap();
    let guid = "3a9c5e9e-6f3b-4f0e-9b1d-2c1f0e5d7a11";
    fs::write(d.join(format!("other-{guid}.bin")), b"extra entry").unwrap();
    let out = snp_certs()
        .arg("import-dir")
        .arg(d)
        .args(["--allow-unverified", "--at", AT, "-o"])
        .arg(d.join("t.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("ignoring"), "{}", stderr(&out));
    let out = snp_certs()
        .args(["inspect", "--json", "--at", AT])
        .arg(d.join("t.bin"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["kind"] == "crl"),
        "no CRL: {entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["guid"] == guid),
        "no extra entry: {entries:?}"
    );
}
