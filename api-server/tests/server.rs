//! The real server on a real socket, driven with `ApiClient`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::fake_vmm as common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_server::client::ClientError;
use api_server::routes::{MAX_BODY_SIZE, Method};
use api_server::server::ServerError;
use api_server::{ApiClient, ApiServer};
use common::{FakeVmm, Harness, write_file};
use serde_json::{Value, json};
use vmm_api::{SnpCertsUpdate, VmConfig, VmState, VmmAction};

fn json_body(r: &api_server::ApiResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn lifecycle_and_typed_helpers() {
    let h = Harness::start();
    let c = h.client();
    let ping = c.ping().unwrap();
    assert_eq!(ping.hypervisor, "mock");
    assert_eq!(ping.pid, std::process::id());

    let err = c.info().unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, chain } if chain == &["No VM has been created"]),
        "{err:?}"
    );

    let config = VmConfig {
        cpus: vmm_api::CpusConfig::with_boot(2),
        ..VmConfig::default()
    };
    c.create_vm(&config).unwrap();
    let err = c.create_vm(&config).unwrap_err();
    assert!(
        matches!(err, ClientError::Api { status: 409, .. }),
        "{err:?}"
    );
    c.boot_vm().unwrap();
    let info = c.info().unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_eq!(info.vcpus.len(), 2);
    assert_eq!(info.config, config);

    let file = h.path("certs.bin");
    write_file(&file);
    let certs = c.put_snp_certs(&SnpCertsUpdate::set_file(&file)).unwrap();
    assert_eq!(certs.certs_file.as_deref(), Some(file.as_path()));
    assert_eq!(certs.generation, 1);
    assert_eq!(c.snp_certs().unwrap(), certs);
    let certs = c.put_snp_certs(&SnpCertsUpdate::clear_file()).unwrap();
    assert_eq!(certs.certs_file, None);
    assert_eq!(c.counters().unwrap(), common::counters().counter_map());

    c.shutdown_vm().unwrap();
    c.delete_vm().unwrap();
    c.shutdown_vmm().unwrap();
    assert!(h.vmm.state.lock().unwrap().vmm_shutdown);
}

#[test]
fn statuses_and_bodies() {
    let h = Harness::start();
    h.boot();
    let c = h.client();

    let r = c.request(Method::Get, "vmm.ping", None::<&()>).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(json_body(&r)["snp_req_certs_supported"], false);

    let r = c.request(Method::Put, "vm.boot", None::<&()>).unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(json_body(&r), json!(["The VM is Running, not Created"]));

    let r = c.request(Method::Put, "vm.shutdown", None::<&()>).unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));

    let r = c.request(Method::Get, "vm.counters", None::<&()>).unwrap();
    assert_eq!(r.status, 200);
    let v = json_body(&r);
    let device = &v["snp-certs"];
    for (counter, n) in [
        ("delivered", 1),
        ("need_pages", 1),
        ("busy", 0),
        ("failed", 0),
        ("reason_served", 1),
        ("reason_size_query", 1),
    ] {
        assert_eq!(device[counter], n, "{counter}");
    }
}

