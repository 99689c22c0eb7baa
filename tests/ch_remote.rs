//! Cloud Hypervisor's own, unmodified `ch-remote` drives `snp-vmm`: CH's
//! code is the judge of whether the API speaks CH's wire format, takes
//! CH's `VmConfig`, and answers CH's client with its status codes and our
//! error chain.
//!
//! The binary is built from the pinned source by
//! `scripts/build-ch-remote.sh`; `CH_REMOTE=PATH` names another one.
//! Tests that need it are named `ch_remote_*`: `scripts/test.sh` builds it
//! first, and leaves them out (the runner counts them as skipped, and says
//! why) only where the pinned source archives are not there. Run without
//! the binary, they fail: a missing binary never passes for a working one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::api::{ApiVmm, DEADLINE, Run, certs_file};

/// The `ch-remote` to run: `$CH_REMOTE`, or what
/// `scripts/build-ch-remote.sh` built in this target directory.
fn ch_remote_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CH_REMOTE") {
        return PathBuf::from(path);
    }
    // target/debug/snp-vmm -> target/ch-remote/ch-remote
    let built = Path::new(env!("CARGO_BIN_EXE_snp-vmm"))
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("ch-remote").join("ch-remote"))
        .unwrap();
    assert!(
        built.is_file(),
        "Cloud Hypervisor's ch-remote is not at {}: run scripts/build-ch-remote.sh \
         (scripts/test.sh does, and skips the ch_remote_* tests only where the pinned \
         sources are missing), or set CH_REMOTE",
        built.display()
    );
    built
}

/// `ch-remote --api-socket SOCKET ARGS...`.
fn ch_remote(socket: &Path, args: &[&str]) -> Run {
    Command::new(ch_remote_binary())
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
        .into()
}

/// A `ch-remote` run that must succeed; its stdout.
fn ch_ok(vmm: &ApiVmm, args: &[&str]) -> String {
    let run = ch_remote(&vmm.socket, args);
    assert_eq!(run.code, 0, "ch-remote {args:?}: {run:?}\n{}", vmm.stderr());
    run.stdout
}

/// A Cloud Hypervisor `VmConfig` as a CH user writes one: CH's sections
/// with `serial`, `console`, `rng` and `memory.shared`, and our payload
/// and certs sections.
fn cloud_hypervisor_config(certs: &Path) -> Value {
    json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 67108864, "shared": true},
        "serial": {"mode": "Null"},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        "snp": {"certs_file": certs, "doorbell": true},
        "payload": {"test_guest": {"kind": "attest", "requests": 100000, "interval_ms": 5}},
    })
}

