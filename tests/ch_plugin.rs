//! Cloud Hypervisor with the patch series of `integrations/cloud-hypervisor/`:
//! the patched `cloud-hypervisor` with its API socket and the patched
//! `ch-remote` set, read and refuse certs files on a created VM, with real
//! files, a real management lock (`snp-certs lock`) and Cloud Hypervisor's
//! own seccomp filters; an SEV-SNP VM is refused cleanly on a host without
//! SEV-SNP.
//!
//! The tests are ignored unless asked for (the runner reports them as
//! skipped, with the reason): `integrations/cloud-hypervisor/build-and-test.sh`
//! builds the patched binaries and runs them with `--ignored`, naming the
//! binaries' directory in `SNP_CH_BIN_DIR`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ch_support;
mod support;

use std::fs;
use std::path::Path;

use ch_support::{ChVmm, ch_bin, host_creates_snp_vms, run, snp_igvm};
use serde_json::{Value, json};
use support::api::{DEADLINE_SECS, curl};
use support::{ManagementLock, poll};

/// An SEV-SNP VM's configuration as `vm.create` takes it, with `snp_certs`.
fn snp_vm(dir: &Path, snp_certs: Value) -> Value {
    json!({
        "payload": {"igvm": snp_igvm(dir)},
        "memory": {"size": 268435456},
        "platform": {"sev_snp": true},
        "snp_certs": snp_certs,
    })
}

/// The example certificate table shipped in docs/examples, copied.
fn example_table(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("certs.bin");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/certs.bin"),
        &path,
    )
    .unwrap();
    path
}

#[test]
#[ignore = "needs the patched Cloud Hypervisor binaries: run integrations/cloud-hypervisor/build-and-test.sh (it sets SNP_CH_BIN_DIR)"]
fn ch_plugin_help_names_the_certs_options() {
    let ch = run(&ch_bin("cloud-hypervisor"), &["--help"]);
    assert_eq!(ch.code, 0, "{ch:?}");
    let remote = run(&ch_bin("ch-remote"), &["--help"]);
    assert_eq!(remote.code, 0, "{remote:?}");
    assert!(ch.stdout.contains("--snp-certs"), "{}", ch.stdout);
    assert!(remote.stdout.contains("snp-certs"), "{}", remote.stdout);
    for option in [
        "certs_file",
        "certs_timeout",
        "busy_budget",
        "on_error",
        "allow_large",
    ] {
        assert!(
            ch.stdout.contains(option),
            "cloud-hypervisor --help: {option}"
        );
        assert!(remote.stdout.contains(option), "ch-remote --help: {option}");
    }
}

