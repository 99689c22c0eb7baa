//! Unit tests of the request parser: every endpoint, every error class.

use std::collections::HashSet;
use std::path::PathBuf;

use super::*;
use vmm_api::{CpusConfig, PayloadConfig, TestGuestConfig};

fn parse(method: &str, endpoint: &str, body: &str) -> Result<VmmAction, ApiError> {
    parse_request(method, &format!("{API_ROOT}{endpoint}"), body.as_bytes())
}

fn bad(method: &str, endpoint: &str, body: &str) -> ApiError {
    parse(method, endpoint, body).unwrap_err()
}

#[test]
fn every_endpoint_without_body() {
    let cases = [
        ("GET", "vmm.ping", VmmAction::Ping),
        ("PUT", "vmm.shutdown", VmmAction::ShutdownVmm),
        ("PUT", "vm.boot", VmmAction::BootVm),
        ("GET", "vm.info", VmmAction::VmInfo),
        ("PUT", "vm.shutdown", VmmAction::ShutdownVm),
        ("PUT", "vm.delete", VmmAction::DeleteVm),
        ("GET", "vm.snp-certs", VmmAction::GetSnpCerts),
        ("GET", "vm.counters", VmmAction::VmCounters),
    ];
    for (method, endpoint, action) in cases {
        assert_eq!(
            parse(method, endpoint, "").unwrap(),
            action,
            "{method} {endpoint}"
        );
        assert_eq!(
            parse(method, endpoint, " \r\n").unwrap(),
            action,
            "{method} {endpoint}"
        );
        let err = bad(method, endpoint, "{}");
        assert_eq!(err.kind, ApiErrorKind::BadRequest);
        assert_eq!(
            err.message(),
            format!("{method} {endpoint} takes no request body")
        );
    }
}

#[test]
fn create_vm() {
    let body = r#"{"cpus":{"boot_vcpus":2},"memory":{"size":4194304},
        "snp":{"certs_file":"/c.bin","certs_timeout":5,"doorbell":true},
        "payload":{"test_guest":{"kind":"attest","requests":3,"interval_ms":7}}}"#;
    let VmmAction::CreateVm(config) = parse("PUT", "vm.create", body).unwrap() else {
        panic!("not CreateVm");
    };
    assert_eq!(config.cpus, CpusConfig::with_boot(2));
    assert_eq!(config.memory.size, 4 << 20);
    assert_eq!(config.snp.certs_file, Some(PathBuf::from("/c.bin")));
    assert!(config.snp.doorbell);
    assert_eq!(
        config.payload,
        Some(PayloadConfig::test_guest(TestGuestConfig::Attest {
            requests: 3,
            interval_ms: 7,
            retry_ms: 10,
            max_busy_retries: 100,
        }))
    );
    assert_eq!(
        parse("PUT", "vm.create", "{}").unwrap(),
        VmmAction::CreateVm(Box::default())
    );
}