/// The whole lifecycle of a VM on the mock backend (what ch-remote judges,
/// the API, is the same on every backend; `kvm_*` tests elsewhere run it
/// on KVM with `snp-remote`).
#[test]
fn ch_remote_drives_the_whole_lifecycle_of_a_mock_vm() {
    let hv = "mock";
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = certs_file(dir.path(), "certs.bin", 0x41);
    let mut vmm = ApiVmm::start(dir.path(), hv, &[]);

    let ping: Value = serde_json::from_str(&ch_ok(&vmm, &["ping"])).unwrap();
    assert_eq!(ping["pid"], vmm.child.0.id());
    assert!(
        ping["features"].as_array().unwrap().contains(&json!(hv)),
        "{ping}"
    );

    let config = dir.path().join("vm.json");
    std::fs::write(&config, cloud_hypervisor_config(&certs).to_string()).unwrap();
    let created: Value =
        serde_json::from_str(&ch_ok(&vmm, &["create", config.to_str().unwrap()])).unwrap();
    let named: Vec<&str> = created["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().split(' ').next().unwrap())
        .collect();
    assert_eq!(
        named,
        ["console", "memory.shared", "rng", "serial"],
        "{created}"
    );
    // The same warnings in the VMM's log.
    assert!(
        vmm.stderr().contains("vm.create: memory.shared is ignored"),
        "{}",
        vmm.stderr()
    );
    let info: Value = serde_json::from_str(&ch_ok(&vmm, &["info"])).unwrap();
    assert_eq!(info["state"], "Created");

    assert_eq!(ch_ok(&vmm, &["boot"]), "", "204: nothing to print");
    vmm.events.wait_named_from(0, "delivered", 3);
    let info: Value = serde_json::from_str(&ch_ok(&vmm, &["info"])).unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(
        info["config"]["serial"],
        json!({"mode": "Null"}),
        "shown back as given"
    );
    assert_eq!(info["config"]["memory"]["shared"], true);
    let counters: Value = serde_json::from_str(&ch_ok(&vmm, &["counters"])).unwrap();
    assert!(
        counters["snp-certs"]["delivered"].as_u64() >= Some(3),
        "{counters}"
    );

    assert_eq!(ch_ok(&vmm, &["shutdown"]), "");
    let info: Value = serde_json::from_str(&ch_ok(&vmm, &["info"])).unwrap();
    assert_eq!(
        info["state"], "Created",
        "as Cloud Hypervisor after a shutdown"
    );
    // snp-remote prints exactly what ch-remote prints.
    for command in ["ping", "info", "counters"] {
        let theirs = ch_ok(&vmm, &[command]);
        let ours = vmm.remote(&[command]);
        assert_eq!(ours.code, 0, "{ours:?}");
        assert_eq!(ours.stdout, theirs, "snp-remote {command}");
    }
    // A second shutdown is refused, with our reason.
    let run = ch_remote(&vmm.socket, &["shutdown"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("The VM is Created: only a running VM can shut down"),
        "{run:?}"
    );
    assert_eq!(vmm.remote(&["shutdown"]).code, 1, "the same exit code");

    // Boots again, created anew from its configuration.
    assert_eq!(ch_ok(&vmm, &["boot"]), "");
    vmm.events.wait_named_from(0, "booted", 2);

    // Delete, twice: idempotent, as in Cloud Hypervisor.
    assert_eq!(ch_ok(&vmm, &["delete"]), "");
    assert_eq!(ch_ok(&vmm, &["delete"]), "");
    let run = ch_remote(&vmm.socket, &["info"]);
    assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{run:?}");
    assert!(
        run.stderr.contains("Server responded with NotFound"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("No VM: create one with PUT /api/v1/vm.create"),
        "{run:?}"
    );

    assert_eq!(ch_ok(&vmm, &["shutdown-vmm"]), "");
    let status = vmm.child.wait_exit(DEADLINE);
    assert!(status.success(), "{status}: {}", vmm.stderr());
    assert!(!vmm.socket.exists(), "the socket is removed");
}

/// Our error chain reaches the user through ch-remote, under the status
/// Cloud Hypervisor's client knows (400 is its `BadRequest`).
#[test]
fn ch_remote_shows_our_error_chain() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = ApiVmm::start(dir.path(), "mock", &[]);
    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        json!({"cpus": {"boot_vcpus": 1, "max_vcpus": 1,
                        "topology": {"threads_per_core": 1, "cores_per_die": 1,
                                     "dies_per_package": 1, "packages": 1}}})
        .to_string(),
    )
    .unwrap();
    let run = ch_remote(&vmm.socket, &["create", config.to_str().unwrap()]);
    assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{run:?}");
    for line in [
        "1: Server responded with BadRequest",
        "2: Invalid vm.create body",
        "3: cpus.topology is not supported: it changes the CPUID the guest sees",
    ] {
        assert!(run.stderr.contains(line), "{line:?} not in {run:?}");
    }
    let run = ch_remote(&vmm.socket, &["boot"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("1: Server responded with NotFound"),
        "{run:?}"
    );
    // CH's commands snp-vmm does not have say so.
    let run = ch_remote(&vmm.socket, &["pause"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("3: snp-vmm does not implement Cloud Hypervisor's vm.pause"),
        "{run:?}"
    );
}

/// Error messages may hold any text (here a certs file path in Greek,
/// with characters of two and three bytes). CH's client decodes what it
/// reads 256 bytes at a time and panics on a character cut in two; the
/// server's ASCII-only JSON keeps that from happening wherever the
/// characters fall, and ch-remote shows the text as it was.
#[test]
fn ch_remote_reads_messages_in_any_script() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = ApiVmm::start(dir.path(), "mock", &[]);
    for pad in 0..3 {
        let path = format!(
            "/nonexistent/{}{}.bin",
            "p".repeat(pad),
            "πιστοποιητικά…".repeat(20)
        );
        let config = dir.path().join("vm.json");
        std::fs::write(&config, json!({"snp": {"certs_file": path}}).to_string()).unwrap();
        let run = ch_remote(&vmm.socket, &["create", config.to_str().unwrap()]);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(!run.stderr.contains("panicked"), "{run:?}");
        assert!(
            run.stderr.contains("Server responded with BadRequest"),
            "{run:?}"
        );
        assert!(run.stderr.contains(&path), "{run:?}");
    }
}

/// On the `mock-snp` backend (a simulated SNP host) ping lists `sev_snp`,
/// as Cloud Hypervisor's does where it can launch SEV-SNP guests, and a
/// CH configuration with `platform.sev_snp` and `payload.host_data`
/// launches one.
#[test]
fn ch_remote_sees_sev_snp_on_mock_snp() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = ApiVmm::start(dir.path(), "mock-snp", &[]);
    let ping: Value = serde_json::from_str(&ch_ok(&vmm, &["ping"])).unwrap();
    let features = ping["features"].as_array().unwrap();
    assert!(features.contains(&json!("sev_snp")), "{ping}");
    let host_data = "5a".repeat(32);
    let config = dir.path().join("snp.json");
    std::fs::write(
        &config,
        json!({"platform": {"sev_snp": true},
               "payload": {"host_data": host_data, "test_guest": {"kind": "snp-attest"}}})
        .to_string(),
    )
    .unwrap();
    assert_eq!(ch_ok(&vmm, &["create", config.to_str().unwrap()]), "");
    ch_ok(&vmm, &["boot"]);
    let info: Value = serde_json::from_str(&ch_ok(&vmm, &["info"])).unwrap();
    assert_eq!(info["config"]["payload"]["host_data"], host_data);
    assert_eq!(info["config"]["platform"]["sev_snp"], true);
}

/// The bytes CH's client parses, from the real `snp-vmm`: the status code
/// alone after `HTTP/1.1 `, and `Content-Length: ` in title case.
#[test]
fn raw_status_line_and_content_length_from_snp_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = ApiVmm::start(dir.path(), "mock", &[]);
    let mut socket = UnixStream::connect(&vmm.socket).unwrap();
    socket
        .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 256];
    let text = loop {
        let n = socket.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {response:?}");
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8(response.clone()).unwrap();
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if body.ends_with('}') {
                break text;
            }
        }
    };
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("HTTP/1.1 200 "), "{head}");
    let length = format!("Content-Length: {}", body.len());
    assert!(lines.any(|l| l == length), "{head}");
    assert!(!head.contains("content-length"), "{head}");
}
