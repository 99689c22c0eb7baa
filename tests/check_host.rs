//! End to end: `snp-vmm --check-host` on this very host, and its certs-file
//! items against real files and a real lock held by another process.
//!
//! The expected verdict is worked out from what the test itself can see
//! (`/dev/kvm` and its capabilities asked directly, `/sys/module`,
//! `/dev/sev`), never from a table of facts about "these machines": hosts
//! of one kind differ (guest_memfd is offered on some PVM hosts and not on
//! others). So on a host without SNP (such as the PVM machines this
//! project is developed on, or GitHub's runners) every item that says so
//! is checked, and on an SNP host the report must agree with itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use snp_certs::{CertKind, TableBuilder};
use support::{ManagementLock, snp_vmm};

/// Exit status of `--check-host` when the host cannot serve SNP guests.
const CANNOT_SERVE: i32 = 3;

fn check_host(args: &[&str]) -> Output {
    let out = snp_vmm()
        .arg("--check-host")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn check_host_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = check_host(&all);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.code().unwrap(), json)
}

fn item<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no item {name} in {json}"))
}

fn status<'a>(json: &'a Value, name: &str) -> &'a str {
    item(json, name)["status"].as_str().unwrap()
}

fn detail<'a>(json: &'a Value, name: &str) -> &'a str {
    item(json, name)["detail"].as_str().unwrap()
}

fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn sev_snp_on() -> bool {
    fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp")
        .is_ok_and(|v| matches!(v.trim(), "Y" | "y" | "1"))
}

/// `KVM_CHECK_EXTENSION` answers of this host's `/dev/kvm`, asked directly
/// (not through the code under test).
struct KvmCaps {
    guest_memfd: i32,
    user_memory2: i32,
    memory_attributes: i32,
    vm_types: i32,
}

impl KvmCaps {
    /// `None` where `/dev/kvm` cannot be opened.
    fn probe() -> Option<KvmCaps> {
        use std::os::fd::AsRawFd;
        // _IO(KVMIO, 0x03) and the capability numbers of
        // include/uapi/linux/kvm.h.
        const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
        const KVM_CAP_USER_MEMORY2: libc::c_ulong = 231;
        const KVM_CAP_MEMORY_ATTRIBUTES: libc::c_ulong = 233;
        const KVM_CAP_GUEST_MEMFD: libc::c_ulong = 234;
        const KVM_CAP_VM_TYPES: libc::c_ulong = 235;
        let kvm = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .ok()?;
        let check = |cap: libc::c_ulong| {
            // SAFETY: KVM_CHECK_EXTENSION takes an integer argument and
            // touches no memory of ours; the fd is open for the call.
            unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CHECK_EXTENSION, cap) }
        };
        Some(KvmCaps {
            guest_memfd: check(KVM_CAP_GUEST_MEMFD),
            user_memory2: check(KVM_CAP_USER_MEMORY2),
            memory_attributes: check(KVM_CAP_MEMORY_ATTRIBUTES),
            vm_types: check(KVM_CAP_VM_TYPES),
        })
    }
}

/// A valid table of `size` bytes: a VCEK, padded with a CRL.
fn table_of(size: usize) -> Vec<u8> {
    let mut b = TableBuilder::new();
    let mut vcek = vec![0x42; 1361];
    vcek[0] = 0x30;
    b.add(CertKind::Vcek, vcek).unwrap();
    let mut crl = vec![0x43; size - 1361 - 3 * 24];
    crl[0] = 0x30;
    b.add(CertKind::Crl, crl).unwrap();
    let table = b.build().unwrap();
    assert_eq!(table.len(), size);
    table
}

