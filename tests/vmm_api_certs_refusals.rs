//! End to end: bad run-time certs configuration over the REST API is
//! refused with the right status and message and changes nothing. A real
//! `snp-vmm --api-socket` process whose attestation guest keeps asking for
//! certificates, driven by `snp-remote`, `curl --unix-socket` (which
//! `scripts/setup.sh` installs; a test fails without it) and raw HTTP,
//! with real files (missing, a FIFO, not a table, locked by
//! `snp-certs lock`) and the real event file. The changes that are
//! accepted are `vmm_api_certs.rs`'s.
//!
//! Each test runs twice: `kvm_*` on KVM (the runner skips it, and says so,
//! where `/dev/kvm` is not usable) and `mock_*` on `--hypervisor mock`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api::{ApiVmm, certs_file, looping_guest, props, str_of};
use support::kvm;

/// One refused request: what is sent, and the status and message expected.
struct Refusal {
    what: &'static str,
    method: &'static str,
    endpoint: &'static str,
    body: Option<Vec<u8>>,
    status: u16,
    message: String,
}

#[test]
fn kvm_bad_inputs_are_refused_and_change_nothing() {
    bad_inputs_are_refused_and_change_nothing(kvm());
}

#[test]
fn mock_bad_inputs_are_refused_and_change_nothing() {
    bad_inputs_are_refused_and_change_nothing("mock");
}

