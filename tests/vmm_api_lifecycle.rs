//! End-to-end tests of the VM lifecycle over the REST API: counters
//! against the event stream, shutdown and delete (no lease outlives the VM,
//! a stop cuts a lock wait short), and `snp-remote` driving it all.
//!
//! Each test runs twice: `kvm_*` on KVM (the runner skips it, and says so,
//! where `/dev/kvm` is not usable) and `mock_*` on `--hypervisor mock`. The
//! API, the certs service and the event stream are the same code on both;
//! only the guest differs (the real program, or its Rust twin).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use serde_json::{Value, json};
use snp_certs::lock::{self, LockKind};
use support::api::{ApiVmm, DEADLINE, certs_file, checksum, looping_guest, props};
use support::{ManagementLock, kvm};

#[test]
fn kvm_counters_match_the_events_and_shutdown_leaks_no_lease() {
    counters_match_the_events_and_shutdown_leaks_no_lease(kvm());
}

#[test]
fn mock_counters_match_the_events_and_shutdown_leaks_no_lease() {
    counters_match_the_events_and_shutdown_leaks_no_lease("mock");
}

/// After `snp-remote shutdown`, the counters equal what the event file
/// shows request by request, the guest's reports agree with the
/// deliveries, no lease is held, and a writer gets the exclusive lock at
/// once while `snp-vmm` is still alive. Each event kind carries the
/// properties a consumer needs.
fn counters_match_the_events_and_shutdown_leaks_no_lease(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_bytes) = certs_file(dir.path(), "a.bin", 0x41);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ",certs-timeout=0"));
    vmm.events.wait_named_from(0, "report", 5);
    // Some busy answers too.
    let tool = ManagementLock::take(&a);
    vmm.events.wait_named_from(0, "busy", 2);
    tool.release();
    let released = vmm.events.len();
    vmm.events.wait_named_from(released, "report", 3);

    let run = vmm.remote(&["shutdown"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    // No lease outlives the VM: a writer gets the lock without waiting.
    let writer = fs::OpenOptions::new().write(true).open(&a).unwrap();
    assert!(
        lock::try_lock(&writer, LockKind::Exclusive).unwrap(),
        "the exclusive lock is not free right after the VM shut down"
    );
    lock::unlock(&writer).unwrap();
    assert!(vmm.child.0.id() > 0);
    assert_eq!(vmm.remote(&["ping"]).code, 0, "snp-vmm is still alive");

    // Everything sent before the shutdown event is in the file once it is.
    let shutdown = vmm.events.wait_named_from(0, "shutdown", 1);
    assert_eq!(props(&shutdown[0])["leases_held"], 0);
    let counters = vmm.remote_json(&["certs"])["stats"].clone();
    assert_eq!(
        vmm.remote_json(&["certs"])["stats"],
        counters,
        "still counting after shutdown"
    );
    let info = vmm.remote_json(&["info"]);
    // As Cloud Hypervisor reports a VM it shut down: ready to boot again.
    assert_eq!(info["state"], "Created");
    assert_eq!(info["vcpus"], json!([{"id": 0, "state": "stopped"}]));

    let all = vmm.events.with(<[Value]>::to_vec);
    let named = |n: &str| -> Vec<&Value> { all.iter().filter(|e| e["event"] == n).collect() };
    let (delivered, need, busy, released, reports) = (
        named("delivered"),
        named("need-pages"),
        named("busy"),
        named("lease-released"),
        named("report"),
    );
    eprintln!(
        "{} delivered, {} need-pages, {} busy, {} lease-released, {} reports",
        delivered.len(),
        need.len(),
        busy.len(),
        released.len(),
        reports.len()
    );
    let c = &counters;
    assert_eq!(c["requests"]["delivered"], delivered.len(), "{c}");
    assert_eq!(c["requests"]["need_pages"], need.len(), "{c}");
    assert_eq!(c["requests"]["busy"], busy.len(), "{c}");
    assert_eq!(c["requests"]["failed"], named("failed").len(), "{c}");
    assert_eq!(c["leases_released"], released.len(), "{c}");
    assert_eq!(c["leases_held"], 0, "{c}");
    assert_eq!(c["events_dropped"], 0, "{c}");
    // vm.counters: the same numbers in Cloud Hypervisor's map.
    let map = vmm.remote_json(&["counters"]);
    let device = &map["snp-certs"];
    assert_eq!(device["delivered"], delivered.len(), "{map}");
    assert_eq!(device["need_pages"], need.len(), "{map}");
    assert_eq!(device["leases_released"], released.len(), "{map}");
    let bytes: u64 = delivered
        .iter()
        .map(|e| props(e)["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(c["bytes_delivered"], bytes, "{c}");
    let mut reasons = BTreeMap::new();
    for e in delivered.iter().chain(&need).chain(&busy) {
        *reasons
            .entry(props(e)["reason"].as_str().unwrap().to_owned())
            .or_insert(0u64) += 1;
    }
    assert_eq!(c["reasons"], json!(reasons), "{c}");
    assert_eq!(
        c["lock_wait_us"]["count"],
        delivered.len() + need.len() + busy.len(),
        "{c}"
    );
    // Every delivery took a lease and gave it back.
    assert_eq!(released.len(), delivered.len());

    // The guest's side: one ok report per delivery, except a delivery
    // whose report the shutdown cut off.
    let ok: Vec<&&Value> = reports
        .iter()
        .filter(|e| props(e)["status"] == "ok")
        .collect();
    let sum = checksum(&a_bytes);
    for r in &ok {
        assert_eq!(props(r)["matches"], true, "{r}");
        assert_eq!(props(r)["checksum"], sum, "{r}");
    }
    assert!(
        ok.len() == delivered.len() || ok.len() + 1 == delivered.len(),
        "{} ok reports for {} deliveries",
        ok.len(),
        delivered.len()
    );
    assert!(
        ok.iter()
            .any(|r| props(r)["busy_retries"].as_u64() > Some(0))
    );

    // What each kind of event says.
    for e in &delivered {
        let p = props(e);
        assert_eq!(e["source"], "snp-certs");
        assert_eq!(
            (&p["ret"], &p["reason"], &p["bytes"], &p["certs_file"]),
            (
                &json!(0),
                &json!("served"),
                &json!(a_bytes.len()),
                &json!(a)
            ),
            "{e}"
        );
        assert!(p["lock_wait_us"].is_u64() && p["vcpu"] == 0, "{e}");
    }
    for e in &need {
        let p = props(e);
        assert_eq!(
            (&p["ret"], &p["reason"], &p["npages"], &p["reply_npages"]),
            (&json!(28), &json!("size-query"), &json!(0), &json!(2)),
            "{e}"
        );
    }
    for e in &busy {
        let p = props(e);
        assert_eq!(
            (&p["ret"], &p["reason"]),
            (&json!(11), &json!("lock-timeout"))
        );
        assert_eq!(p["lock_wait_us"], 0, "{e}");
        assert_eq!(p["bytes"], 0, "{e}");
    }
    for e in &released {
        assert!(props(e)["held_us"].is_u64(), "{e}");
    }
    // Timestamps never go backwards.
    let ts = |e: &Value| {
        (
            e["timestamp"]["secs"].as_u64().unwrap(),
            e["timestamp"]["nanos"].as_u64().unwrap(),
        )
    };
    let single_thread: Vec<_> = all.iter().filter(|e| e["source"] == "snp-certs").collect();
    assert!(single_thread.windows(2).all(|w| ts(w[0]) <= ts(w[1])));
}

#[test]
fn kvm_lifecycle_through_snp_remote() {
    lifecycle_through_snp_remote(kvm());
}

#[test]
fn mock_lifecycle_through_snp_remote() {
    lifecycle_through_snp_remote("mock");
}

/// The VM lifecycle through `snp-remote`, as with `ch-remote`: create with
/// Cloud Hypervisor-style options, boot, info, shutdown, delete,
/// shutdown-vmm, with Cloud Hypervisor's states and transitions;
/// wrong-state and no-VM requests get the server's message and exit 1;
/// delete without a VM succeeds; the lifecycle steps are in the event
/// file.
fn lifecycle_through_snp_remote(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, _) = certs_file(d, "a.bin", 0x61);
    let mut vmm = ApiVmm::start(d, hv, &[]);
    let mode = fs::metadata(&vmm.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // ping prints the JSON answer, as ch-remote; --summary a summary.
    let run = vmm.remote(&["ping"]);
    assert_eq!(run.code, 0);
    let ping: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(ping["pid"], vmm.child.0.id());
    assert_eq!(ping["features"][0], hv, "{ping}");
    let run = vmm.remote(&["--summary", "ping"]);
    assert!(
        run.stdout
            .contains(&format!("pid {}\nhypervisor: {hv}\n", vmm.child.0.id())),
        "{run:?}"
    );

    let no_vm = "snp-remote: No VM: create one with PUT /api/v1/vm.create";
    for cmd in ["info", "boot", "shutdown", "certs", "counters"] {
        let run = vmm.remote(&[cmd]);
        assert_eq!((run.code, run.stderr.trim()), (1, no_vm), "{cmd}: {run:?}");
        assert!(run.stdout.is_empty());
    }
    assert_eq!(vmm.raw("GET", "vm.info", None).status, 404);
    // Deleting without a VM succeeds, as in Cloud Hypervisor.
    let run = vmm.remote(&["delete"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "", "")
    );

    let run = vmm.remote_in(
        d,
        &[
            "create",
            "--cpus",
            "boot=2",
            "--memory",
            "size=64M",
            "--snp",
            "certs_file=a.bin,certs-timeout=100,doorbell=On",
            "--payload",
            "attest,requests=100000,interval_ms=5",
        ],
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let run = vmm.remote(&["create", "--snp", "doorbell=on"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("A VM already exists"), "{run:?}");
    assert_eq!(vmm.raw("PUT", "vm.create", Some(b"{}")).status, 409);
    let info = vmm.remote_json(&["info"]);
    assert_eq!(info["state"], "Created");
    assert_eq!(
        info["vcpus"],
        json!([{"id": 0, "state": "created"}, {"id": 1, "state": "created"}])
    );
    assert_eq!(
        info["config"],
        json!({"cpus": {"boot_vcpus": 2, "max_vcpus": 2}, "memory": {"size": 64 << 20},
               "platform": {"sev_snp": false},
               "snp": {"certs_file": a, "certs_timeout": 100, "busy_budget": 30000,
                       "on_error": "empty", "allow_large": false, "startup_wait": 30000,
                       "doorbell": true},
               "payload": {"test_guest": {"kind": "attest", "requests": 100000, "interval_ms": 5,
                                          "retry_ms": 10, "max_busy_retries": 100}}})
    );

    let run = vmm.remote(&["boot"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let run = vmm.remote(&["boot"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "snp-remote: The VM is Running: shut it down before booting it again"
    );
    let r = vmm.raw("PUT", "vm.boot", None);
    assert_eq!(r.status, 409, "{}", r.text());
    vmm.events.wait_named_from(0, "report", 2);
    let run = vmm.remote(&["--summary", "info"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("state: Running\n"), "{run:?}");
    assert!(run.stdout.contains("vcpus: 2 (0: running, 1: "), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("certs-file: {}\n", a.display()))
    );
    let info = vmm.remote_json(&["info"]);
    assert_eq!(info["state"], "Running");
    assert_eq!(info["vcpus"][0], json!({"id": 0, "state": "running"}));
    assert_eq!(info["vcpus"].as_array().unwrap().len(), 2);
    assert!(info["certs"]["stats"]["requests"]["delivered"].as_u64() > Some(0));

    let run = vmm.remote(&["shutdown"]);
    assert_eq!(run.code, 0, "{run:?}");
    // As in Cloud Hypervisor, a VM shut down is Created: it can boot.
    assert_eq!(vmm.remote_json(&["info"])["state"], "Created");
    let run = vmm.remote(&["shutdown"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("The VM is Created: only a running VM can shut down"),
        "{run:?}"
    );
    assert_eq!(vmm.raw("PUT", "vm.shutdown", None).status, 409);
    assert_eq!(vmm.raw("PUT", "vm.create", Some(b"{}")).status, 409);
    // A shut-down VM boots again, as in Cloud Hypervisor: created anew
    // from its configuration.
    let reports = vmm.events.named("report").len();
    let run = vmm.remote(&["boot"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    assert_eq!(vmm.remote_json(&["info"])["state"], "Running");
    vmm.events.wait_named_from(0, "booted", 2);
    vmm.events.wait_named_from(0, "report", reports + 1);
    let run = vmm.remote(&["shutdown"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = vmm.remote(&["delete"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let run = vmm.remote(&["info"]);
    assert_eq!((run.code, run.stderr.trim()), (1, no_vm));
    assert_eq!(vmm.raw("PUT", "vm.delete", None).status, 204);

    let run = vmm.remote(&["shutdown-vmm"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let status = vmm.child.wait_exit(DEADLINE);
    assert!(status.success(), "snp-vmm exited with {status}");
    assert!(!vmm.socket.exists(), "the socket file was left behind");
    let run = vmm.remote(&["ping"]);
    assert_eq!(run.code, 1, "as ch-remote: {run:?}");
    assert!(
        run.stderr.contains("Cannot connect to API socket"),
        "{run:?}"
    );

    // The steps in the event file, in order (the monitor has flushed
    // everything: the process exited).
    let steps: Vec<(String, String)> = vmm.events.with(|all| {
        all.iter()
            .filter(|e| e["source"] == "vm" || e["source"] == "vmm")
            .map(|e| {
                (
                    e["source"].as_str().unwrap().to_owned(),
                    e["event"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    });
    let first = |source: &str, event: &str| {
        steps
            .iter()
            .position(|(s, e)| s == source && e == event)
            .unwrap_or_else(|| panic!("no {source} {event} event in {steps:?}"))
    };
    let order = [
        first("vmm", "started"),
        first("vm", "created"),
        first("vm", "booted"),
        first("vm", "shutdown"),
        first("vm", "deleted"),
        first("vmm", "stopped"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let created = vmm.events.named("created");
    assert_eq!(
        props(&created[0]),
        &json!({"vcpus": 2, "memory": 64 << 20, "hypervisor": hv, "certs_file": a,
                "payload": "attest"})
    );
    assert_eq!(props(&vmm.events.named("booted")[0])["vcpus"], 2);
    assert_eq!(props(&vmm.events.named("shutdown")[0])["leases_held"], 0);
}

#[test]
fn kvm_delete_after_shutdown_reports_a_single_shutdown() {
    delete_after_shutdown_reports_a_single_shutdown(kvm());
}

#[test]
fn mock_delete_after_shutdown_reports_a_single_shutdown() {
    delete_after_shutdown_reports_a_single_shutdown("mock");
}

/// Each lifecycle step is reported once: shutting the VM down and then
/// deleting it gives one `shutdown` event, not two.
fn delete_after_shutdown_reports_a_single_shutdown(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x71);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ""));
    vmm.events.wait_named_from(0, "report", 1);
    assert_eq!(vmm.remote(&["shutdown"]).code, 0);
    assert_eq!(vmm.remote(&["delete"]).code, 0);
    let steps = vmm.events.wait("the deleted event", |all| {
        let steps: Vec<Value> = all
            .iter()
            .filter(|e| e["source"] == "vm")
            .map(|e| e["event"].clone())
            .collect();
        steps.contains(&json!("deleted")).then_some(steps)
    });
    assert_eq!(
        steps,
        json!(["created", "booted", "shutdown", "deleted"])
            .as_array()
            .unwrap()
            .clone(),
        "lifecycle events"
    );
}

#[test]
fn kvm_a_closed_stdout_does_not_stop_the_guest() {
    a_closed_stdout_does_not_stop_the_guest(kvm());
}

#[test]
fn mock_a_closed_stdout_does_not_stop_the_guest() {
    a_closed_stdout_does_not_stop_the_guest("mock");
}

/// `snp-vmm --api-socket` is a daemon: nobody needs to read its standard
/// output. With stdout a pipe whose reader has gone (a supervisor that
/// closed it, `snp-vmm ... | head -1`), the guest must keep being served;
/// printing a report line must not kill (or, with a slow reader, stall)
/// the vCPU.
fn a_closed_stdout_does_not_stop_the_guest(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x81);
    let mut vmm = ApiVmm::start_with_stdout(dir.path(), hv, &looping_guest(&a, ""), Stdio::piped());
    // The reader goes away.
    drop(vmm.child.0.stdout.take());
    let from = vmm.events.len();
    support::poll(DEADLINE, "3 reports, or a vCPU panic", || {
        let stderr = vmm.stderr();
        if stderr.contains("panicked") {
            let info = vmm.remote_json(&["info"]);
            let why: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).take(2).collect();
            panic!(
                "a vCPU thread died writing to the closed stdout ({}); vm.info still says state {}, vCPU 0 {}",
                why.join(" / "),
                info["state"],
                info["vcpus"][0]["state"]
            );
        }
        (vmm.events.named_from(from, "report").len() >= 3).then_some(())
    });
    let info = vmm.remote_json(&["info"]);
    assert_eq!(info["vcpus"][0]["state"], "running", "{info}");
}

/// The stop that shuts a VM down ends a vCPU's lock wait: on KVM the vCPU
/// thread sleeps in `F_OFD_SETLKW` (the mock's kick sends no signal), and
/// the shutdown must not wait for the wait's own deadline. The cancelled
/// request says so (`lock-cancelled`) and waited less than its
/// certs-timeout.
#[test]
fn kvm_shutdown_is_prompt_while_a_vcpu_waits_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x51);
    let vmm = ApiVmm::start(dir.path(), kvm(), &looping_guest(&a, ",certs-timeout=1000"));
    vmm.events.wait_named_from(0, "report", 2);
    let tool = ManagementLock::take(&a);
    // One wait runs to its deadline; the guest asks again 10 ms later, so
    // the blocked wait found next has just begun.
    let busy_with = |reason: &'static str| {
        move |all: &[Value]| {
            all.iter()
                .find(|e| e["event"] == "busy" && props(e)["reason"] == reason)
                .cloned()
        }
    };
    vmm.events
        .wait("a lock-timeout answer", busy_with("lock-timeout"));
    support::wait_for_lock_waiter(&a);
    let run = vmm.remote(&["shutdown"]);
    assert_eq!(run.code, 0, "{run:?}");
    // That wait was cut short by the stop, not by its deadline (which
    // answers lock-timeout after 1000 ms or more).
    let cancelled = vmm
        .events
        .wait("a lock-cancelled answer", busy_with("lock-cancelled"));
    let waited = props(&cancelled)["lock_wait_us"].as_u64().unwrap();
    assert!(
        waited < 1_000_000,
        "the cancelled wait lasted {waited} us, its whole certs-timeout: {cancelled}"
    );
    assert_eq!(
        vmm.remote_json(&["counters"])["snp-certs"]["leases_held"],
        0
    );
    tool.release();
}

#[test]
fn kvm_sigterm_shuts_down_cleanly() {
    sigterm_shuts_down_cleanly(kvm());
}

#[test]
fn mock_sigterm_shuts_down_cleanly() {
    sigterm_shuts_down_cleanly("mock");
}

/// SIGTERM stops `snp-vmm` the way `vmm.shutdown` does: the VM is shut down
/// with no lease left, the socket is removed and the event stream is
/// complete.
fn sigterm_shuts_down_cleanly(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x71);
    let mut vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ""));
    vmm.events.wait_named_from(0, "report", 2);
    let pid = libc::pid_t::try_from(vmm.child.0.id()).unwrap();
    // SAFETY: signalling our own child, which is still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = vmm.child.wait_exit(DEADLINE);
    assert!(status.success(), "snp-vmm exited with {status}");
    assert!(!vmm.socket.exists(), "the socket file was left behind");
    let shutdown = vmm.events.named("shutdown");
    assert_eq!(shutdown.len(), 1);
    assert_eq!(props(&shutdown[0])["leases_held"], 0);
    assert_eq!(
        vmm.events.named("stopped").len(),
        1,
        "event stream closed cleanly"
    );
}
