//! End-to-end checks of documented claims that had no test of their own:
//! SIGINT in run-once mode still prints the summary, tables above 16 KiB
//! are reported in `vm.snp-certs` warnings when allowed, dropped events
//! are counted, extra vCPUs halt at once, and `PUT vm.snp-certs` answers
//! 409 while the new file is locked by a management tool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

use serde_json::Value;
use snp_certs::{CertKind, TableBuilder};
use support::api::{ApiVmm, DEADLINE_SECS, certs_file, looping_guest, props, snp_remote, str_of};
use support::{ChildGuard, Events, ManagementLock, kvm, poll, snp_vmm, snp_vmm_attest_on};

/// A valid one-entry table of about `len` bytes.
fn table_of(len: usize) -> Vec<u8> {
    let mut b = TableBuilder::new();
    let mut data = vec![0x66; len];
    data[0] = 0x30;
    b.add(CertKind::Vcek, data).unwrap();
    b.build().unwrap()
}

#[test]
fn kvm_sigint_without_an_api_socket_still_prints_the_summary() {
    sigint_without_an_api_socket_still_prints_the_summary(kvm());
}

#[test]
fn mock_sigint_without_an_api_socket_still_prints_the_summary() {
    sigint_without_an_api_socket_still_prints_the_summary("mock");
}