#[test]
fn check_host_json_gives_this_hosts_verdict() {
    let (code, json) = check_host_json(&[]);
    let items = json["items"].as_array().unwrap();
    assert!(items.len() >= 12, "{json}");
    for i in items {
        assert!(
            ["ok", "missing", "warn", "skipped"].contains(&i["status"].as_str().unwrap()),
            "{i}"
        );
        assert!(!i["detail"].as_str().unwrap().is_empty(), "{i}");
        // Every missing or warned item says how to fix it.
        if matches!(i["status"].as_str(), Some("missing" | "warn")) {
            assert!(i["fix"].as_str().is_some_and(|f| !f.is_empty()), "{i}");
        }
    }
    let any_missing = items.iter().any(|i| i["status"] == "missing");
    assert_eq!(json["can_serve_snp"], !any_missing);
    assert_eq!(code, if any_missing { CANNOT_SERVE } else { 0 });
    assert_eq!(status(&json, "certs-file"), "skipped");

    assert_eq!(
        status(&json, "kvm-device"),
        if kvm_usable() { "ok" } else { "missing" }
    );
    if !sev_snp_on() {
        assert_eq!(json["can_serve_snp"], false);
        assert_eq!(code, CANNOT_SERVE);
        assert_eq!(status(&json, "kvm-amd-sev-snp"), "missing");
        if kvm_usable() {
            assert_eq!(status(&json, "snp-vm-type"), "missing");
            assert!(
                detail(&json, "snp-vm-type").starts_with("SNP VM type not offered"),
                "{json}"
            );
            assert_eq!(status(&json, "snp-req-certs"), "missing");
        } else {
            assert_eq!(status(&json, "snp-vm-type"), "skipped");
        }
    }
    if let Some(caps) = KvmCaps::probe() {
        // What this host offers, asked of /dev/kvm here and compared with
        // the report: hosts of one kind differ (guest_memfd is offered on
        // some PVM machines and not on others), so nothing is assumed.
        let present = |ret: i32| if ret > 0 { "ok" } else { "missing" };
        assert_eq!(
            status(&json, "guest-memfd"),
            present(caps.guest_memfd),
            "{json}"
        );
        assert_eq!(
            status(&json, "user-memory2"),
            present(caps.user_memory2),
            "{json}"
        );
        let private = caps.memory_attributes > 0 && caps.memory_attributes & (1 << 3) != 0;
        assert_eq!(
            status(&json, "memory-attributes"),
            if private { "ok" } else { "missing" },
            "{json}"
        );
        let snp_type = caps.vm_types > 0 && caps.vm_types & (1 << 4) != 0;
        assert_eq!(
            status(&json, "snp-vm-type"),
            if snp_type { "ok" } else { "missing" },
            "{json}"
        );
    }
    if Path::new("/sys/module/kvm_pvm").exists() && kvm_usable() {
        // PVM is paravirtualised KVM without SVM: never SEV.
        assert_eq!(status(&json, "kvm-flavour"), "missing");
        assert!(detail(&json, "kvm-flavour").contains("(kvm_pvm)"));
        assert!(detail(&json, "snp-req-certs").contains("ENXIO"), "{json}");
    }
    if !Path::new("/dev/sev").exists() {
        assert_eq!(status(&json, "sev-device"), "missing");
        assert!(detail(&json, "sev-device").starts_with("/dev/sev does not exist"));
        assert_eq!(status(&json, "sev-firmware"), "skipped");
    }
}

#[test]
fn check_host_text_ends_with_the_verdict() {
    let out = check_host(&[]);
    let text = String::from_utf8(out.stdout).unwrap();
    let last = text.lines().last().unwrap();
    if out.status.code() == Some(CANNOT_SERVE) {
        assert!(
            last.starts_with(
                "verdict: this host CANNOT serve SEV-SNP guests with certificates (missing: "
            ),
            "{text}"
        );
    } else {
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert_eq!(
            last,
            "verdict: this host CAN serve SEV-SNP guests with certificates"
        );
    }
    assert!(text.lines().any(|l| l.starts_with("kvm-device ")), "{text}");
}

#[test]
fn check_host_certs_file_over_the_guest_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, table_of(17 * 1024)).unwrap();
    let (code, json) = check_host_json(&["--certs-file", path.to_str().unwrap()]);
    assert_eq!(status(&json, "certs-file"), "ok", "{json}");
    assert_eq!(status(&json, "certs-file-size"), "missing");
    assert!(
        detail(&json, "certs-file-size")
            .starts_with("17408 bytes: over the 16384-byte (16 KiB) limit of Linux guests"),
        "{json}"
    );
    assert_eq!(status(&json, "certs-file-lock"), "ok");
    assert_eq!(json["can_serve_snp"], false);
    assert_eq!(code, CANNOT_SERVE);
}

#[test]
fn check_host_names_the_holder_of_the_certs_files_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, table_of(4096)).unwrap();
    let file = path.to_str().unwrap();

    let lock = ManagementLock::take(&path);
    let (_, json) = check_host_json(&["--certs-file", file]);
    assert_eq!(status(&json, "certs-file-lock"), "warn", "{json}");
    let held = detail(&json, "certs-file-lock");
    assert!(held.starts_with("held right now by pid "), "{held}");
    assert!(held.contains("(snp-certs), exclusive"), "{held}");
    // Its content cannot be read while the writer holds it.
    assert_eq!(status(&json, "certs-file"), "warn");
    assert!(
        detail(&json, "certs-file").contains("the shared lock was not granted"),
        "{json}"
    );
    // The size comes from the file itself meanwhile.
    assert!(detail(&json, "certs-file-size").starts_with("4096 bytes: within"));
    lock.release();

    let (_, json) = check_host_json(&["--certs-file", file]);
    assert_eq!(status(&json, "certs-file-lock"), "ok", "{json}");
    assert_eq!(
        detail(&json, "certs-file-lock"),
        "no process holds a lock on it"
    );
    assert_eq!(status(&json, "certs-file"), "ok");
    assert!(
        detail(&json, "certs-file")
            .ends_with("is a valid certificate table: 2 entries (VCEK, CRL)"),
        "{json}"
    );
}

#[test]
fn check_host_flags_need_check_host() {
    // (--json is shared with the run-once summary, so --certs-file is the
    // flag that only --check-host takes.)
    let out = snp_vmm().args(["--certs-file", "/x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--check-host"), "{err}");
}
