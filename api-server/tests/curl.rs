//! The real server driven with `curl --unix-socket`, as the docs show.
//! curl is required (`scripts/setup.sh` installs it): without it these
//! tests fail, saying so, rather than pass without testing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::fake_vmm as common;

use std::process::Command;

use common::{Harness, write_file};
use serde_json::{Value, json};

/// Panics, saying how to fix it, where curl cannot run.
fn require_curl() {
    let found = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "these tests drive the server with curl, which is not installed: run scripts/setup.sh"
    );
}

/// Runs curl and returns (status, headers, body).
fn curl(h: &Harness, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--include", "--unix-socket"])
        .arg(&h.socket)
        .args(["-X", method])
        .arg(format!("http://localhost/api/v1/{endpoint}"));
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[test]
fn documented_examples_work() {
    require_curl();
    let h = Harness::start();
    let (status, _, body) = curl(&h, "GET", "vmm.ping", None);
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["hypervisor"], "mock");

    let config = r#"{"cpus":{"boot_vcpus":1},"memory":{"size":67108864},"snp":{"certs_timeout":100,"doorbell":true},"payload":{"test_guest":{"kind":"attest","requests":100,"interval_ms":50}}}"#;
    assert_eq!(curl(&h, "PUT", "vm.create", Some(config)).0, 204);
    assert_eq!(curl(&h, "PUT", "vm.boot", None).0, 204);
    let (status, _, body) = curl(&h, "GET", "vm.info", None);
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["state"], "Running");

    let file = h.path("certs.bin");
    write_file(&file);
    let update = json!({"certs_file": file, "certs_timeout": 200}).to_string();
    let (status, headers, body) = curl(&h, "PUT", "vm.snp-certs", Some(&update));
    assert_eq!(status, 200);
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    let v = json_of(&body);
    assert_eq!(v["certs_file"], file.to_str().unwrap());
    assert_eq!(v["certs_timeout"], 200);
    assert_eq!(v["generation"], 1);

    let (status, _, body) = curl(&h, "PUT", "vm.snp-certs", Some(r#"{"certs_file": null}"#));
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["certs_file"], Value::Null);
    let (status, _, body) = curl(&h, "GET", "vm.snp-certs", None);
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["certs_timeout"], 200);
    let (status, _, body) = curl(&h, "GET", "vm.counters", None);
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["snp-certs"]["delivered"], 1);
    assert_eq!(curl(&h, "PUT", "vm.create", Some("{}")).0, 409);

    assert_eq!(curl(&h, "PUT", "vm.shutdown", None).0, 204);
    assert_eq!(curl(&h, "PUT", "vm.delete", None).0, 204);
    assert_eq!(curl(&h, "PUT", "vmm.shutdown", None).0, 204);
}

#[test]
fn every_error_class() {
    require_curl();
    let h = Harness::start();
    let (status, _, body) = curl(&h, "GET", "vm.info", None);
    assert_eq!(
        (status, json_of(&body)),
        (404, json!(["No VM has been created"]))
    );
    h.boot();

    let cases = [
        (
            "{",
            json!([
                "Invalid vm.snp-certs body",
                "EOF while parsing an object at line 1 column 1"
            ]),
        ),
        (
            r#"{"certs_file": "/x", "surprise": true}"#,
            json!([
                "Invalid vm.snp-certs body",
                "surprise: unknown field `surprise`, expected one of `certs_file`, `certs_timeout`, `busy_budget`, `on_error`, `allow_large` at line 1 column 31"
            ]),
        ),
        (
            r#"{"certs_timeout": "fast"}"#,
            json!([
                "Invalid vm.snp-certs body",
                "certs_timeout: invalid type: string \"fast\", expected u64 at line 1 column 24"
            ]),
        ),
        (
            r#"{"certs_file": "/no/such/file"}"#,
            json!(["certs-file /no/such/file is missing or not a regular file"]),
        ),
    ];
    for (body, chain) in cases {
        let (status, _, answer) = curl(&h, "PUT", "vm.snp-certs", Some(body));
        assert_eq!(status, 400, "{body}");
        assert_eq!(json_of(&answer), chain, "{body}");
    }

    let (status, headers, body) = curl(&h, "POST", "vm.snp-certs", Some("{}"));
    assert_eq!(status, 405);
    assert!(headers.contains("\r\nallow: get, put"), "{headers}");
    assert_eq!(
        json_of(&body),
        json!(["/api/v1/vm.snp-certs does not take POST; allowed: GET, PUT"])
    );

    let (status, _, body) = curl(&h, "GET", "vm.nonsense", None);
    assert_eq!(
        (status, json_of(&body)),
        (404, json!(["Unknown endpoint /api/v1/vm.nonsense"]))
    );

    let big = format!("{{\"certs_file\": \"/{}\"}}", "x".repeat(70_000));
    let (status, _, body) = curl(&h, "PUT", "vm.snp-certs", Some(&big));
    assert_eq!(status, 413);
    assert_eq!(
        json_of(&body),
        json!(["Request body is larger than 65536 bytes"])
    );

    let (status, _, body) = curl(&h, "PUT", "vm.boot", None);
    assert_eq!(
        (status, json_of(&body)),
        (409, json!(["The VM is Running, not Created"]))
    );

    // The configuration is unchanged by all of that.
    let (_, _, body) = curl(&h, "GET", "vm.snp-certs", None);
    assert_eq!(json_of(&body)["generation"], 0);
}
