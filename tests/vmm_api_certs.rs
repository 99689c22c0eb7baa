//! End-to-end tests of run-time certs configuration over the REST API: a
//! real `snp-vmm --api-socket` process whose attestation guest keeps asking
//! for certificates, driven by `snp-remote`, `curl --unix-socket` (which
//! `scripts/setup.sh` installs; a test fails without it) and raw HTTP, with real certs files, real locks held by
//! `snp-certs lock` and the real event file.
//!
//! Each test runs twice: `kvm_*` on KVM (the runner skips it, and says so,
//! where `/dev/kvm` is not usable) and `mock_*` on `--hypervisor mock`. The
//! API, the certs service and the event stream are the same code on both;
//! only the guest differs (the real program, or its Rust twin).
//!
//! A guest report's `checksum` is the FNV-1a of the table the guest
//! received, so `test_guests::attest::expected_report_for(table)` tells which file
//! a request was served from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::time::Duration;

use serde_json::{Value, json};
use support::api::{ApiVmm, certs_file, checksum, looping_guest, position, props, str_of};
use support::{ManagementLock, kvm};

#[test]
fn kvm_certs_file_changes_while_the_guest_runs_reach_later_requests() {
    certs_file_changes_while_the_guest_runs_reach_later_requests(kvm());
}

#[test]
fn mock_certs_file_changes_while_the_guest_runs_reach_later_requests() {
    certs_file_changes_while_the_guest_runs_reach_later_requests("mock");
}