#[test]
fn refusals_leave_the_configuration_alone() {
    let h = Harness::start();
    h.boot();
    let c = h.client();
    let good = h.path("good.bin");
    write_file(&good);
    c.put_snp_certs(&SnpCertsUpdate::set_file(&good)).unwrap();
    let before = c.snp_certs().unwrap();
    let actions_before = h.vmm.actions.lock().unwrap().len();

    let put = |body: &[u8]| {
        c.raw_request("PUT", "/api/v1/vm.snp-certs", Some(body.to_vec()))
            .unwrap()
    };
    let cases: [(&[u8], u16, &str); 6] = [
        (
            b"{",
            400,
            "Invalid vm.snp-certs body: EOF while parsing an object",
        ),
        (
            br#"{"certs_file":"/x","bogus":1}"#,
            400,
            "Invalid vm.snp-certs body: bogus: unknown field `bogus`",
        ),
        (
            br#"{"certs_timeout":"10"}"#,
            400,
            "Invalid vm.snp-certs body: certs_timeout: invalid type: string",
        ),
        (
            br#"{"certs_timeout":20000}"#,
            400,
            "Invalid vm.snp-certs body: Certs timeout 20000 ms is above the maximum of 1000 ms",
        ),
        (
            br#"{"certs_file":"relative.bin"}"#,
            400,
            "Invalid vm.snp-certs body: Certs file relative.bin must be an absolute path",
        ),
        (b"", 400, "PUT vm.snp-certs needs a JSON body"),
    ];
    for (body, status, message) in cases {
        let r = put(body);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(body));
        assert!(
            r.error_message().starts_with(message),
            "{}",
            r.error_message()
        );
    }
    // None of those reached the VMM.
    assert_eq!(h.vmm.actions.lock().unwrap().len(), actions_before);

    // Refused by the VMM itself.
    let missing = h.path("missing.bin");
    let err = c
        .put_snp_certs(&SnpCertsUpdate::set_file(&missing))
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 400, chain } if chain.join(": ").contains("missing")),
        "{err:?}"
    );

    assert_eq!(c.snp_certs().unwrap(), before);
}

#[test]
fn oversized_body_is_413() {
    let h = Harness::start();
    h.boot();
    let c = h.client();
    let body = format!("{{\"certs_file\":\"/{}\"}}", "a".repeat(MAX_BODY_SIZE));
    let r = c
        .raw_request("PUT", "/api/v1/vm.snp-certs", Some(body.into_bytes()))
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.error_message(), "Request body is larger than 65536 bytes");
    // The server still serves.
    assert_eq!(c.ping().unwrap().hypervisor, "mock");
}

#[test]
fn wrong_method_is_405_with_allow() {
    let h = Harness::start();
    let c = h.client();
    for (method, path, allow) in [
        ("POST", "/api/v1/vm.snp-certs", "GET, PUT"),
        ("PUT", "/api/v1/vmm.ping", "GET"),
        ("GET", "/api/v1/vm.create", "PUT"),
        ("DELETE", "/api/v1/vm.delete", "PUT"),
    ] {
        let r = c.raw_request(method, path, None).unwrap();
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.allow.as_deref(), Some(allow), "{method} {path}");
        assert_eq!(
            r.error_message(),
            format!("{path} does not take {method}; allowed: {allow}")
        );
    }
}

#[test]
fn unknown_endpoint_is_404() {
    let h = Harness::start();
    let c = h.client();
    for path in ["/api/v1/vm.bogus", "/api/v2/vm.info", "/", "/api/v1/"] {
        let r = c.raw_request("GET", path, None).unwrap();
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_message(), format!("Unknown endpoint {path}"));
    }
    // Cloud Hypervisor's endpoints that snp-vmm does not offer say so.
    let r = c.raw_request("PUT", "/api/v1/vm.pause", None).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        r.error_chain(),
        [
            "Unknown endpoint /api/v1/vm.pause",
            "snp-vmm does not implement Cloud Hypervisor's vm.pause"
        ]
    );
    // A query string does not change the endpoint: this 404 is the VMM's.
    let r = c.raw_request("GET", "/api/v1/vm.info?x=1", None).unwrap();
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (404, "No VM has been created")
    );
}

#[test]
fn socket_is_mode_0600_and_removed_at_shutdown() {
    let mut h = Harness::start();
    let metadata = std::fs::symlink_metadata(&h.socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o600);
    // No private directory is left next to it.
    let entries: Vec<_> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [std::ffi::OsString::from("api.sock")]);
    h.server.take().unwrap().shutdown();
    assert!(!h.socket.exists());
    let err = h.client().ping().unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = ApiServer::start(&path, Arc::new(FakeVmm::default())).unwrap();
    assert_eq!(
        ApiClient::new(&path).unwrap().ping().unwrap().hypervisor,
        "mock"
    );
    server.shutdown();
    assert!(!path.exists());
}