fn sigint_without_an_api_socket_still_prints_the_summary(hv: &str) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.bin");
    fs::write(&certs, support::table(0x5a)).unwrap();
    let events = Events(dir.path().join("events.jsonl"));
    // Files, not pipes: the per-request lines must never fill a pipe
    // nobody reads.
    let stdout = dir.path().join("stdout");
    let stderr = dir.path().join("stderr");
    let mut vmm = ChildGuard(
        snp_vmm_attest_on(hv, &certs, "", "requests=100000,interval-ms=2", &events)
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    events.wait_for("report", 1);
    let pid = vmm.0.id() as libc::pid_t;
    // SAFETY: kill() has no memory-safety preconditions; the child is
    // ours and not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = vmm.wait_exit(60);
    let out = fs::read_to_string(&stdout).unwrap();
    let err = fs::read_to_string(&stderr).unwrap();
    assert!(err.contains("interrupted: stopping the VM"), "{hv}: {err}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("{hv}: no summary in {out}"));
    let reported: u64 = summary
        .trim_start_matches("summary: ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reported >= 1, "{hv}: {summary}");
    assert!(summary.contains(", 0 did not"), "{hv}: {summary}");
    // Far fewer than the 100000 asked for: the run was cut short.
    assert!(reported < 100_000, "{hv}: {summary}");
    assert_eq!(status.code(), Some(0), "{hv}: {out}\n{err}");
    assert_eq!(events.named("stopped").len(), 1, "{hv}");
}

#[test]
fn kvm_a_table_above_16_kib_is_reported_in_the_warnings_when_allowed() {
    a_table_above_16_kib_is_reported_in_the_warnings_when_allowed(kvm());
}

#[test]
fn mock_a_table_above_16_kib_is_reported_in_the_warnings_when_allowed() {
    a_table_above_16_kib_is_reported_in_the_warnings_when_allowed("mock");
}

fn a_table_above_16_kib_is_reported_in_the_warnings_when_allowed(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let bytes = table_of(17 * 1024);
    assert!(bytes.len() > 16 * 1024);
    fs::write(&big, &bytes).unwrap();
    let warning = format!(
        "Table is {} bytes: Linux guests cannot receive more than 16384",
        bytes.len()
    );
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&big, ",allow-large=on"));
    let certs = vmm.remote_json(&["certs"]);
    assert_eq!(certs["allow_large"], true, "{certs}");
    assert_eq!(certs["warnings"], serde_json::json!([warning]), "{certs}");

    // Switched to at run time: the PUT answer and later GETs say so too,
    // and a small file clears the warning.
    let (small, _) = certs_file(dir.path(), "small.bin", 0x11);
    let r = vmm.raw(
        "PUT",
        "vm.snp-certs",
        Some(format!(r#"{{"certs_file": "{}"}}"#, str_of(&small)).as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        vmm.remote_json(&["certs"])["warnings"],
        serde_json::json!([])
    );
    let r = vmm.raw(
        "PUT",
        "vm.snp-certs",
        Some(format!(r#"{{"certs_file": "{}"}}"#, str_of(&big)).as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["warnings"], serde_json::json!([warning]), "{answer}");
    assert_eq!(
        vmm.remote_json(&["certs"])["warnings"],
        serde_json::json!([warning])
    );
}

fn mkfifo(path: &std::path::Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[test]
fn kvm_events_dropped_by_a_full_queue_are_counted() {
    events_dropped_by_a_full_queue_are_counted(kvm());
}

#[test]
fn mock_events_dropped_by_a_full_queue_are_counted() {
    events_dropped_by_a_full_queue_are_counted("mock");
}

fn events_dropped_by_a_full_queue_are_counted(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = certs_file(dir.path(), "certs.bin", 0x42);
    let fifo = dir.path().join("events.fifo");
    mkfifo(&fifo);
    // A consumer that never reads: once the pipe is full the writer
    // blocks, the one-event queue fills and every later event is dropped.
    let _consumer = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let socket = dir.path().join("api.sock");
    let mut args = looping_guest(&certs, "");
    args[3] = "attest,requests=1000000,interval-ms=0".into();
    let _vmm = ChildGuard(
        snp_vmm()
            .arg("--api-socket")
            .arg(&socket)
            .arg("--event-monitor")
            .arg(format!("path={},capacity=1", fifo.display()))
            .args(["--hypervisor", hv])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let remote_json = |args: &[&str]| -> Option<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = snp_remote(&socket, None, &all);
        (run.code == 0).then(|| serde_json::from_str(&run.stdout).unwrap())
    };
    let dropped = poll(DEADLINE_SECS, "events_dropped > 0 in vm.snp-certs", || {
        let certs = remote_json(&["certs"])?;
        let n = certs["stats"]["events_dropped"].as_u64().unwrap();
        (n > 0).then_some(n)
    });
    // The count only grows, and vm.counters has it too.
    let counters = poll(DEADLINE_SECS, "events_dropped in vm.counters", || {
        remote_json(&["counters"])
    });
    let in_map = counters["snp-certs"]["events_dropped"].as_u64().unwrap();
    assert!(in_map >= dropped, "{counters}");
}

#[test]
fn kvm_extra_vcpus_halt_at_once_while_vcpu_0_runs() {
    extra_vcpus_halt_on(kvm());
}

#[test]
fn mock_extra_vcpus_halt_at_once_while_vcpu_0_runs() {
    extra_vcpus_halt_on("mock");
}

fn extra_vcpus_halt_on(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = certs_file(dir.path(), "certs.bin", 0x77);
    let mut args = vec!["--cpus".to_owned(), "boot=3".to_owned()];
    args.extend(looping_guest(&certs, ""));
    let vmm = ApiVmm::start(dir.path(), hv, &args);
    vmm.events.wait_named_from(0, "report", 1);
    let info = poll(
        DEADLINE_SECS,
        &format!("{hv}: vCPUs 1 and 2 to halt"),
        || {
            let info = vmm.remote_json(&["info"]);
            let halted = |id: usize| info["vcpus"][id]["state"] == "halted";
            (halted(1) && halted(2)).then_some(info)
        },
    );
    // vCPU 0 still runs the guest (100000 requests): it is not its end
    // that halted the others.
    assert_eq!(info["vcpus"][0]["state"], "running", "{hv}: {info}");
    assert_eq!(info["state"], "Running", "{hv}: {info}");
    let from = vmm.events.len();
    vmm.events.wait_named_from(from, "report", 1);
    let info = vmm.remote_json(&["info"]);
    assert_eq!(
        info["vcpus"],
        serde_json::json!([
            {"id": 0, "state": "running"},
            {"id": 1, "state": "halted"},
            {"id": 2, "state": "halted"}
        ]),
        "{hv}"
    );
}

#[test]
fn kvm_put_snp_certs_answers_409_while_the_new_file_is_locked() {
    put_snp_certs_answers_409_while_the_new_file_is_locked(kvm());
}

#[test]
fn mock_put_snp_certs_answers_409_while_the_new_file_is_locked() {
    put_snp_certs_answers_409_while_the_new_file_is_locked("mock");
}

fn put_snp_certs_answers_409_while_the_new_file_is_locked(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x31);
    let (b, _) = certs_file(dir.path(), "b.bin", 0x32);
    let vmm = ApiVmm::start(dir.path(), hv, &looping_guest(&a, ",certs-timeout=50"));
    vmm.events.wait_named_from(0, "report", 1);
    let before = vmm.remote_json(&["certs"]);
    let tool = ManagementLock::take(&b);
    let r = vmm.raw(
        "PUT",
        "vm.snp-certs",
        Some(format!(r#"{{"certs_file": "{}"}}"#, str_of(&b)).as_bytes()),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let text = body.to_string();
    assert!(text.contains("An update is in progress: retry"), "{text}");
    // Nothing changed, and the guest is still served from a.
    let now = vmm.remote_json(&["certs"]);
    assert_eq!(now["certs_file"], before["certs_file"]);
    assert_eq!(now["generation"], before["generation"]);
    let from = vmm.events.len();
    let got = vmm.events.wait_named_from(from, "delivered", 1);
    assert_eq!(props(&got[0])["certs_file"], str_of(&a));
    // Once the tool is done, the same request is accepted.
    tool.release();
    let r = vmm.raw(
        "PUT",
        "vm.snp-certs",
        Some(format!(r#"{{"certs_file": "{}"}}"#, str_of(&b)).as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