/// Changing the certs file through `snp-remote` and then through `curl`
/// while the guest runs: requests before each change get the old table,
/// later ones the new one, with no going back; each change is acknowledged
/// with the new configuration and reported as `config-changed` with its
/// generation.
fn certs_file_changes_while_the_guest_runs_reach_later_requests(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_bytes) = certs_file(dir.path(), "a.bin", 0xa1);
    let (b, b_bytes) = certs_file(dir.path(), "b.bin", 0xb2);
    let (c, c_bytes) = certs_file(dir.path(), "c.bin", 0xc3);
    let sums = [checksum(&a_bytes), checksum(&b_bytes), checksum(&c_bytes)];
    assert!(sums[0] != sums[1] && sums[1] != sums[2] && sums[0] != sums[2]);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ""));
    let reports_with = |sum: u64, from: usize| {
        vmm.events
            .wait(&format!("3 reports with checksum {sum:#x}"), |all| {
                let n = all[from..]
                    .iter()
                    .filter(|e| e["event"] == "report" && props(e)["checksum"] == sum)
                    .count();
                (n >= 3).then_some(())
            });
    };
    reports_with(sums[0], 0);

    // 1. snp-remote, with a path relative to its current directory.
    let run = vmm.remote_in(
        dir.path(),
        &["--summary", "set-certs", "--certs-file", "b.bin"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("certs-file: {}\n", b.display())),
        "{run:?}"
    );
    assert!(run.stdout.contains("generation: 1\n"), "{run:?}");
    assert!(run.stdout.contains("certs-timeout: 100 ms\n"), "{run:?}");
    let acked_b = vmm.events.len();
    let changed = vmm.events.wait_named_from(0, "config-changed", 1);
    assert_eq!(changed[0]["source"], "snp-certs");
    assert_eq!(
        props(&changed[0]),
        &json!({"certs_file": b, "certs_timeout": 100, "previous_certs_file": a,
                "busy_budget": 30000, "on_error": "empty", "allow_large": false,
                "generation": 1, "warnings": []})
    );
    reports_with(sums[1], acked_b);

    // 2. curl.
    let body = format!(r#"{{"certs_file": "{}"}}"#, c.display());
    let r = vmm.curl(
        "vm.snp-certs",
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let answer = r.json();
    assert_eq!(answer["certs_file"], str_of(&c));
    assert_eq!(answer["generation"], 2);
    assert_eq!(answer["certs_timeout"], 100);
    let acked_c = vmm.events.len();
    let changed = vmm.events.wait_named_from(0, "config-changed", 2);
    assert_eq!(
        props(&changed[1]),
        &json!({"certs_file": c, "certs_timeout": 100, "previous_certs_file": b,
                "busy_budget": 30000, "on_error": "empty", "allow_large": false,
                "generation": 2, "warnings": []})
    );
    reports_with(sums[2], acked_c);

    let now = vmm.remote_json(&["certs"]);
    assert_eq!(now["certs_file"], str_of(&c));
    assert_eq!(now["generation"], 2);

    // What the guest got, request by request.
    let all = vmm.events.with(<[Value]>::to_vec);
    let phase = |sum: &Value| sums.iter().position(|s| sum == s);
    let mut phases = Vec::new();
    for r in all.iter().filter(|e| e["event"] == "report") {
        let p = props(r);
        assert_eq!(p["status"], "ok", "{r}");
        assert_eq!(p["matches"], true, "{r}");
        let ph = phase(&p["checksum"]).unwrap_or_else(|| panic!("unknown table in {r}"));
        phases.push(ph);
    }
    assert!(
        phases.windows(2).all(|w| w[0] <= w[1]),
        "a request went back to an older table: {phases:?}"
    );
    for ph in 0..3 {
        assert!(
            phases.iter().filter(|&&p| p == ph).count() >= 3,
            "{phases:?}"
        );
    }
    let files = [
        (&a, a_bytes.len()),
        (&b, b_bytes.len()),
        (&c, c_bytes.len()),
    ];
    let mut delivered_phases = Vec::new();
    for d in all.iter().filter(|e| e["event"] == "delivered") {
        let p = props(d);
        let ph = files
            .iter()
            .position(|(f, _)| p["certs_file"] == str_of(f))
            .unwrap_or_else(|| panic!("unknown file in {d}"));
        assert_eq!(p["bytes"], files[ph].1, "{d}");
        delivered_phases.push(ph);
    }
    assert!(delivered_phases.windows(2).all(|w| w[0] <= w[1]));
    // A request in flight at a change finishes with the old file: at most
    // one (one vCPU) old delivery is reported after each change.
    for (generation, old) in [(1, &a), (2, &b)] {
        let at = position(&all, |e| {
            e["event"] == "config-changed" && props(e)["generation"] == generation
        })
        .unwrap();
        let late = all[at..]
            .iter()
            .filter(|e| e["event"] == "delivered" && props(e)["certs_file"] == str_of(old))
            .count();
        assert!(
            late <= 1,
            "{late} deliveries of {} after generation {generation}",
            old.display()
        );
    }
}

#[test]
fn kvm_certs_timeout_changes_take_effect() {
    certs_timeout_changes_take_effect(kvm());
}

#[test]
fn mock_certs_timeout_changes_take_effect() {
    certs_timeout_changes_take_effect("mock");
}

/// `certs_timeout` changes take effect for the next request: with 0 a
/// request held off by the management tool's exclusive lock tries once
/// (`busy`, `lock_wait_us` 0); with 50 it waits at least 50 ms first; once
/// the tool releases the lock, deliveries resume. (The lock is released
/// while each timeout is set; see
/// `certs_timeout_can_change_while_the_management_tool_holds_the_lock`.)
fn certs_timeout_changes_take_effect(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x21);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ""));
    vmm.events.wait_named_from(0, "report", 2);

    let run = vmm.remote(&["--summary", "set-certs", "--certs-timeout", "0"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("certs-timeout: 0 ms\n"), "{run:?}");
    let tool = ManagementLock::take(&a);
    vmm.events.wait_named_from(0, "busy", 3);
    tool.release();
    let released = vmm.events.len();
    vmm.events.wait_named_from(released, "delivered", 1);
    let busy_zero = vmm.events.named("busy");
    for e in &busy_zero {
        let p = props(e);
        assert_eq!(p["reason"], "lock-timeout", "{e}");
        assert_eq!(p["ret"], 11, "{e}");
        assert_eq!(p["lock_wait_us"], 0, "a single try: {e}");
    }

    let answer = vmm.remote_json(&["set-certs", "--certs-timeout", "50"]);
    assert_eq!(answer["certs_timeout"], 50);
    assert_eq!(answer["certs_file"], str_of(&a), "the file is kept");
    let tool = ManagementLock::take(&a);
    let busy_50 = vmm.events.wait_named_from(0, "busy", busy_zero.len() + 2);
    tool.release();
    let released = vmm.events.len();
    for e in &busy_50[busy_zero.len()..] {
        // A timeout answer comes once the request's whole certs-timeout is
        // spent: `lock_wait_us` counts from the start of the request, as
        // the deadline does (opening the file included), so it is never
        // below the timeout, however slow the machine.
        let p = props(e);
        assert_eq!(p["reason"], "lock-timeout", "{e}");
        assert!(p["lock_wait_us"].as_u64().unwrap() >= 50_000, "{e}");
    }
    // Deliveries resume, and a guest that was told busy gets its table.
    vmm.events.wait_named_from(released, "delivered", 2);
    vmm.events.wait("a report after busy retries", |all| {
        all.iter()
            .find(|e| {
                e["event"] == "report"
                    && props(e)["status"] == "ok"
                    && props(e)["busy_retries"].as_u64() > Some(0)
            })
            .cloned()
    });
    let counters = vmm.remote_json(&["certs"])["stats"].clone();
    assert!(counters["lock_wait_us"]["max"].as_u64().unwrap() >= 50_000);
    assert!(counters["requests"]["busy"].as_u64().unwrap() >= busy_50.len() as u64);
    assert!(counters["reasons"]["lock-timeout"].as_u64().unwrap() >= busy_50.len() as u64);
}

