//! The busy budget end to end: the real `snp-vmm` serves the attestation
//! guest (which asks again `retry-ms` after each busy answer, as a Linux
//! guest does after 2 s), a management tool (`snp-certs lock`, a second
//! process) holds the certs file's lock, and the VM's `busy-budget` is
//! set. Measured on the VMM's event stream, from the first busy answer:
//! the fallback comes after the budget, and no later than one retry after
//! it. On KVM (`kvm_*`, skipped where `/dev/kvm` is not usable), on the mock
//! backend and on the simulated SNP host (the KVM exit on the kernel model).
//!
//! Why the event timestamps bound the VMM's own clock: one vCPU answers
//! one request at a time, and each answer's event is stamped after the
//! answer and before the guest asks again. So the streak began after the
//! event before the first busy answer and no later than that answer's
//! event; and the VMM read its clock for request `i` after the event of
//! request `i - 1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::{ChildGuard, Events, ManagementLock, kvm, snp_vmm_attest_on, table};

/// The configured budget.
const BUDGET: Duration = Duration::from_millis(600);

/// When an event was stamped (the time since the monitor started).
fn at(event: &Value) -> Duration {
    let t = &event["timestamp"];
    Duration::new(
        t["secs"].as_u64().unwrap(),
        u32::try_from(t["nanos"].as_u64().unwrap()).unwrap(),
    )
}

/// The events from `from` on, a line each, for a failure message.
fn streak_events(all: &[Value], from: &Value) -> String {
    let start = all.iter().position(|e| e == from).unwrap_or(0);
    all[start..]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `event` was written on the vCPU's thread before it ran the
/// guest again: a certificate answer, a lease release or a guest report.
fn on_the_vcpu(event: &Value) -> bool {
    event["source"] == "snp-certs" && event["event"] != "config-changed"
        || event["source"] == "attest-guest"
}

#[test]
fn kvm_a_writer_holding_the_lock_gets_the_guest_busy_for_the_budget_and_no_longer() {
    busy_for_the_budget_and_no_longer_on(kvm());
}

#[test]
fn mock_a_writer_holding_the_lock_gets_the_guest_busy_for_the_budget_and_no_longer() {
    busy_for_the_budget_and_no_longer_on("mock");
}

#[test]
fn mock_snp_a_writer_holding_the_lock_gets_the_guest_busy_for_the_budget_and_no_longer() {
    busy_for_the_budget_and_no_longer_on("mock-snp");
}

fn busy_for_the_budget_and_no_longer_on(hv: &str) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, table(0x63)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    let _vmm = ChildGuard(
        snp_vmm_attest_on(
            hv,
            &certs,
            &format!("certs-timeout=10,busy-budget={}", BUDGET.as_millis()),
            "requests=100000,interval-ms=2,retry-ms=25,max-busy-retries=10000",
            &events,
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    events.wait_for("report", 1);
    let tool = ManagementLock::take(&certs);
    events.wait_for("fallback", 1);
    tool.release();

    let all = events.all();
    let first_busy = all
        .iter()
        .position(|e| e["event"] == "busy")
        .unwrap_or_else(|| panic!("{hv}: no busy answer"));
    let fallback = first_busy
        + all[first_busy..]
            .iter()
            .position(|e| e["event"] == "fallback")
            .unwrap();
    let before = all[..first_busy]
        .iter()
        .rev()
        .find(|e| on_the_vcpu(e))
        .unwrap_or_else(|| panic!("{hv}: nothing before the first busy answer"));
    let answers: Vec<&Value> = all[first_busy..=fallback]
        .iter()
        .filter(|e| e["source"] == "snp-certs" && e["event"] != "lease-released")
        .collect();
    let (last, busy) = answers.split_last().unwrap();
    assert!(
        busy.iter().all(|e| e["event"] == "busy"),
        "{hv}: only busy answers until the fallback: {answers:?}"
    );
    assert!(busy.len() >= 3, "{hv}: the guest kept asking: {answers:?}");
    let p = &last["properties"];
    assert_eq!(
        (p["reason"].as_str(), p["ret"].as_u64()),
        (Some("lock-timeout"), Some(0)),
        "{hv}: {last}"
    );

    // Not shorter: the streak began after `before`.
    let streak = at(last) - at(before);
    assert!(
        streak >= BUDGET,
        "{hv}: the fallback came {streak:?} after the last answer before the busy streak"
    );
    assert!(
        p["busy_streak_ms"].as_u64().unwrap() >= BUDGET.as_millis() as u64,
        "{hv}: {p}"
    );
    // Not longer: every request answered busy was asked after the
    // previous answer's event, and the streak began by the first busy
    // answer's event; so that event is less than the budget after it.
    // The fallback thus answers the first request asked once the
    // budget is spent: at most one retry after it.
    let first = at(busy[0]);
    for (previous, answer) in busy.iter().zip(&busy[1..]) {
        let asked_after = at(previous) - first;
        assert!(
            asked_after < BUDGET,
            "{hv}: answered busy ({}) to a request asked {asked_after:?} into the streak; \
             the events from the last one before the streak:\n{}",
            answer["properties"],
            streak_events(&all, before)
        );
    }
}
