//! Tests of the host check's output and of its certs-file items.

use std::fs;

use hypervisor::kvm::host::{HostItem, HostReport, ItemStatus};
use snp_certs::{CertKind, TableBuilder};

use super::*;

fn sample() -> HostReport {
    HostReport {
        items: vec![
            HostItem::ok("kvm-device", "/dev/kvm opens read-write"),
            HostItem::missing("snp-vm-type", "SNP VM type not offered", "load kvm_amd"),
            HostItem::warn("kernel", "Linux 6.18 is older", "upgrade"),
            HostItem::skipped("sev-firmware", "needs /dev/sev"),
        ],
    }
}

/// A valid table of `size` bytes in total: a VCEK, padded with a CRL.
fn table_of(size: usize) -> Vec<u8> {
    let mut b = TableBuilder::new();
    let mut vcek = vec![0x42; 1000];
    vcek[0] = 0x30;
    b.add(CertKind::Vcek, vcek).unwrap();
    // Three entries of 24 bytes: VCEK, CRL, terminator.
    let mut crl = vec![0x43; size - 1000 - 3 * 24];
    crl[0] = 0x30;
    b.add(CertKind::Crl, crl).unwrap();
    let t = b.build().unwrap();
    assert_eq!(t.len(), size);
    t
}

#[test]
fn text_is_aligned_and_ends_with_the_verdict() {
    let text = to_text(&sample());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "snp-vmm: host check for SEV-SNP guests with certificates"
    );
    assert_eq!(lines[2], "kvm-device    ok       /dev/kvm opens read-write");
    assert_eq!(lines[3], "snp-vm-type   missing  SNP VM type not offered");
    assert_eq!(lines[4], "                       fix: load kvm_amd");
    assert_eq!(lines[5], "kernel        warn     Linux 6.18 is older");
    assert_eq!(lines[7], "sev-firmware  skipped  needs /dev/sev");
    assert_eq!(
        lines.last().copied(),
        Some(
            "verdict: this host CANNOT serve SEV-SNP guests with certificates (missing: snp-vm-type)"
        )
    );
    // Every detail starts in the same column, and so does every fix.
    let report = sample();
    for (line, item) in [lines[2], lines[3], lines[5], lines[7]]
        .into_iter()
        .zip(&report.items)
    {
        assert_eq!(&line[23..], item.detail, "{line}");
    }
    assert_eq!(&lines[4][23..], "fix: load kvm_amd");
}

#[test]
fn text_verdict_when_nothing_is_missing() {
    let report = HostReport {
        items: vec![HostItem::ok("a", "fine")],
    };
    assert!(
        to_text(&report)
            .ends_with("verdict: this host CAN serve SEV-SNP guests with certificates\n")
    );
    assert_eq!(exit_status(&report), EXIT_CAN_SERVE);
    assert_eq!(exit_status(&sample()), EXIT_CANNOT_SERVE);
    assert_ne!(EXIT_CANNOT_SERVE, 2, "2 is taken by errors");
}

#[test]
fn json_has_items_and_verdict() {
    let text = to_json(&sample()).unwrap();
    assert!(text.starts_with("{\n  \"can_serve_snp\": false,\n  \"items\": ["));
    assert!(text.ends_with("}\n"));
    // Each item lists name, status, detail, fix in that order.
    let name = text.find("\"name\": \"snp-vm-type\"").unwrap();
    let status = text[name..].find("\"status\"").unwrap();
    let detail = text[name..].find("\"detail\"").unwrap();
    let fix = text[name..].find("\"fix\"").unwrap();
    assert!(status < detail && detail < fix);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["can_serve_snp"], false);
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(
        items[1],
        serde_json::json!({
            "name": "snp-vm-type",
            "status": "missing",
            "detail": "SNP VM type not offered",
            "fix": "load kvm_amd",
        })
    );
    assert_eq!(items[0]["fix"], serde_json::Value::Null);
    assert_eq!(items[3]["status"], "skipped");
    let ok = to_json(&HostReport {
        items: vec![HostItem::ok("a", "fine")],
    })
    .unwrap();
    let ok: serde_json::Value = serde_json::from_str(&ok).unwrap();
    assert_eq!(ok["can_serve_snp"], true);
}

#[test]
fn certs_items_of_a_good_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, table_of(4096)).unwrap();
    let items = certs_items(&path);
    let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, [ITEM_CERTS_FILE, ITEM_CERTS_SIZE, ITEM_CERTS_LOCK]);
    assert_eq!(items[0].status, ItemStatus::Ok);
    assert!(
        items[0]
            .detail
            .ends_with("is a valid certificate table: 2 entries (VCEK, CRL)"),
        "{}",
        items[0].detail
    );
    assert_eq!(items[1].status, ItemStatus::Ok);
    assert!(items[1].detail.starts_with("4096 bytes: within"));
    assert_eq!(items[2].status, ItemStatus::Ok);
    assert_eq!(items[2].detail, "no process holds a lock on it");
}

#[test]
fn certs_items_of_a_large_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, table_of(17 * 1024)).unwrap();
    let items = certs_items(&path);
    assert_eq!(items[0].status, ItemStatus::Ok, "{}", items[0].detail);
    assert_eq!(items[1].status, ItemStatus::Missing);
    assert!(
        items[1]
            .detail
            .starts_with("17408 bytes: over the 16384-byte (16 KiB) limit"),
        "{}",
        items[1].detail
    );
}

#[test]
fn certs_items_of_a_bad_or_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, b"not a table at all, not even close").unwrap();
    let items = certs_items(&path);
    assert_eq!(items[0].status, ItemStatus::Missing);
    assert!(
        items[0].detail.contains("not a valid certificate table"),
        "{}",
        items[0].detail
    );
    assert!(items[0].fix.as_deref().unwrap().contains("snp-certs"));
    assert_eq!(items[1].status, ItemStatus::Ok, "a short file is small");

    let gone = dir.path().join("gone.bin");
    let items = certs_items(&gone);
    assert_eq!(items[0].status, ItemStatus::Missing);
    assert!(
        items[0].detail.contains("does not exist"),
        "{}",
        items[0].detail
    );
    assert_eq!(items[1].status, ItemStatus::Skipped);
    assert_eq!(items[2].status, ItemStatus::Warn);
}

#[test]
fn certs_table_warnings_other_than_size_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let mut b = TableBuilder::new();
    b.add(
        CertKind::Ark,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n".to_vec(),
    )
    .unwrap();
    fs::write(&path, b.build().unwrap()).unwrap();
    let item = &certs_items(&path)[0];
    assert_eq!(item.status, ItemStatus::Warn);
    assert!(item.detail.contains("; but: "), "{}", item.detail);
}