#[test]
fn kvm_certs_timeout_can_change_while_the_management_tool_holds_the_lock() {
    certs_timeout_can_change_while_the_management_tool_holds_the_lock(kvm());
}

#[test]
fn mock_certs_timeout_can_change_while_the_management_tool_holds_the_lock() {
    certs_timeout_can_change_while_the_management_tool_holds_the_lock("mock");
}

/// The sequence of the issue's tests literally: set the timeout to 0,
/// hold the exclusive lock, then set it to 50 *while the lock is held*:
/// the new timeout must be accepted (the certs file does not change, so
/// there is nothing to validate under the lock) and take effect at once.
fn certs_timeout_can_change_while_the_management_tool_holds_the_lock(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x23);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ",certs-timeout=0"));
    vmm.events.wait_named_from(0, "report", 1);
    let tool = ManagementLock::take(&a);
    let before = vmm.events.wait_named_from(0, "busy", 2);
    for e in &before {
        assert_eq!(props(e)["lock_wait_us"], 0, "{e}");
    }
    let r = vmm.raw("PUT", "vm.snp-certs", Some(br#"{"certs_timeout": 50}"#));
    assert_eq!(
        r.status,
        200,
        "changing only certs_timeout while a management tool holds the lock was refused: {}",
        r.text()
    );
    let n = vmm.events.named("busy").len();
    let after = vmm.events.wait_named_from(0, "busy", n + 2);
    // The first may have been in flight at the change. The others spent
    // the new timeout: `lock_wait_us` counts from the start of the request,
    // as its deadline does, so a timeout answer reports at least 50 ms
    // whatever else (opening the file) the request did meanwhile.
    for e in &after[n + 1..] {
        assert_eq!(props(e)["reason"], "lock-timeout", "{e}");
        assert!(props(e)["lock_wait_us"].as_u64().unwrap() >= 50_000, "{e}");
    }
    tool.release();
    let released = vmm.events.len();
    vmm.events.wait_named_from(released, "delivered", 1);
}

#[test]
fn kvm_a_certs_file_gone_bad_is_logged_when_it_starts_and_when_it_clears() {
    a_certs_file_gone_bad_is_logged_when_it_starts_and_when_it_clears(kvm());
}

#[test]
fn mock_a_certs_file_gone_bad_is_logged_when_it_starts_and_when_it_clears() {
    a_certs_file_gone_bad_is_logged_when_it_starts_and_when_it_clears("mock");
}

/// A certs file that goes bad under a running VM is logged as a fault
/// with a few lines, not a line per request: one when it starts (naming
/// the reason and the file), none while it lasts (here shorter than the
/// repeat interval), and one when it clears, counting the faulty answers
/// exactly as the counters do. About 300 faulty requests, at most 20
/// warnings.
fn a_certs_file_gone_bad_is_logged_when_it_starts_and_when_it_clears(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_bytes) = certs_file(dir.path(), "a.bin", 0x51);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ""));
    vmm.events.wait_named_from(0, "report", 1);
    let before = vmm.stderr().len();

    // Rewritten in place with bytes that are no table.
    fs::write(&a, vec![0x41; a_bytes.len()]).unwrap();
    let broken = vmm.events.len();
    let faulty = vmm.events.wait("300 fallback answers", |all| {
        let n = all[broken..]
            .iter()
            .filter(|e| e["event"] == "fallback" && props(e)["reason"] == "file-invalid")
            .count();
        (n >= 300).then_some(n)
    });
    fs::write(&a, &a_bytes).unwrap();
    let fixed = vmm.events.len();
    vmm.events.wait_named_from(fixed, "delivered", 1);
    let stats = vmm.remote_json(&["certs"])["stats"].clone();
    let invalid = stats["fallbacks"]["file-invalid"].as_u64().unwrap();
    assert!(invalid >= faulty as u64, "{stats}");

    let cleared = "cleared after";
    let log = support::poll(support::api::DEADLINE, "the fault's end in the log", || {
        let log = vmm.stderr()[before..].to_owned();
        log.contains(cleared).then_some(log)
    });
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings.len() <= 20,
        "{} warnings for {faulty} faulty requests:\n{log}",
        warnings.len()
    );
    let started: Vec<&&str> = warnings
        .iter()
        .filter(|l| l.contains("answered with the fallback (on-error=empty), ret 0: file-invalid"))
        .collect();
    assert_eq!(started.len(), 1, "{log}");
    assert!(
        started[0].contains(&format!(
            "Certs file {} is not a valid certificate table",
            a.display()
        )),
        "{log}"
    );
    let end: Vec<&&str> = warnings.iter().filter(|l| l.contains(cleared)).collect();
    assert_eq!(end.len(), 1, "{log}");
    assert!(
        end[0].contains(&format!("file-invalid cleared after {invalid} requests")),
        "the count is the counters': {log}"
    );
}