#[test]
fn create_vm_refusals_name_the_field() {
    let cases = [
        (
            r#"{"cpus":{"boot_vcpus":"two"}}"#,
            "Invalid vm.create body: cpus.boot_vcpus: invalid type: string",
        ),
        (
            r#"{"cpus":{"boot_vcpus":300}}"#,
            "Invalid vm.create body: cpus.boot_vcpus: invalid value: integer `300`",
        ),
        (
            r#"{"cpus":{"boot_vcpus":0}}"#,
            "Invalid vm.create body: cpus.boot_vcpus must be between 1 and 8, got 0",
        ),
        (
            r#"{"cpus":{"boot_vcpus":2,"max_vcpus":4}}"#,
            "Invalid vm.create body: cpus.max_vcpus must equal cpus.boot_vcpus (2)",
        ),
        (
            r#"{"cpus":{"boot":2}}"#,
            "Invalid vm.create body: cpus.boot: unknown field `boot`",
        ),
        (
            r#"{"platform":{"sev_snp":"yes"}}"#,
            "Invalid vm.create body: platform.sev_snp: invalid type: string",
        ),
        (
            r#"{"payload":{"kernel":"/vmlinux"}}"#,
            "Invalid vm.create body: Invalid payload: payload.kernel is not supported: snp-vmm runs only its built-in test guests",
        ),
        (
            r#"{"memory":{"size":12345}}"#,
            "Invalid vm.create body: memory.size must be between",
        ),
        (
            r#"{"snp":{"certs_file":"rel"}}"#,
            "Invalid vm.create body: snp: Certs file rel must be an absolute path",
        ),
        (
            r#"{"snp":{"certs_timeout":1001}}"#,
            "Invalid vm.create body: snp: Certs timeout 1001 ms is above the maximum",
        ),
        (
            r#"{"snp":{"certs-file":"/x"}}"#,
            "Invalid vm.create body: snp.certs-file: unknown field `certs-file`",
        ),
        (
            r#"{"cpu":{}}"#,
            "Invalid vm.create body: cpu: unknown field `cpu`, expected one of `cpus`",
        ),
        (
            r#"{"payload":{"test_guest":{"kind":"linux"}}}"#,
            "Invalid vm.create body: payload.test_guest.kind: unknown variant `linux`",
        ),
        (
            r#"{"payload":{"kind":"attest"}}"#,
            "Invalid vm.create body: payload.kind: unknown field `kind`",
        ),
        (
            r#"{"payload":{"test_guest":{"kind":"attest","requests":0}}}"#,
            "Invalid vm.create body: Invalid payload: payload.test_guest.requests must be at least 1",
        ),
        ("[]", "Invalid vm.create body: Expected a JSON object"),
        ("null", "Invalid vm.create body: Expected a JSON object"),
        ("", "PUT vm.create needs a JSON body"),
    ];
    for (body, start) in cases {
        let err = bad("PUT", "vm.create", body);
        assert_eq!(err.kind, ApiErrorKind::BadRequest, "{body}");
        assert!(
            err.message().starts_with(start),
            "{body}: {}",
            err.message()
        );
        assert_eq!(err.chain[0], start.split(": ").next().unwrap(), "{body}");
    }
}

