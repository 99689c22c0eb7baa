//! End-to-end tests of `snp-vmm` under real KVM: the built-in attestation
//! guest asks for certificates through the emulated doorbell and must get
//! exactly the certs file's table, in step with a management tool that
//! holds the exclusive lock. Skipped, with a message, without `/dev/kvm`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use snp_certs::lock::{self, LockKind};
use support::{
    ChildGuard, Events, ManagementLock, replace_by_rename, require_kvm, snp_vmm_attest, table,
};
use test_guests::attest::expected_report_for;

#[test]
fn kvm_guest_receives_exactly_the_file_after_a_size_query() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    let bytes = table(0x11);
    fs::write(&certs, &bytes).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let out = snp_vmm_attest(&certs, "", "requests=3", &events)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, len, checksum) = expected_report_for(&bytes).unwrap();
    assert_eq!(
        stdout.matches("matches what the VMM delivered").count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("len={len} checksum={checksum:#010x}")),
        "{stdout}"
    );
    assert!(stdout.contains("(equal)"), "{stdout}");

    // Each request: a size query answered ENOSPC with the exact page
    // count, then the delivery, then the lease released.
    let need = events.named("need-pages");
    let delivered = events.named("delivered");
    assert_eq!((need.len(), delivered.len()), (3, 3));
    for e in &need {
        assert_eq!(e["properties"]["npages"], 0);
        assert_eq!(e["properties"]["ret"], 28);
        assert_eq!(e["properties"]["reply_npages"], 2);
    }
    for e in &delivered {
        assert_eq!(e["properties"]["bytes"], bytes.len());
        assert_eq!(e["properties"]["source"], "doorbell");
    }
    assert_eq!(events.named("lease-released").len(), 3);
    assert_eq!(events.named("report").len(), 3);
    assert_eq!(events.named("shutdown")[0]["properties"]["leases_held"], 0);
}

#[test]
fn kvm_busy_while_the_management_tool_holds_the_lock_then_served() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x22)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let mut vmm = ChildGuard(
        snp_vmm_attest(
            &certs,
            "certs-timeout=20",
            "requests=2,interval-ms=300",
            &events,
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    // After the first request, during the guest's pause, the tool locks.
    events.wait_for("report", 1);
    let tool = ManagementLock::take(&certs);
    let busy = events.wait_for("busy", 1);
    assert_eq!(busy[0]["properties"]["reason"], "lock-timeout");
    assert!(busy[0]["properties"]["lock_wait_us"].as_u64().unwrap() >= 20_000);
    tool.release();
    let out = vmm.wait_exit(60);
    let mut stdout = String::new();
    BufReader::new(vmm.0.stdout.take().unwrap())
        .lines()
        .for_each(|l| stdout.push_str(&(l.unwrap() + "\n")));
    assert!(out.success(), "{stdout}");
    let reports = events.named("report");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[1]["properties"]["status"], "ok");
    assert!(reports[1]["properties"]["busy_retries"].as_u64().unwrap() >= 1);
    assert_eq!(reports[1]["properties"]["matches"], true);
}

#[test]
fn kvm_a_file_renamed_over_mid_run_is_picked_up() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    let old = table(0x33);
    let new = table(0x44);
    fs::write(&certs, &old).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let mut vmm = ChildGuard(
        snp_vmm_attest(&certs, "", "requests=30,interval-ms=10", &events)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (_, _, old_sum) = expected_report_for(&old).unwrap();
    let (_, _, new_sum) = expected_report_for(&new).unwrap();
    let mut lines = BufReader::new(vmm.0.stdout.take().unwrap()).lines();
    let mut checksums = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(sum) = line.split("checksum=").nth(1) {
            checksums.push(sum.split_whitespace().next().unwrap().to_owned());
            if checksums.len() == 1 {
                replace_by_rename(&certs, &new);
            }
        }
        if line.starts_with("summary:") {
            break;
        }
    }
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(vmm.wait_exit(60).success(), "{rest:?}");
    assert_eq!(checksums.len(), 30);
    assert_eq!(checksums[0], format!("{old_sum:#010x}"));
    assert_eq!(checksums.last().unwrap(), &format!("{new_sum:#010x}"));
    // Once switched, never back to the unlinked file.
    let first_new = checksums
        .iter()
        .position(|c| *c == format!("{new_sum:#010x}"))
        .unwrap();
    assert!(
        checksums[first_new..]
            .iter()
            .all(|c| *c == format!("{new_sum:#010x}"))
    );
    assert!(rest.iter().any(|l| l.contains("(equal)")), "{rest:?}");
}

#[test]
fn kvm_leases_let_a_writer_in_right_after_each_request() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x55)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let mut vmm = ChildGuard(
        snp_vmm_attest(&certs, "certs-timeout=1000", "requests=100000", &events)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A writer in this process competes with the guest's requests. Each
    // round it takes the exclusive lock while the guest is running (its
    // deliveries before and after the round prove the lock came between
    // two of its requests, not after the guest stopped) and lets go.
    let writer = fs::OpenOptions::new().write(true).open(&certs).unwrap();
    let released = || events.named("lease-released").len();
    events.wait_for("lease-released", 1);
    for round in 0..20 {
        let before = released();
        lock::lock(&writer, LockKind::Exclusive, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: the writer never got in: {e}"));
        // While the writer holds it, no lease can be taken.
        let held = released();
        lock::unlock(&writer).unwrap();
        assert!(held >= before);
        // The guest goes on being served after the writer let go.
        events.wait_for("lease-released", held + 1);
    }
    assert!(
        vmm.0.try_wait().unwrap().is_none(),
        "the guest was still running"
    );
    drop(vmm);
    // Nothing leaked: every delivery's lease was released.
    let delivered = events.named("delivered").len();
    let leases = events.named("lease-released").len();
    assert!(
        delivered >= 21 && leases + 1 >= delivered,
        "{delivered} {leases}"
    );
    for e in events.named("lease-released") {
        assert!(e["properties"]["held_us"].as_u64().unwrap() < 1_000_000);
    }
}