#[test]
fn kvm_a_put_that_raced_another_is_applied_on_top_of_it() {
    a_put_that_raced_another_is_applied_on_top_of_it(kvm());
}

#[test]
fn mock_a_put_that_raced_another_is_applied_on_top_of_it() {
    a_put_that_raced_another_is_applied_on_top_of_it("mock");
}

/// A PUT that changes the certs file validates it without holding
/// anything, so another PUT can change the configuration meanwhile; the
/// file's change must then be recomputed from that newer configuration,
/// never installed over it. Here the file PUT waits for a management tool
/// holding the new file while a second PUT changes the busy budget: in the
/// end both changes are there.
fn a_put_that_raced_another_is_applied_on_top_of_it(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x61);
    let (b, _) = certs_file(dir.path(), "b.bin", 0x62);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ",certs-timeout=1000"));
    vmm.events.wait_named_from(0, "report", 1);
    let before = vmm.remote_json(&["certs"]);
    assert_ne!(before["busy_budget"], 12345);
    let tool = ManagementLock::take(&b);
    let socket = vmm.socket.clone();
    let file_put = std::thread::spawn(move || {
        api_server::ApiClient::new(&socket)
            .unwrap()
            .with_timeout(Duration::from_secs(30))
            .raw_request(
                "PUT",
                "/api/v1/vm.snp-certs",
                Some(json!({"certs_file": str_of(&b)}).to_string().into_bytes()),
            )
            .unwrap()
    });
    // The file PUT's validation waits for the tool's lock on b.
    support::wait_for_lock_waiter(&dir.path().join("b.bin"));
    let r = vmm.raw("PUT", "vm.snp-certs", Some(br#"{"busy_budget": 12345}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    tool.release();
    let r = file_put.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let now = vmm.remote_json(&["certs"]);
    assert_eq!(
        now["certs_file"],
        str_of(&dir.path().join("b.bin")),
        "{now}"
    );
    assert_eq!(
        now["busy_budget"], 12345,
        "the budget change was kept: {now}"
    );
    assert_eq!(now["certs_timeout"], 1000, "{now}");
}
