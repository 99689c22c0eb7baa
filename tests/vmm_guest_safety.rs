//! Never cost a guest its attestation key: the busy budget, the
//! empty-table fallback, the 16 KiB limit, and a VMM that starts while a
//! management tool updates the certs file. Each test runs the real
//! `snp-vmm` with the attestation guest (retrying busy answers as a Linux
//! guest does, its 2 s pause scaled down by `retry-ms`), as `kvm_*` on KVM
//! (the runner skips those, saying so, where `/dev/kvm` is not usable) and
//! as `mock_*` on the mock backend, with a second
//! process (`snp-certs lock`) as the management tool. Every step waits on
//! an event it can see (a line of the event stream or of stderr), never a
//! time window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::process::Stdio;

use snp_certs::{CertKind, TableBuilder};
use support::{ChildGuard, Events, ManagementLock, kvm, snp_vmm_attest_on, table};
use test_guests::attest::expected_report_for;

/// Reads `child`'s stderr until a line contains every one of `needles`.
fn stderr_line(child: &mut ChildGuard, needles: &[&str]) -> String {
    let stderr = child.0.stderr.as_mut().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("snp-vmm closed stderr before a line with {needles:?}"))
            .unwrap();
        if needles.iter().all(|n| line.contains(n)) {
            return line;
        }
    }
}

#[test]
fn kvm_a_writer_holding_the_lock_past_the_budget_gets_the_guest_the_empty_table() {
    a_writer_holding_the_lock_past_the_budget_gets_the_guest_the_empty_table_on(kvm());
}

#[test]
fn mock_a_writer_holding_the_lock_past_the_budget_gets_the_guest_the_empty_table() {
    a_writer_holding_the_lock_past_the_budget_gets_the_guest_the_empty_table_on("mock");
}