#[test]
fn put_snp_certs_absent_null_value() {
    let update = |body| match parse("PUT", "vm.snp-certs", body).unwrap() {
        VmmAction::PutSnpCerts(u) => u,
        other => panic!("{other:?}"),
    };
    assert_eq!(update("{}"), SnpCertsUpdate::default());
    assert_eq!(
        update(r#"{"certs_file":null}"#),
        SnpCertsUpdate::clear_file()
    );
    assert_eq!(
        update(r#"{"certs_file":"/new.bin"}"#),
        SnpCertsUpdate::set_file("/new.bin")
    );
    assert_eq!(
        update(r#"{"certs_file":"/n","certs_timeout":0}"#),
        SnpCertsUpdate {
            certs_file: Some(Some("/n".into())),
            certs_timeout: Some(0),
            ..SnpCertsUpdate::default()
        }
    );
    assert_eq!(
        update(r#"{"certs_timeout":1000}"#),
        SnpCertsUpdate {
            certs_timeout: Some(1_000),
            ..SnpCertsUpdate::default()
        }
    );
}

#[test]
fn put_snp_certs_refusals() {
    let cases = [
        (
            "{",
            "Invalid vm.snp-certs body: EOF while parsing an object",
        ),
        (
            "{\"certs_file\": }",
            "Invalid vm.snp-certs body: certs_file: expected value",
        ),
        (
            "not json",
            "Invalid vm.snp-certs body: Expected a JSON object",
        ),
        (
            "{not json}",
            "Invalid vm.snp-certs body: key must be a string",
        ),
        (
            r#"{"certs_file":"/a"} x"#,
            "Invalid vm.snp-certs body: trailing characters",
        ),
        (
            r#"{"certs_file":"/a","extra":1}"#,
            "Invalid vm.snp-certs body: extra: unknown field `extra`",
        ),
        (
            r#"{"certs_timeout":"100"}"#,
            "Invalid vm.snp-certs body: certs_timeout: invalid type: string \"100\", expected u64",
        ),
        (
            r#"{"certs_timeout":-1}"#,
            "Invalid vm.snp-certs body: certs_timeout: invalid value: integer `-1`",
        ),
        (
            r#"{"certs_timeout":1.5}"#,
            "Invalid vm.snp-certs body: certs_timeout: invalid type: floating point",
        ),
        (
            r#"{"certs_timeout":null}"#,
            "Invalid vm.snp-certs body: certs_timeout: invalid type: null",
        ),
        (
            r#"{"certs_file":5}"#,
            "Invalid vm.snp-certs body: certs_file: invalid type: integer `5`",
        ),
        (
            r#"{"certs_file":"rel/c.bin"}"#,
            "Invalid vm.snp-certs body: Certs file rel/c.bin must be an absolute path",
        ),
        (
            r#"{"certs_timeout":1001}"#,
            "Invalid vm.snp-certs body: Certs timeout 1001 ms is above the maximum of 1000 ms",
        ),
        (
            r#"{"busy_budget":50001}"#,
            "Invalid vm.snp-certs body: Busy budget 50001 ms is above the maximum of 50000 ms",
        ),
        (
            r#"{"on_error":"eio"}"#,
            "Invalid vm.snp-certs body: on_error: unknown variant `eio`",
        ),
        ("", "PUT vm.snp-certs needs a JSON body"),
    ];
    for (body, start) in cases {
        let err = bad("PUT", "vm.snp-certs", body);
        assert_eq!(err.kind, ApiErrorKind::BadRequest, "{body}");
        assert!(
            err.message().starts_with(start),
            "{body}: {}",
            err.message()
        );
        assert_eq!(err.chain[0], start.split(": ").next().unwrap(), "{body}");
    }
}

#[test]
fn oversized_body_is_413() {
    let padding = " ".repeat(MAX_BODY_SIZE);
    let err = bad("PUT", "vm.snp-certs", &format!("{{}}{padding}"));
    assert_eq!(err.kind, ApiErrorKind::PayloadTooLarge);
    assert_eq!(err.kind.status(), 413);
    // Exactly the limit is fine.
    let body = format!("{{}}{}", &padding[2..]);
    assert_eq!(body.len(), MAX_BODY_SIZE);
    parse("PUT", "vm.snp-certs", &body).unwrap();
}

#[test]
fn wrong_method_is_405_with_allowed_methods() {
    for (method, endpoint, allowed) in [
        ("PUT", "vmm.ping", "GET"),
        ("GET", "vm.create", "PUT"),
        ("POST", "vm.snp-certs", "GET, PUT"),
        ("DELETE", "vm.delete", "PUT"),
        ("HEAD", "vm.info", "GET"),
        ("get", "vm.info", "GET"),
    ] {
        let err = bad(method, endpoint, "");
        assert_eq!(
            err.kind,
            ApiErrorKind::MethodNotAllowed,
            "{method} {endpoint}"
        );
        assert_eq!(
            err.message(),
            format!("{API_ROOT}{endpoint} does not take {method}; allowed: {allowed}")
        );
    }
    assert_eq!(
        allowed_methods("/api/v1/vm.snp-certs"),
        [Method::Get, Method::Put]
    );
    assert_eq!(allowed_methods("/api/v1/nope"), []);
}

#[test]
fn unknown_endpoint_is_404() {
    for path in [
        "/api/v1/vm.nope",
        "/api/v1/",
        "/api/v2/vm.info",
        "/vm.info",
        "/",
        "/api/v1/vm.info/",
        "/api/v1/VM.INFO",
    ] {
        let err = parse_request("GET", path, b"").unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::NotFound, "{path}");
        assert_eq!(err.message(), format!("Unknown endpoint {path}"));
    }
}

#[test]
fn route_table_is_consistent() {
    let mut seen = HashSet::new();
    for route in ROUTES {
        assert!(
            seen.insert((route.endpoint, route.method)),
            "duplicate {route:?}"
        );
        assert!(route.path().starts_with(API_ROOT));
        if route.method == Method::Get {
            assert!(route.request.is_none(), "GET with a body: {route:?}");
        }
    }
    assert_eq!(ROUTES.len(), 10);
    let with_body: Vec<_> = ROUTES
        .iter()
        .filter_map(|r| r.request.map(|schema| (r.method, r.endpoint, schema)))
        .collect();
    assert_eq!(
        with_body,
        [
            (Method::Put, "vm.create", "VmConfig"),
            (Method::Put, "vm.snp-certs", "SnpCertsUpdate")
        ]
    );
}
