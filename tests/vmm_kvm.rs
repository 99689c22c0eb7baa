//! End-to-end tests of `snp-vmm` under real KVM: the built-in attestation
//! guest asks for certificates through the emulated doorbell and must get
//! exactly the certs file's table, in step with a management tool that
//! holds the exclusive lock. The tests are named `kvm_*`: the runner skips
//! them, and says so, where `/dev/kvm` is not usable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use snp_certs::lock::{self, LockKind};
use support::{
    ChildGuard, Events, ManagementLock, replace_by_rename, require_kvm, snp_vmm_attest,
    snp_vmm_attest_on, table,
};
use test_guests::attest::expected_report_for;

#[test]
fn kvm_guest_receives_exactly_the_file_after_a_size_query() {
    require_kvm();
    guest_receives_exactly_the_file_after_a_size_query_on("kvm");
}

/// On SNP hosts: the SNP guest in a real SEV-SNP VM.
#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_guest_receives_exactly_the_file_after_a_size_query() {
    guest_receives_exactly_the_file_after_a_size_query_on("kvm-snp");
}

fn guest_receives_exactly_the_file_after_a_size_query_on(hv: &str) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    let bytes = table(0x11);
    fs::write(&certs, &bytes).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let out = snp_vmm_attest_on(hv, &certs, "", "requests=3", &events)
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
        let source = if hv == "kvm-snp" { "kvm" } else { "doorbell" };
        assert_eq!(e["properties"]["source"], source);
    }
    assert_eq!(events.named("lease-released").len(), 3);
    assert_eq!(events.named("report").len(), 3);
    assert_eq!(events.named("shutdown")[0]["properties"]["leases_held"], 0);
}

/// The first report at or after event index `from` that `pick` accepts.
fn report_from(events: &Events, from: usize, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    support::poll(30, what, || {
        events.all()[from.min(events.all().len())..]
            .iter()
            .find(|e| e["event"] == "report" && pick(&e["properties"]))
            .cloned()
    })
}

#[test]
fn kvm_busy_while_the_management_tool_holds_the_lock_then_served() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x22)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let _vmm = ChildGuard(
        snp_vmm_attest(
            &certs,
            "certs-timeout=20",
            "requests=100000,interval-ms=2",
            &events,
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    // Once the guest is served, the tool locks: the guest is told busy.
    events.wait_for("report", 1);
    let tool = ManagementLock::take(&certs);
    let busy = events.wait_for("busy", 1);
    assert_eq!(busy[0]["properties"]["reason"], "lock-timeout");
    assert!(busy[0]["properties"]["lock_wait_us"].as_u64().unwrap() >= 20_000);
    let released_at = events.all().len();
    tool.release();
    // The request that was told busy is served once the tool let go.
    let report = report_from(&events, released_at, "a report after the release", |r| {
        r["busy_retries"].as_u64().unwrap_or(0) >= 1
    });
    let r = &report["properties"];
    assert_eq!(
        (r["status"].as_str(), r["matches"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert_eq!(r["entries"], 3, "the file's table, not the fallback");
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
    let _vmm = ChildGuard(
        snp_vmm_attest(&certs, "", "requests=100000,interval-ms=2", &events)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (_, _, old_sum) = expected_report_for(&old).unwrap();
    let (_, _, new_sum) = expected_report_for(&new).unwrap();
    let first = &events.wait_for("report", 1)[0]["properties"];
    assert_eq!(first["checksum"], old_sum);
    replace_by_rename(&certs, &new);
    let renamed_at = events.all().len();
    let switched = report_from(&events, renamed_at, "a report of the new file", |r| {
        r["checksum"] == new_sum
    });
    // Once switched, never back to the unlinked file: the next reports.
    let n = events.named("report").len();
    events.wait_for("report", n + 5);
    let all = events.all();
    let at = all.iter().position(|e| *e == switched).unwrap();
    for e in all[at..].iter().filter(|e| e["event"] == "report") {
        assert_eq!(e["properties"]["checksum"], new_sum, "{e}");
        assert_eq!(e["properties"]["matches"], true);
    }
}

#[test]
fn kvm_leases_let_a_writer_in_right_after_each_request() {
    require_kvm();
    leases_let_a_writer_in_right_after_each_request_on("kvm");
}

/// On SNP hosts: the SNP guest in a real SEV-SNP VM.
#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_leases_let_a_writer_in_right_after_each_request() {
    leases_let_a_writer_in_right_after_each_request_on("kvm-snp");
}

fn leases_let_a_writer_in_right_after_each_request_on(hv: &str) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x55)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let mut vmm = ChildGuard(
        snp_vmm_attest_on(hv, &certs, "certs-timeout=1000", "requests=100000", &events)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A writer in this process competes with the guest's requests. Each
    // round it takes the exclusive lock while the guest is running (its
    // deliveries before and after the round prove the lock came between
    // two of its requests, not after the guest stopped), sees the guest's
    // next request wait for it (the VMM reads the file only under the
    // shared lock), and lets go.
    let writer = fs::OpenOptions::new().write(true).open(&certs).unwrap();
    let released = || events.named("lease-released").len();
    events.wait_for("lease-released", 1);
    for round in 0..20 {
        lock::lock(&writer, LockKind::Exclusive, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: the writer never got in: {e}"));
        support::wait_for_lock_waiter(&certs);
        let at_release = released();
        lock::unlock(&writer).unwrap();
        // The guest goes on being served after the writer let go.
        events.wait_for("lease-released", at_release + 1);
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