/// Bad inputs each get the right status and message, and leave the VM
/// serving with its previous configuration: `GET vm.snp-certs` is
/// unchanged and the guest keeps getting the old file.
fn bad_inputs_are_refused_and_change_nothing(hv: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, _) = certs_file(d, "a.bin", 0x31);
    let missing = d.join("missing.bin");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let invalid = d.join("invalid.bin");
    fs::write(&invalid, b"not a certificate table at all").unwrap();
    let vmm = ApiVmm::start(d, hv, &looping_guest(&a, ",certs-timeout=250"));
    vmm.events.wait_named_from(0, "report", 1);
    let before = vmm.remote_json(&["certs"]);
    assert_eq!(before["certs_file"], str_of(&a));
    assert_eq!(before["certs_timeout"], 250);
    assert_eq!(before["generation"], 0);

    let put = |body: &str| Some(body.as_bytes().to_vec());
    let file_body = |p: &Path| put(&format!(r#"{{"certs_file": "{}"}}"#, p.display()));
    let mut big = br#"{"certs_file": ""#.to_vec();
    big.resize(64 * 1024 + 100, b'a');
    big.extend_from_slice(br#""}"#);
    let cases = vec![
        Refusal {
            what: "malformed JSON",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_file": "#),
            status: 400,
            message: "Invalid vm.snp-certs body: certs_file: EOF while parsing a value".into(),
        },
        Refusal {
            what: "not an object",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"["/etc/passwd", 5]"#),
            status: 400,
            message: "Invalid vm.snp-certs body: Expected a JSON object".into(),
        },
        Refusal {
            what: "unknown field",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_timeout": 5, "surprise": 1}"#),
            status: 400,
            message: "surprise: unknown field `surprise`, expected one of `certs_file`, `certs_timeout`, `busy_budget`, `on_error`, `allow_large`"
                .into(),
        },
        Refusal {
            what: "wrong type",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_timeout": "fast"}"#),
            status: 400,
            message: "certs_timeout: invalid type: string \"fast\"".into(),
        },
        Refusal {
            what: "null timeout",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_timeout": null}"#),
            status: 400,
            message: "certs_timeout: invalid type: null".into(),
        },
        Refusal {
            what: "no body",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: None,
            status: 400,
            message: "PUT vm.snp-certs needs a JSON body".into(),
        },
        Refusal {
            what: "missing file",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: file_body(&missing),
            status: 400,
            message: format!("Certs file {} does not exist", missing.display()),
        },
        Refusal {
            what: "a directory",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: file_body(d),
            status: 400,
            message: format!(
                "{} is a directory, not a regular file",
                d.display()
            ),
        },
        Refusal {
            what: "a FIFO",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: file_body(&fifo),
            status: 400,
            message: format!(
                "{} is a FIFO, not a regular file",
                fifo.display()
            ),
        },
        Refusal {
            what: "an invalid table",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: file_body(&invalid),
            status: 400,
            message: format!(
                "Certs file {} is not a valid certificate table",
                invalid.display()
            ),
        },
        Refusal {
            what: "a missing file with a valid timeout (nothing half-applied)",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(&format!(
                r#"{{"certs_file": "{}", "certs_timeout": 7}}"#,
                missing.display()
            )),
            status: 400,
            message: "does not exist".into(),
        },
        Refusal {
            what: "relative path",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_file": "a.bin"}"#),
            status: 400,
            message: "Certs file a.bin must be an absolute path".into(),
        },
        Refusal {
            what: "a file on procfs (reading it fails or has side effects)",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_file": "/proc/self/mem"}"#),
            status: 400,
            message: "/proc/self/mem is a file on procfs, not a regular file".into(),
        },
        Refusal {
            what: "timeout above the maximum",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_timeout": 1001}"#),
            status: 400,
            message: "Certs timeout 1001 ms is above the maximum of 1000 ms".into(),
        },
        Refusal {
            what: "oversized body",
            method: "PUT",
            endpoint: "vm.snp-certs",
            body: Some(big.clone()),
            status: 413,
            message: "Request body is larger than 65536 bytes".into(),
        },
        Refusal {
            what: "wrong method",
            method: "POST",
            endpoint: "vm.snp-certs",
            body: put("{}"),
            status: 405,
            message: "/api/v1/vm.snp-certs does not take POST; allowed: GET, PUT".into(),
        },
        Refusal {
            what: "wrong method on a GET-only endpoint",
            method: "DELETE",
            endpoint: "vm.counters",
            body: None,
            status: 405,
            message: "/api/v1/vm.counters does not take DELETE; allowed: GET".into(),
        },
        Refusal {
            what: "unknown endpoint",
            method: "GET",
            endpoint: "vm.nonsense",
            body: None,
            status: 404,
            message: "Unknown endpoint /api/v1/vm.nonsense".into(),
        },
        Refusal {
            what: "a body where none is taken",
            method: "GET",
            endpoint: "vm.snp-certs",
            body: put(r#"{"certs_timeout": 1}"#),
            status: 400,
            message: "GET vm.snp-certs takes no request body".into(),
        },
        Refusal {
            what: "a second VM",
            method: "PUT",
            endpoint: "vm.create",
            body: put("{}"),
            status: 409,
            message: "A VM already exists".into(),
        },
    ];

    let unchanged = |what: &str| {
        let now = vmm.remote_json(&["certs"]);
        for key in ["certs_file", "certs_timeout", "generation", "warnings"] {
            assert_eq!(now[key], before[key], "{what} changed {key}");
        }
    };
    let still_serving_a = |what: &str| {
        let from = vmm.events.len();
        let got = vmm.events.wait_named_from(from, "delivered", 1);
        assert_eq!(props(&got[0])["certs_file"], str_of(&a), "after {what}");
    };
    for case in &cases {
        let started = Instant::now();
        let r = vmm.raw(case.method, case.endpoint, case.body.as_deref());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} took {:?}",
            case.what,
            started.elapsed()
        );
        assert_eq!(r.status, case.status, "{}: {}", case.what, r.text());
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        // Cloud Hypervisor's shape: the error chain as an array of strings.
        let chain: Vec<&str> = body
            .as_array()
            .unwrap_or_else(|| panic!("{}: {body}", case.what))
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert!(!chain.is_empty(), "{}", case.what);
        let message = &chain.join(": ");
        assert!(
            message.contains(&case.message),
            "{}: {message:?} does not contain {:?}",
            case.what,
            case.message
        );
        assert!(!message.contains('\n'), "{}: {message:?}", case.what);
        if case.status == 405 {
            let allow = if case.endpoint == "vm.snp-certs" {
                "GET, PUT"
            } else {
                "GET"
            };
            assert_eq!(r.allow.as_deref(), Some(allow), "{}", case.what);
        }
        unchanged(case.what);
        still_serving_a(case.what);
    }

    // The same through the tools operators use.
    let run = vmm.remote(&["set-certs", "--certs-file", str_of(&missing)]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        format!(
            "snp-remote: Certs file {} does not exist",
            missing.display()
        )
    );
    let run = vmm.remote(&["set-certs", "--certs-timeout", "10001"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("above the maximum of 1000 ms"),
        "{run:?}"
    );
    let run = vmm.remote(&["set-certs"]);
    assert_eq!(run.code, 2, "set-certs needs an option: {run:?}");
    // No Content-Length: caught while reading, not from the header.
    let body_file = d.join("big.json");
    fs::write(&body_file, &big).unwrap();
    let r = vmm.curl(
        "vm.snp-certs",
        &[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", body_file.display()),
        ],
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json(), json!(["Request body is larger than 65536 bytes"]));
    let r = vmm.curl("vm.snp-certs", &["-X", "PUT", "-d", r#"{"certs_file": "#]);
    assert_eq!(r.status, 400, "{r:?}");
    let r = vmm.curl("vm.snp-certs", &["-X", "PATCH", "-d", "{}"]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, PUT")));
    unchanged("curl");
    still_serving_a("curl");
    assert!(
        vmm.events.named("config-changed").is_empty(),
        "a refused request changed the configuration"
    );
    // A good request still works afterwards.
    let answer = vmm.remote_json(&["set-certs", "--certs-timeout", "100"]);
    assert_eq!(answer["generation"], 1);
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(fs::metadata(path).unwrap().file_type().is_fifo());
}
