//! A fake AMD Key Distribution Service on 127.0.0.1 for tests.
//!
//! A minimal HTTP/1.1 server on a thread: it reads one `GET` request per
//! connection, answers it with `Connection: close`, and counts. Documents
//! are registered by path and query; queries are compared as sets of
//! `name=number` pairs, so `blSPL=03` and `blSPL=3` are one. It can act
//! rate limited: answer `429 Too Many Requests` with `Retry-After` to the
//! first N requests, or to any request that comes sooner than a minimum gap
//! after the previous one it served.
//!
//! Used by `snp-kds`'s tests and the workspace's end-to-end tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use snp_certs_verify::x509::{DocumentKind, EntryInfo, describe, to_der};

/// When to answer 429.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    /// Answer 429 to this many requests first.
    pub fail_first: u32,
    /// Answer 429 to a request that comes sooner than this after the last
    /// request served.
    pub min_gap: Duration,
    /// The `Retry-After` value sent (`None`: no header).
    pub retry_after: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    docs: HashMap<String, Vec<u8>>,
    throttle: Throttle,
    requests: Vec<String>,
    throttled: u32,
    last_served: Option<Instant>,
}

/// The running server; stops when dropped.
pub struct FakeKds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// `path?b=2&a=01` → `path?a=1&b=2`.
fn canonical(target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => match v.parse::<u64>() {
                Ok(n) => format!("{k}={n}"),
                Err(_) => p.to_owned(),
            },
            None => p.to_owned(),
        })
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

/// The fixtures directory ([`crate::fixtures::dir`]).
pub fn fixtures() -> PathBuf {
    crate::fixtures::dir()
}

/// A fixture's bytes ([`crate::fixtures::bytes`]).
pub fn fixture(rel: &str) -> Vec<u8> {
    crate::fixtures::bytes(rel)
}

/// A fixture certificate as DER.
pub fn fixture_der(rel: &str) -> Vec<u8> {
    to_der(&fixture(rel), DocumentKind::Certificate).unwrap()
}

/// A product's `cert_chain` as KDS serves it: ASK (or ASVK) PEM, then ARK.
pub fn chain_pem(ca: &str, ark: &str) -> Vec<u8> {
    let mut out = fixture(ca);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend(fixture(ark));
    out
}

/// What a fixture VCEK says about itself: hex hardware ID, and the KDS
/// query for its TCB (`blSPL=3&teeSPL=0&…`).
pub fn vcek_identity(rel: &str) -> (String, String) {
    let EntryInfo::Certificate(info) = describe(&fixture(rel)).unwrap() else {
        panic!("{rel} is not a certificate");
    };
    let tcb = info.tcb.expect("VCEK without TCB extensions");
    let mut query = Vec::new();
    if let Some(fmc) = tcb.fmc {
        query.push(format!("fmcSPL={fmc}"));
    }
    query.push(format!("blSPL={}", tcb.bootloader.unwrap()));
    query.push(format!("teeSPL={}", tcb.tee.unwrap()));
    query.push(format!("snpSPL={}", tcb.snp.unwrap()));
    query.push(format!("ucodeSPL={}", tcb.microcode.unwrap()));
    (info.hwid.expect("VCEK without hwid"), query.join("&"))
}

/// A fixture VCEK's TCB as `bl=N,tee=N,snp=N,ucode=N[,fmc=N]`.
pub fn vcek_tcb(rel: &str) -> String {
    let (_, query) = vcek_identity(rel);
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap();
        fields.insert(k.trim_end_matches("SPL"), v);
    }
    let mut out = format!(
        "bl={},tee={},snp={},ucode={}",
        fields["bl"], fields["tee"], fields["snp"], fields["ucode"]
    );
    if let Some(fmc) = fields.get("fmc") {
        out.push_str(&format!(",fmc={fmc}"));
    }
    out
}

impl FakeKds {
    /// An empty server.
    pub fn start() -> FakeKds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        handle(stream, &state);
                    }
                }
            })
        };
        FakeKds {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// A server with AMD's real Milan, Genoa and Turin chains, and the
    /// Milan and Turin VCEKs at the URLs their own extensions name.
    pub fn with_amd_fixtures() -> FakeKds {
        let kds = FakeKds::start();
        for (product, dir) in [("Milan", "milan"), ("Genoa", "genoa"), ("Turin", "turin")] {
            kds.serve(
                &format!("/vcek/v1/{product}/cert_chain"),
                chain_pem(&format!("amd/{dir}/ask.pem"), &format!("amd/{dir}/ark.pem")),
            );
        }
        for (product, dir) in [("Milan", "milan"), ("Turin", "turin")] {
            let rel = format!("amd/{dir}/vcek.der");
            let (hwid, query) = vcek_identity(&rel);
            kds.serve(&format!("/vcek/v1/{product}/{hwid}?{query}"), fixture(&rel));
        }
        kds
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `body` at `target` (path and query).
    pub fn serve(&self, target: &str, body: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .docs
            .insert(canonical(target), body);
    }

    /// Sets when to answer 429.
    pub fn throttle(&self, throttle: Throttle) {
        self.state.lock().unwrap().throttle = throttle;
    }

    /// Requests received (429s included).
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// The request targets received, in order.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests answered with 429.
    pub fn throttled(&self) -> u32 {
        self.state.lock().unwrap().throttled
    }
}

impl Drop for FakeKds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the request head (up to the blank line) and returns its target.
fn read_target(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    (method == "GET").then(|| target.to_owned())
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) {
    let Some(target) = read_target(&mut stream) else {
        return;
    };
    let (status, headers, body) = {
        let mut s = state.lock().unwrap();
        s.requests.push(target.clone());
        let now = Instant::now();
        let too_soon = s
            .last_served
            .is_some_and(|last| now.duration_since(last) < s.throttle.min_gap);
        if s.throttle.fail_first > 0 || too_soon {
            s.throttle.fail_first = s.throttle.fail_first.saturating_sub(1);
            s.throttled += 1;
            let headers = s
                .throttle
                .retry_after
                .as_ref()
                .map(|v| format!("Retry-After: {v}\r\n"))
                .unwrap_or_default();
            ("429 Too Many Requests", headers, b"rate limited\n".to_vec())
        } else {
            s.last_served = Some(now);
            match s.docs.get(&canonical(&target)) {
                Some(body) => ("200 OK", String::new(), body.clone()),
                None => ("404 Not Found", String::new(), b"not found\n".to_vec()),
            }
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}