fn a_writer_holding_the_lock_past_the_budget_gets_the_guest_the_empty_table_on(hv: &str) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x61)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let _vmm = ChildGuard(
        snp_vmm_attest_on(
            hv,
            &certs,
            "certs-timeout=20,busy-budget=500",
            "requests=100000,interval-ms=2,retry-ms=20,max-busy-retries=10000",
            &events,
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    assert_eq!(events.wait_for("report", 1)[0]["properties"]["entries"], 3);
    // The management tool takes the lock and keeps it.
    let tool = ManagementLock::take(&certs);
    let fallback = &events.wait_for("fallback", 1)[0]["properties"];
    assert_eq!(
        (fallback["reason"].as_str(), fallback["ret"].as_u64()),
        (Some("lock-timeout"), Some(0)),
        "{hv}"
    );
    assert_eq!(fallback["on_error"], "empty");
    let streak = fallback["busy_streak_ms"].as_u64().unwrap();
    assert!(streak >= 500, "{hv}: busy for {streak} ms first");
    // The guest's request ends with the empty table while the tool
    // still holds the lock: told busy for about the budget, no longer.
    let report = support::poll(30, "a report after the fallback", || {
        let all = events.all();
        let at = all.iter().position(|e| e["event"] == "fallback")?;
        all[at..].iter().find(|e| e["event"] == "report").cloned()
    });
    let r = &report["properties"];
    assert_eq!(r["status"], "ok", "{hv}: {r}");
    assert_eq!(
        (r["entries"].as_u64(), r["table_len"].as_u64()),
        (Some(0), Some(24))
    );
    assert!(r["busy_retries"].as_u64().unwrap() >= 1, "{hv}: busy first");
    assert_eq!(r["matches"], true, "the guest got what the VMM delivered");
    assert!(lock_held(&certs), "{hv}: the tool still holds the lock");
    tool.release();
}

/// Whether anyone holds a lock on `path` right now.
fn lock_held(path: &std::path::Path) -> bool {
    !snp_certs::lock::holders(path).unwrap().is_empty()
}

#[test]
fn kvm_a_broken_file_gets_the_empty_table_at_once_or_busy_as_configured() {
    a_broken_file_gets_the_empty_table_at_once_or_busy_as_configured_on(kvm());
}

#[test]
fn mock_a_broken_file_gets_the_empty_table_at_once_or_busy_as_configured() {
    a_broken_file_gets_the_empty_table_at_once_or_busy_as_configured_on("mock");
}

fn a_broken_file_gets_the_empty_table_at_once_or_busy_as_configured_on(hv: &str) {
    for (on_error, break_it) in [
        ("empty", "delete"),
        ("empty", "garbage"),
        ("busy", "garbage"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.bin");
        fs::write(&certs, table(0x62)).unwrap();
        let events = Events(dir.path().join("events.jsonl"));
        let _vmm = ChildGuard(
            snp_vmm_attest_on(
                hv,
                &certs,
                &format!("on-error={on_error}"),
                "requests=100000,interval-ms=2,retry-ms=1,max-busy-retries=3",
                &events,
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        );
        let first = &events.wait_for("report", 1)[0]["properties"];
        assert_eq!(first["entries"], 3, "{hv}: the file first");
        match break_it {
            "delete" => fs::remove_file(&certs).unwrap(),
            _ => fs::write(&certs, [0x5a; 100]).unwrap(),
        }
        let fallback = &events.wait_for("fallback", 1)[0]["properties"];
        let reason = if break_it == "delete" {
            "file-missing"
        } else {
            "file-invalid"
        };
        assert_eq!(fallback["reason"], reason, "{hv} {on_error} {break_it}");
        // The first report the guest made after that answer.
        let report = support::poll(30, "a report after the fallback", || {
            let all = events.all();
            let at = all.iter().position(|e| e["event"] == "fallback")?;
            all[at..].iter().find(|e| e["event"] == "report").cloned()
        });
        let r = &report["properties"];
        if on_error == "empty" {
            assert_eq!(fallback["ret"], 0);
            assert_eq!(
                (r["status"].as_str(), r["entries"].as_u64()),
                (Some("ok"), Some(0))
            );
            assert_eq!(
                r["busy_retries"], 0,
                "{hv}: the empty table at once, no busy"
            );
        } else {
            assert_eq!(fallback["ret"], 11);
            assert_eq!(r["status"], "gave-up-busy", "{hv}: {r}");
        }
    }
}

#[test]
fn kvm_a_vmm_started_during_an_update_waits_for_it_and_serves() {
    a_vmm_started_during_an_update_waits_for_it_and_serves_on(kvm());
}

#[test]
fn mock_a_vmm_started_during_an_update_waits_for_it_and_serves() {
    a_vmm_started_during_an_update_waits_for_it_and_serves_on("mock");
}

fn a_vmm_started_during_an_update_waits_for_it_and_serves_on(hv: &str) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    let bytes = table(0x63);
    fs::write(&certs, &bytes).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let tool = ManagementLock::take(&certs);
    let mut vmm = ChildGuard(
        snp_vmm_attest_on(hv, &certs, "startup-wait=60000", "requests=1", &events)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // It says once that it waits, and for whom.
    let line = stderr_line(&mut vmm, &["waiting up to 60000 ms for", "to release"]);
    assert!(line.contains(&format!("pid {}", tool.pid())), "{line}");
    assert!(
        events.named("created").is_empty(),
        "no VM before the lock is free"
    );
    tool.release();
    let status = vmm.wait_exit(60);
    let mut out = String::new();
    std::io::Read::read_to_string(vmm.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{hv}: {out}");
    let (_, _, sum) = expected_report_for(&bytes).unwrap();
    assert!(
        out.contains(&format!("checksum={sum:#010x} matches")),
        "{out}"
    );
}

#[test]
fn sigint_during_the_startup_wait_ends_the_vmm_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x64)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let tool = ManagementLock::take(&certs);
    let mut vmm = ChildGuard(
        snp_vmm_attest_on("mock", &certs, "startup-wait=300000", "requests=1", &events)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    stderr_line(&mut vmm, &["waiting up to"]);
    let pid = vmm.0.id() as libc::pid_t;
    // SAFETY: kill() has no memory-safety preconditions; the child is ours
    // and not yet reaped.
    let sent = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(sent, 0);
    let line = stderr_line(&mut vmm, &["interrupted during start-up"]);
    assert!(line.contains("no VM was created"), "{line}");
    assert_eq!(vmm.wait_exit(30).code(), Some(130));
    assert!(events.named("created").is_empty());
    tool.release();
}

fn table_of(len: usize) -> Vec<u8> {
    let mut b = TableBuilder::new();
    let mut data = vec![0x65; len];
    data[0] = 0x30;
    b.add(CertKind::Vcek, data).unwrap();
    b.build().unwrap()
}

#[test]
fn a_table_above_16_kib_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("big.bin");
    fs::write(&certs, table_of(17 * 1024)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let out = snp_vmm_attest_on("mock", &certs, "", "requests=1", &events)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Linux guests cannot receive more than 16384 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("allow-large"), "{stderr}");
    let out = snp_vmm_attest_on("mock", &certs, "allow-large=on", "requests=1", &events)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("entries=1 len=17456"), "{stdout}");
}

#[test]
fn an_api_socket_in_use_ends_the_vmm_before_any_vm_exists() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x66)).unwrap();
    let socket = dir.path().join("api.sock");
    let _live = UnixListener::bind(&socket).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let out = snp_vmm_attest_on("mock", &certs, "", "requests=1", &events)
        .arg("--api-socket")
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    let vm_events: Vec<_> = events
        .all()
        .into_iter()
        .filter(|e| e["source"] == "vm")
        .collect();
    assert!(vm_events.is_empty(), "{vm_events:?}");
}

// On SNP hosts (scripts/run_snp_host_tests.sh): the same, with the SNP
// guest in a real SEV-SNP VM asking through KVM_EXIT_SNP_REQ_CERTS.

#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_a_writer_holding_the_lock_past_the_budget_gets_the_guest_the_empty_table() {
    a_writer_holding_the_lock_past_the_budget_gets_the_guest_the_empty_table_on("kvm-snp");
}

#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_a_broken_file_gets_the_empty_table_at_once_or_busy_as_configured() {
    a_broken_file_gets_the_empty_table_at_once_or_busy_as_configured_on("kvm-snp");
}

#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_a_vmm_started_during_an_update_waits_for_it_and_serves() {
    a_vmm_started_during_an_update_waits_for_it_and_serves_on("kvm-snp");
}

/// `--platform sev_snp=on` on a KVM host without SEV-SNP ends before any VM
/// exists, naming what is missing; on an SNP host the same command runs the
/// SNP guest to the end.
#[test]
fn kvm_an_snp_vm_needs_an_snp_host_and_says_what_is_missing() {
    support::require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x67)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let out = snp_vmm_attest_on("kvm-snp", &certs, "", "requests=1", &events)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let snp_host = fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp")
        .is_ok_and(|v| matches!(v.trim(), "Y" | "1"));
    if snp_host {
        assert!(out.status.success(), "{stderr}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KVM_X86_SNP_VM"), "{stderr}");
    assert!(stderr.contains("--check-host"), "{stderr}");
    let vm_events: Vec<_> = events
        .all()
        .into_iter()
        .filter(|e| e["source"] == "vm")
        .collect();
    assert!(vm_events.is_empty(), "{vm_events:?}");
}
