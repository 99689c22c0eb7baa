//! `snp-vmm` takes Cloud Hypervisor's spelling on its command line:
//! snake_case option keys (kebab-case still accepted), switches in any
//! case, CH's payload flags recognised (`--host-data` used for SNP
//! guests, the others refused with the reason), and CH's event format on
//! request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;

use serde_json::Value;
use support::api::{ApiVmm, certs_file};
use support::snp_vmm;

#[test]
fn cloud_hypervisor_payload_flags_are_recognised_and_refused_with_the_reason() {
    for (flag, value) in [
        ("--kernel", "/boot/vmlinux"),
        ("--cmdline", "console=ttyS0"),
        ("--initramfs", "/boot/initrd"),
        ("--firmware", "/usr/share/ovmf.fd"),
        ("--igvm", "/usr/share/guest.igvm"),
    ] {
        let out = snp_vmm()
            .args(["--hypervisor", "mock", flag, value])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(!stderr.contains("unexpected argument"), "{flag}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "snp-vmm: {flag} is not supported: snp-vmm runs only its built-in test guests"
            )),
            "{flag}: {stderr}"
        );
    }
}

/// `--host-data` is the SNP launch's host data, as in Cloud Hypervisor:
/// it becomes `payload.host_data` of an SEV-SNP guest, and is refused for
/// any other.
#[test]
fn host_data_goes_to_the_snp_guest_and_nowhere_else() {
    let host_data = "c0".repeat(32);
    let out = snp_vmm()
        .args(["--hypervisor", "mock", "--payload", "attest", "--host-data"])
        .arg(&host_data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--host-data is only used by SEV-SNP guests: add --platform sev_snp=on"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--platform",
        "sev_snp=ON",
        "--payload",
        "snp-attest,requests=1",
        "--host-data",
        &host_data,
    ]
    .map(str::to_owned)
    .to_vec();
    let vmm = ApiVmm::start(dir.path(), "mock-snp", &args);
    let info = vmm.remote_json(&["info"]);
    assert_eq!(info["config"]["payload"]["host_data"], host_data.as_str());
    assert_eq!(info["config"]["platform"]["sev_snp"], true);
}

/// `snp-remote ping` prints the JSON answer, and on the `mock-snp`
/// backend (a simulated SNP host) its features name `sev_snp`, as Cloud
/// Hypervisor's do where it launches SEV-SNP guests; on `mock` they do
/// not.
#[test]
fn ping_features_name_sev_snp_where_snp_guests_launch() {
    for (backend, features) in [
        ("mock-snp", vec!["mock", "sev_snp", "snp_req_certs"]),
        ("mock", vec!["mock"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let vmm = ApiVmm::start(dir.path(), backend, &[]);
        let run = vmm.remote(&["ping"]);
        assert_eq!(run.code, 0, "{run:?}");
        let ping: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(ping["features"], serde_json::json!(features), "{backend}");
    }
}

/// Keys as Cloud Hypervisor spells them, and the kebab-case ones still;
/// switches in any case; the event stream in Cloud Hypervisor's format,
/// read as CH's tests read CH's.
#[test]
fn snake_case_keys_any_case_switches_and_cloud_hypervisor_events() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = certs_file(dir.path(), "certs.bin", 0x33);
    let events = dir.path().join("events");
    let out = snp_vmm()
        .args(["--hypervisor", "mock", "--snp"])
        .arg(format!(
            "certs_file={},certs_timeout=7,busy-budget=500,on_error=empty,doorbell=ON",
            certs.display()
        ))
        .args(["--payload", "attest,requests=2,interval_ms=1,retry-ms=2"])
        .arg("--event-monitor")
        .arg(format!("path={},format=cloud-hypervisor", events.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("certs-timeout 7 ms"), "{stdout}");
    assert!(
        stdout.contains("2 received exactly what was delivered"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&events).unwrap();
    let events: Vec<Value> = text
        .trim()
        .split("\n\n")
        .map(|piece| serde_json::from_str(piece).unwrap())
        .collect();
    let delivered: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 2, "{text}");
    let properties = delivered[0]["properties"].as_object().unwrap();
    assert!(properties.values().all(Value::is_string), "{properties:?}");
    assert_eq!(properties["certs_file"], certs.to_str().unwrap());
    assert_eq!(properties["ret"], "0");

    // A key given in both spellings is one key given twice.
    let out = snp_vmm()
        .args([
            "--hypervisor",
            "mock",
            "--snp",
            "doorbell=on,certs_timeout=1,certs-timeout=2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Option \"certs_timeout\" given more than once"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
