//! The `snp-remote` binary against the real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod certs_support;
use test_support::fake_vmm as common;

use std::path::Path;
use std::process::{Command, Output};

use certs_support::closed_pipe;
use common::{Harness, write_file};
use serde_json::Value;
use vmm_api::{CpusConfig, PayloadConfig, TestGuestConfig, VmState, VmmAction};

fn snp_remote(socket: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snp-remote"))
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(h: &Harness, args: &[&str]) -> Run {
    let out = snp_remote(&h.socket, h.dir.path(), args);
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(h: &Harness, args: &[&str]) -> String {
    let r = run(h, args);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    assert_eq!(r.stderr, "", "{args:?}");
    r.stdout
}

/// As `ch-remote`: the VMM's JSON answer, as it came, on one line.
#[test]
fn ping_prints_the_json_answer_and_a_summary_on_request() {
    let h = Harness::start();
    let out = ok(&h, &["ping"]);
    assert!(out.starts_with('{') && out.ends_with("}\n"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hypervisor"], "mock");
    assert_eq!(v["features"], serde_json::json!(["mock"]));
    assert_eq!(v["pid"], std::process::id());
    // --json changes nothing on success.
    assert_eq!(ok(&h, &["--json", "ping"]), out);
    let out = ok(&h, &["ping", "--summary"]);
    assert!(
        out.starts_with("snp-vmm 0.1.0 (build 0.1.0-test), pid "),
        "{out}"
    );
    assert!(out.contains("features: mock\n"), "{out}");
    assert!(out.contains("hypervisor: mock\n"), "{out}");
    assert!(
        out.contains("SNP certificate exits: not supported\n"),
        "{out}"
    );
    let r = run(&h, &["ping", "--summary", "--json"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn lifecycle_with_options() {
    let h = Harness::start();
    write_file(&h.path("c.bin"));
    let out = ok(
        &h,
        &[
            "create",
            "--cpus",
            "boot=2",
            "--memory",
            "size=128M",
            "--snp",
            "certs_file=c.bin,certs-timeout=50,doorbell=ON",
            "--payload",
            "attest,requests=3,interval_ms=10",
        ],
    );
    assert_eq!(out, "");
    assert_eq!(ok(&h, &["boot"]), "");
    let info = ok(&h, &["info", "--summary"]);
    for line in [
        "state: Running\n",
        "vcpus: 2 (0: running, 1: running)\n",
        "memory: 128 MiB\n",
        "payload: attest, 3 requests, 10 ms apart\n",
        "doorbell: on\n",
        "certs-timeout: 50 ms\n",
    ] {
        assert!(info.contains(line), "{line:?} not in\n{info}");
    }
    // The relative certs-file was made absolute against the CLI's cwd.
    let expected = h.path("c.bin");
    assert!(
        info.contains(&format!("certs-file: {}\n", expected.display())),
        "{info}"
    );
    let s = h.vmm.state.lock().unwrap();
    let (config, state) = s.vm.clone().unwrap();
    assert_eq!(state, VmState::Running);
    assert_eq!(config.memory.size, 128 << 20);
    assert_eq!(
        config.payload,
        Some(PayloadConfig::test_guest(TestGuestConfig::Attest {
            requests: 3,
            interval_ms: 10,
            retry_ms: 10,
            max_busy_retries: 100,
        }))
    );
    assert_eq!(config.snp.certs_file, Some(expected));
    drop(s);
    assert_eq!(ok(&h, &["shutdown"]), "");
    assert_eq!(ok(&h, &["delete"]), "");
    assert_eq!(ok(&h, &["shutdown-vmm"]), "");
    assert!(h.vmm.state.lock().unwrap().vmm_shutdown);
}

#[test]
fn create_from_json_file() {
    let h = Harness::start();
    std::fs::write(
        h.path("vm.json"),
        r#"{"cpus": {"boot_vcpus": 1}, "payload": {"test_guest": {"kind": "attest", "requests": 9}}}"#,
    )
    .unwrap();
    ok(&h, &["create", "--config", "vm.json"]);
    let v: Value = serde_json::from_str(&ok(&h, &["info", "--json"])).unwrap();
    assert_eq!(
        v["config"]["payload"],
        serde_json::json!({"test_guest": {"kind": "attest", "requests": 9, "interval_ms": 0,
                           "retry_ms": 10, "max_busy_retries": 100}})
    );
    assert_eq!(v["state"], "Created");

    // A bad file is refused before anything is sent (exit 1, as
    // ch-remote's for a file it cannot use).
    std::fs::write(
        h.path("bad.json"),
        r#"{"cpus": {"boot_vcpus": 1, "max": 2}}"#,
    )
    .unwrap();
    let r = run(&h, &["create", "bad.json"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with(
            "snp-remote: Invalid VM configuration in bad.json: cpus.max: unknown field `max`"
        ),
        "{}",
        r.stderr
    );
    // max_vcpus other than boot_vcpus: refused with the reason.
    std::fs::write(
        h.path("max.json"),
        r#"{"cpus": {"boot_vcpus": 1, "max_vcpus": 2}}"#,
    )
    .unwrap();
    let r = run(&h, &["--json", "create", "max.json"]);
    assert_eq!(r.code, 1);
    let v: Value = serde_json::from_str(r.stderr.trim()).unwrap();
    assert_eq!(v["error"][0], "Invalid VM configuration");
    assert!(
        v["error"][1]
            .as_str()
            .unwrap()
            .starts_with("cpus.max_vcpus must equal cpus.boot_vcpus (1)"),
        "{v}"
    );
}

/// Runs snp-remote with `input` on stdin.
fn run_with_stdin(h: &Harness, args: &[&str], input: &str) -> Run {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_snp-remote"))
        .arg("--api-socket")
        .arg(&h.socket)
        .args(args)
        .current_dir(h.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[test]
fn create_reads_stdin_like_ch_remote() {
    for args in [&["create"][..], &["create", "-"][..]] {
        let h = Harness::start();
        let r = run_with_stdin(&h, args, r#"{"cpus": {"boot_vcpus": 3}}"#);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let (config, _) = h.vmm.state.lock().unwrap().vm.clone().unwrap();
        assert_eq!(config.cpus, CpusConfig::with_boot(3), "{args:?}");
    }
    let h = Harness::start();
    let r = run_with_stdin(&h, &["create", "-"], "{not json");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("snp-remote: Invalid VM configuration in stdin"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let h = Harness::start();
    let writer = closed_pipe();
    let out = Command::new(env!("CARGO_BIN_EXE_snp-remote"))
        .arg("--api-socket")
        .arg(&h.socket)
        .arg("ping")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}

#[test]
fn set_certs_clear_certs_certs_counters() {
    let h = Harness::start();
    h.boot();
    write_file(&h.path("v1.bin"));
    let out = ok(
        &h,
        &[
            "--summary",
            "set-certs",
            "--certs-file",
            "v1.bin",
            "--certs-timeout",
            "250",
        ],
    );
    let abs = h.path("v1.bin");
    assert!(
        out.contains(&format!("certs-file: {}\n", abs.display())),
        "{out}"
    );
    assert!(out.contains("certs-timeout: 250 ms\n"), "{out}");
    assert!(out.contains("generation: 1\n"), "{out}");
    {
        let actions = h.vmm.actions.lock().unwrap();
        let VmmAction::PutSnpCerts(update) = actions.last().unwrap() else {
            panic!()
        };
        assert_eq!(update.certs_file, Some(Some(abs.clone())));
        assert_eq!(update.certs_timeout, Some(250));
    }

    // Timeout only: the file is kept.
    let v: Value =
        serde_json::from_str(&ok(&h, &["--json", "set-certs", "--certs-timeout", "0"])).unwrap();
    assert_eq!(v["certs_file"], abs.to_str().unwrap());
    assert_eq!(v["certs_timeout"], 0);

    let out = ok(&h, &["certs", "--summary"]);
    assert!(out.contains("generation: 2\n"), "{out}");
    assert!(
        out.contains("requests: 2 (delivered 1, need-pages 1, busy 0, failed 0)\n"),
        "{out}"
    );

    let out = ok(&h, &["clear-certs", "--summary"]);
    assert!(
        out.contains("certs-file: none (guests get an empty table)\n"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&ok(&h, &["certs", "--json"])).unwrap();
    assert_eq!(v["certs_file"], Value::Null);

    let out = ok(&h, &["counters", "--summary"]);
    assert!(out.starts_with("snp-certs:\n"), "{out}");
    assert!(out.contains("\n  reason_size_query:"), "{out}");
    assert!(out.contains("\n  lock_wait_max_us:"), "{out}");
    let v: Value = serde_json::from_str(&ok(&h, &["counters", "--json"])).unwrap();
    assert_eq!(v["snp-certs"]["bytes_delivered"], 4096);
    assert_eq!(v["snp-certs"]["lock_wait_max_us"], 12);
}

#[test]
fn api_errors_exit_1_with_the_servers_message() {
    let h = Harness::start();
    let r = run(&h, &["info"]);
    assert_eq!((r.code, r.stdout.as_str()), (1, ""));
    assert_eq!(r.stderr, "snp-remote: No VM has been created\n");
    let r = run(&h, &["--json", "info"]);
    assert_eq!((r.code, r.stdout.as_str()), (1, ""));
    assert_eq!(r.stderr, "{\"error\":[\"No VM has been created\"]}\n");
    h.boot();
    let r = run(&h, &["set-certs", "--certs-file", "/no/such/file"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "snp-remote: certs-file /no/such/file is missing or not a regular file\n"
    );
    let r = run(&h, &["set-certs", "--certs-timeout", "99999"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "snp-remote: Invalid vm.snp-certs body: Certs timeout 99999 ms is above the maximum of 1000 ms (the vCPU waits with interrupts disabled)\n"
    );
    let r = run(&h, &["boot"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "snp-remote: The VM is Running, not Created\n")
    );
}

/// As `ch-remote`: 2 for arguments the command line parser refuses, 1
/// for every failure after that.
#[test]
fn usage_errors_exit_2_and_other_failures_1() {
    let h = Harness::start();
    // set-certs needs at least one option.
    let r = run(&h, &["set-certs"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--certs-file"), "{}", r.stderr);
    let r = run(&h, &["frobnicate"]);
    assert_eq!(r.code, 2);
    let r = run(&h, &["create", "--config", "vm.json", "--cpus", "boot=1"]);
    assert_eq!(r.code, 2);
    let r = run(&h, &["create", "--cpus", "boot=x"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("snp-remote: Invalid value \"x\" for boot"),
        "{}",
        r.stderr
    );

    let missing = h.path("nobody-here.sock");
    let out = snp_remote(&missing, h.dir.path(), &["ping"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "snp-remote: Cannot connect to API socket {}: ",
            missing.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // --api-socket is required.
    let out = Command::new(env!("CARGO_BIN_EXE_snp-remote"))
        .arg("ping")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `create` prints the VMM's answer: the Cloud Hypervisor settings it
/// ignores, as JSON, or one line each with `--summary`.
#[test]
fn create_prints_the_warnings() {
    let h = Harness::start();
    std::fs::write(
        h.path("ch.json"),
        r#"{"memory": {"size": 1048576, "shared": true}, "rng": {"src": "/dev/urandom"}}"#,
    )
    .unwrap();
    let out = ok(&h, &["create", "ch.json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{v}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("memory.shared is ignored")
    );
    // The settings went to the VMM as given.
    let (config, _) = h.vmm.state.lock().unwrap().vm.clone().unwrap();
    assert_eq!(config.warnings().len(), 2);
    ok(&h, &["delete"]);
    let out = ok(&h, &["--summary", "create", "ch.json"]);
    assert!(
        out.starts_with("warning: memory.shared is ignored"),
        "{out}"
    );
    assert!(out.contains("\nwarning: rng is ignored"), "{out}");
}
