//! The raw bytes of responses, read off the socket: what Cloud
//! Hypervisor's client (`api_client`, used by `ch-remote`) needs. It sends
//! the requests below byte for byte as `api_client` writes them, and
//! reads the status code as everything after `HTTP/1.1 ` up to the line
//! end, the body length from `Content-Length: ` spelled in exactly that
//! case, and the body as UTF-8 decoded 256 bytes at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::fake_vmm as common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use common::Harness;

/// One exchange in `api_client`'s bytes; returns the whole response (the
/// server closes nothing, so it is read until the headers and as many
/// body bytes as `Content-Length` says).
fn exchange(h: &Harness, method: &str, endpoint: &str, body: Option<&str>) -> String {
    let mut socket = UnixStream::connect(&h.socket).unwrap();
    let mut request =
        format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    socket.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = socket.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed after {response:?}");
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            if response.len() >= end + 4 + length {
                break;
            }
        }
    }
    assert!(
        response.is_ascii(),
        "{}",
        String::from_utf8_lossy(&response)
    );
    String::from_utf8(response).unwrap()
}

fn head_and_body(response: &str) -> (Vec<&str>, &str) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.split("\r\n").collect(), body)
}

#[test]
fn status_line_carries_the_code_alone() {
    let h = Harness::start();
    for (method, endpoint, body, status) in [
        ("GET", "vmm.ping", None, "200"),
        ("GET", "vm.info", None, "404"),
        ("PUT", "vm.delete", None, "204"),
        ("PUT", "vm.create", Some("{\"cpus\": 1}"), "400"),
        ("PUT", "vm.create", Some("{}"), "204"),
        ("PUT", "vm.create", Some("{}"), "409"),
        ("GET", "vm.nonsense", None, "404"),
    ] {
        let response = exchange(&h, method, endpoint, body);
        let (head, _) = head_and_body(&response);
        // `api_client` trims what follows `HTTP/1.1 ` and parses it as a
        // number: the reason phrase must be empty.
        assert_eq!(
            head[0],
            format!("HTTP/1.1 {status} "),
            "{method} {endpoint}"
        );
    }
}

#[test]
fn headers_are_title_case_and_bodies_have_a_content_length() {
    let h = Harness::start();
    let response = exchange(&h, "GET", "vmm.ping", None);
    let (head, body) = head_and_body(&response);
    let length = format!("Content-Length: {}", body.len());
    assert!(head.contains(&length.as_str()), "{head:?}");
    assert!(head.contains(&"Content-Type: application/json"), "{head:?}");
    for line in &head[1..] {
        let name = line.split(':').next().unwrap();
        assert!(
            name.split('-')
                .all(|word| word.starts_with(|c: char| c.is_ascii_uppercase())),
            "header {name:?} is not title case"
        );
    }
    let ping: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(ping["hypervisor"], "mock");

    // An error body has its length too, so the client reads the chain.
    let response = exchange(&h, "GET", "vm.info", None);
    let (head, body) = head_and_body(&response);
    assert!(head.contains(&format!("Content-Length: {}", body.len()).as_str()));
    assert_eq!(body, r#"["No VM has been created"]"#);

    // 204 has neither a body nor a Content-Length: the client then reads
    // no body, as from Cloud Hypervisor's server.
    let response = exchange(&h, "PUT", "vm.delete", None);
    let (head, body) = head_and_body(&response);
    assert!(body.is_empty());
    assert!(
        !head.iter().any(|l| l.starts_with("Content-Length")),
        "{head:?}"
    );
}

#[test]
fn bodies_are_ascii_whatever_they_say() {
    let h = Harness::start();
    // The fake VMM names the file it refuses in its error: a path with
    // non-ASCII characters comes back escaped, never as raw UTF-8 that a
    // 256-byte read could split.
    exchange(&h, "PUT", "vm.create", Some("{}"));
    let body = r#"{"certs_file": "/nonexistent/été—🦀.bin"}"#;
    let response = exchange(&h, "PUT", "vm.snp-certs", Some(body));
    let (head, body) = head_and_body(&response);
    assert_eq!(head[0], "HTTP/1.1 400 ");
    assert!(body.contains(r"\u00e9t\u00e9\u2014\ud83e\udd80"), "{body}");
    let chain: Vec<String> = serde_json::from_str(body).unwrap();
    assert!(chain[0].contains("/nonexistent/été—🦀.bin"), "{chain:?}");
}

#[test]
fn create_answers_the_ignored_cloud_hypervisor_settings() {
    let h = Harness::start();
    let config = r#"{"memory": {"size": 1048576, "shared": true}, "serial": {"mode": "Tty"}}"#;
    let response = exchange(&h, "PUT", "vm.create", Some(config));
    let (head, body) = head_and_body(&response);
    assert_eq!(head[0], "HTTP/1.1 200 ");
    let warnings: serde_json::Value = serde_json::from_str(body).unwrap();
    let warnings: Vec<&str> = warnings["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("memory.shared is ignored"),
        "{warnings:?}"
    );
    assert!(warnings[1].starts_with("serial is ignored"), "{warnings:?}");
}
