//! `snp-certs probe --api-socket`: what a running VMM's guest would get
//! right now, under that VM's own configuration (its certs file,
//! certs-timeout, busy budget and on-error answer, read with `GET
//! vm.snp-certs`), including after its file went bad under it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::api::{ApiVmm, certs_file};

fn probe(socket: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snp-certs"))
        .arg("probe")
        .arg("--api-socket")
        .arg(socket)
        .args(extra)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn vm_with(dir: &Path, snp: &str) -> (ApiVmm, std::path::PathBuf) {
    let (path, _) = certs_file(dir, "certs.bin", 3);
    let args = vec![
        "--cpus".to_owned(),
        "boot=1".to_owned(),
        "--snp".to_owned(),
        format!("certs-file={}{snp}", path.display()),
    ];
    (ApiVmm::start(dir, "mock", &args), path)
}

#[test]
fn probe_follows_the_vms_on_error_answer_when_its_file_goes_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (busy_vm, path) = vm_with(dir.path(), ",on-error=busy,busy-budget=5000");
    let other = tempfile::tempdir().unwrap();
    let (empty_vm, other_path) = vm_with(other.path(), "");

    // A good file: certificates, whatever the answer.
    let out = probe(&busy_vm.socket, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("on-error=busy"), "{text}");
    assert!(text.contains("busy-budget 5000 ms"), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .starts_with("certificates (ret 0"),
        "{text}"
    );

    // Both files go bad under their running VMs.
    fs::write(&path, b"garbage").unwrap();
    fs::write(&other_path, b"garbage").unwrap();
    let out = probe(&busy_vm.socket, &["--json"]);
    assert_eq!(out.status.code(), Some(4));
    let v = json(&out);
    assert_eq!(v["vm"]["on_error"], "busy");
    assert_eq!(v["vm"]["busy_budget"], 5000);
    assert_eq!(v["outcome"], "busy");
    assert_eq!(v["ret"], 11);
    assert_eq!(v["reason"], "file-invalid");
    let out = probe(&empty_vm.socket, &["--json"]);
    assert_eq!(out.status.code(), Some(6));
    let v = json(&out);
    assert_eq!(v["vm"]["on_error"], "empty");
    assert_eq!(v["outcome"], "delivered");
    assert_eq!(v["ret"], 0);
    assert_eq!(v["bytes"], 24);
    assert_eq!(v["fallback"], true);

    // Another file under the VM's configuration.
    let good = dir.path().join("good.bin");
    fs::write(&good, support::table(9)).unwrap();
    let out = probe(&busy_vm.socket, &[good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));

    // --on-error contradicts a VM's own answer.
    let out = probe(&busy_vm.socket, &["--on-error", "empty"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn probe_of_a_socket_nobody_serves_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = probe(&dir.path().join("none.sock"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("GET vm.snp-certs"), "{err}");
}