#[test]
fn live_socket_is_not_stolen() {
    let h = Harness::start();
    let err = ApiServer::start(&h.socket, Arc::new(FakeVmm::default())).unwrap_err();
    assert!(matches!(err, ServerError::InUse(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "API socket {} is already in use by a live process",
            h.socket.display()
        )
    );
    // The first server still serves.
    assert_eq!(h.client().ping().unwrap().hypervisor, "mock");
}

#[test]
fn regular_file_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    std::fs::write(&path, b"precious").unwrap();
    let err = ApiServer::start(&path, Arc::new(FakeVmm::default())).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket(_)), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = ApiServer::start(&path, Arc::new(FakeVmm::default())).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket(_)), "{err:?}");
    assert!(path.is_dir());
}

#[test]
fn missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/api.sock");
    let err = ApiServer::start(&path, Arc::new(FakeVmm::default())).unwrap_err();
    assert!(matches!(err, ServerError::Bind { .. }), "{err:?}");
}

/// Starts a `vm.shutdown` that the VMM takes `delay` to answer, and
/// Starts a `vm.shutdown` that the fake VMM holds (its gate closed) and
/// returns once the VMM has it in hand.
fn shutdown_held_in_flight(
    h: &Harness,
) -> std::thread::JoinHandle<Result<(), api_server::client::ClientError>> {
    h.vmm.hold_shutdown.close();
    let c = h.client();
    let slow = std::thread::spawn(move || c.shutdown_vm());
    poll_until("the VMM holds vm.shutdown", || {
        h.vmm
            .actions
            .lock()
            .unwrap()
            .contains(&VmmAction::ShutdownVm)
    });
    slow
}

/// Polls `cond` (yielding) until it holds, failing after 20 s.
fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[test]
fn a_slow_vmm_call_does_not_stall_other_requests() {
    let h = Harness::start();
    h.boot();
    let slow = shutdown_held_in_flight(&h);
    // Answered while the VMM still holds the other call.
    h.client().ping().unwrap();
    h.client().info().unwrap();
    assert!(!slow.is_finished(), "the held call is still in flight");
    h.vmm.hold_shutdown.open();
    slow.join().unwrap().unwrap();
}

#[test]
fn shutdown_lets_a_request_in_flight_finish() {
    let mut h = Harness::start();
    h.boot();
    let slow = shutdown_held_in_flight(&h);
    let server = h.server.take().unwrap();
    let socket = h.socket.clone();
    // Open the gate once the server has stopped accepting: the call in
    // flight must still get its answer.
    let opener = std::thread::spawn({
        let vmm = std::sync::Arc::clone(&h.vmm);
        move || {
            poll_until("the server stops accepting", || {
                std::os::unix::net::UnixStream::connect(&socket).is_err()
            });
            vmm.hold_shutdown.open();
        }
    });
    server.shutdown();
    opener.join().unwrap();
    slow.join().unwrap().unwrap();
    assert!(!h.socket.exists());
}

#[test]
fn many_sequential_and_parallel_clients() {
    let h = Harness::start();
    h.boot();
    let before = h.vmm.actions.lock().unwrap().len();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = h.client();
            std::thread::spawn(move || (0..25).map(|_| c.counters().unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let expected = common::counters().counter_map();
    for t in threads {
        let answers = t.join().unwrap();
        assert_eq!(answers.len(), 25);
        for answer in answers {
            assert_eq!(answer, expected);
        }
    }
    // Every request reached the VMM once: none lost, none repeated.
    let actions = h.vmm.actions.lock().unwrap();
    assert_eq!(actions.len() - before, 100);
    assert!(
        actions[before..]
            .iter()
            .all(|a| *a == VmmAction::VmCounters)
    );
}