#[test]
#[ignore = "needs the patched Cloud Hypervisor binaries: run integrations/cloud-hypervisor/build-and-test.sh (it sets SNP_CH_BIN_DIR)"]
fn ch_plugin_created_vm_takes_a_valid_certs_file_and_refuses_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let valid = example_table(dir.path());
    let garbage = dir.path().join("garbage.bin");
    fs::write(&garbage, b"certificates, honestly").unwrap();
    let vmm = ChVmm::start(dir.path());
    vmm.create(&snp_vm(dir.path(), json!({"certs_timeout": 200})));

    let before = vmm.remote_json(&["snp-certs"]);
    assert_eq!(before["config"]["certs_file"], Value::Null, "{before}");
    assert_eq!(before["config"]["certs_timeout"], 200, "{before}");
    assert_eq!(before["serving"], false, "a created VM serves nothing yet");

    // A valid table is read under its lock and accepted.
    let set = format!("certs_file={}", valid.display());
    let accepted = vmm.remote_json(&["snp-certs", &set]);
    assert_eq!(accepted["config"]["certs_file"], valid.to_str().unwrap());
    assert_eq!(accepted["config"]["certs_timeout"], 200, "untouched");
    assert_eq!(vmm.remote_json(&["snp-certs"]), accepted);
    let info = vmm.remote_json(&["info"]);
    assert_eq!(
        info["config"]["snp_certs"]["certs_file"],
        valid.to_str().unwrap(),
        "the VM boots with it"
    );

    // Garbage is refused, saying why, and changes nothing.
    let refused = vmm.remote(&["snp-certs", &format!("certs_file={}", garbage.display())]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("is not a valid certificate table"),
        "{}",
        refused.stderr
    );
    assert_eq!(vmm.remote_json(&["snp-certs"]), accepted);

    // The same refusals over HTTP, with their statuses.
    let put = |body: &str| {
        curl(
            &vmm.socket,
            dir.path(),
            "vm.snp-certs",
            &["-X", "PUT", "-d", body],
        )
    };
    let answer = put(&json!({"certs_file": garbage}).to_string());
    assert_eq!(answer.status, 400);
    assert!(
        answer
            .json()
            .to_string()
            .contains("is not a valid certificate table")
    );
    let answer = put(r#"{"certs_file": "certs.bin"}"#);
    assert_eq!(answer.status, 400);
    assert!(
        answer
            .json()
            .to_string()
            .contains("must be an absolute path")
    );
    let answer = put(&json!({"certs_file": dir.path().join("missing.bin")}).to_string());
    assert_eq!(answer.status, 400);
    assert!(answer.json().to_string().contains("does not exist"));
    let answer = put(r#"{"certs_timeout": 5000}"#);
    assert_eq!(answer.status, 400);
    assert!(answer.json().to_string().contains("above the maximum"));
    let answer = put(r#"{"certs_path": "/var/lib/snp/certs.bin"}"#);
    assert_eq!(answer.status, 400);
    assert!(answer.json().to_string().contains("unknown field"));
    assert_eq!(vmm.remote_json(&["snp-certs"]), accepted);

    // While a management tool holds the file locked for an update: 409,
    // and the change goes through once the tool is done.
    let lock = ManagementLock::take(&valid);
    let answer = put(&json!({"certs_file": valid}).to_string());
    assert_eq!(answer.status, 409, "{}", answer.json());
    assert!(
        answer
            .json()
            .to_string()
            .contains("Cannot take the shared lock")
    );
    lock.release();
    let answer = put(&json!({"certs_file": valid, "on_error": "busy"}).to_string());
    assert_eq!(answer.status, 200, "{}", answer.json());
    assert_eq!(answer.json()["config"]["on_error"], "busy");

    // Serving no file is a change like any other.
    let cleared = vmm.remote_json(&["snp-certs", "certs_file=none"]);
    assert_eq!(cleared["config"]["certs_file"], Value::Null);

    // The event monitor writes from a thread of its own.
    let changes = poll(DEADLINE_SECS, "three config-changed events", || {
        let changes = vmm.events_named("snp-certs", "config-changed");
        (changes.len() >= 3).then_some(changes)
    });
    let files: Vec<&Value> = changes
        .iter()
        .map(|e| &e["properties"]["certs_file"])
        .collect();
    assert_eq!(
        files,
        [valid.to_str().unwrap(), valid.to_str().unwrap(), ""],
        "one event per accepted change: {changes:?}"
    );
}

#[test]
#[ignore = "needs the patched Cloud Hypervisor binaries: run integrations/cloud-hypervisor/build-and-test.sh (it sets SNP_CH_BIN_DIR)"]
fn ch_plugin_certs_need_an_snp_vm() {
    let dir = tempfile::tempdir().unwrap();
    let valid = example_table(dir.path());
    let mut vmm = ChVmm::start(dir.path());
    vmm.create(&json!({"payload": {"kernel": "/nonexistent/vmlinux"}}));
    let answer = curl(
        &vmm.socket,
        dir.path(),
        "vm.snp-certs",
        &["-X", "PUT", "-d", &json!({"certs_file": valid}).to_string()],
    );
    assert_eq!(answer.status, 400);
    assert!(
        answer.json().to_string().contains("need an SEV-SNP VM"),
        "{}",
        answer.json()
    );
    let answer = curl(&vmm.socket, dir.path(), "vm.snp-certs", &[]);
    assert_eq!(answer.status, 404, "{}", answer.json());
    vmm.assert_running();
}

#[test]
#[ignore = "needs the patched Cloud Hypervisor binaries: run integrations/cloud-hypervisor/build-and-test.sh (it sets SNP_CH_BIN_DIR)"]
fn ch_plugin_snp_vm_is_refused_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let valid = example_table(dir.path());
    let mut vmm = ChVmm::start(dir.path());
    vmm.create(&snp_vm(dir.path(), json!({"certs_file": valid})));
    let boot = vmm.remote(&["boot"]);
    if host_creates_snp_vms() {
        eprintln!(
            "note: this host's KVM creates SEV-SNP VMs: the refusal does not apply (boot: {boot:?})"
        );
        assert!(
            !boot.stderr.contains("KVM_X86_SNP_VM is missing"),
            "{boot:?}"
        );
        return;
    }
    assert_eq!(boot.code, 1, "{boot:?}");
    assert!(
        boot.stderr
            .contains("KVM_X86_SNP_VM is missing from KVM_CAP_VM_TYPES"),
        "{}",
        boot.stderr
    );
    // Refused, not crashed: the VMM answers, the VM is still created.
    vmm.assert_running();
    let certs = vmm.remote_json(&["snp-certs"]);
    assert_eq!(certs["serving"], false);
    assert_eq!(certs["config"]["certs_file"], valid.to_str().unwrap());
}
