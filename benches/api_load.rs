//! The REST API under load: `GET vm.counters` and `PUT vm.snp-certs`
//! round trips over the Unix socket to a live `snp-vmm --hypervisor mock`
//! whose guest keeps asking for certificates.
//!
//! # Method
//!
//! `snp-vmm --hypervisor mock --api-socket S --snp
//! certs-file=F,doorbell=on --payload attest,requests=10^9,interval-ms=1`
//! (the built binary, `CARGO_BIN_EXE_snp-vmm`), the example table. Each
//! request is one `api_server::ApiClient` call: a new connection, one
//! HTTP/1.1 exchange, as `snp-remote` does. Timed per request:
//!
//! * **GET vm.counters**: the counters map;
//! * **PUT vm.snp-certs, new file**: `{"certs_file": F}`: the VMM opens,
//!   locks, reads and validates the file before the swap;
//! * **PUT vm.snp-certs, timeout only**: `{"certs_timeout": 100}`: the
//!   same route without file validation, to show what validation costs;
//! * **reference, GET vmm.ping**: the same server and client, the
//!   cheapest route (no VM involved);
//! * **floor, HTTP**: the same `ApiClient` against a minimal responder
//!   in this process (reads the request, writes a fixed `{}`): the
//!   client, the socket and a connection, nothing of the VMM's server;
//! * **floor, raw socket**: `UnixStream` connect + write the request +
//!   read the answer from that responder: no HTTP library at all.
//!
//! Sequential: the rows interleaved request by request. Concurrent: 8
//! client threads at once, each its own `ApiClient`, one row at a time.
//! Concurrent PUTs race each other: a PUT that lost too many races is
//! refused with 409 ("retry"), and is then retried as a client is told
//! to; its time includes the retries, and the 409s are counted and
//! printed. Any other failed request fails the bench.
//! The guest's delivered requests per second during each phase come from
//! the counters.
//!
//! Every figure goes to `target/bench/results.json` (`api_rtt`, params
//! route/clients).
//!
//! # Knobs
//!
//! * `API_LOAD_ITERS` (default 2000): requests per row, sequential.
//! * `API_LOAD_CONCURRENT_ITERS` (default 300): requests per client and
//!   row with 8 clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use api_server::ApiClient;
use common::{
    Figure, Summary, VmmProcess, baseline, by_mode, env_usize, f, print_context, print_table,
    ratio, record, start_floor_responder, summarize,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    GetCounters,
    PutFile,
    PutTimeout,
    Ping,
    FloorHttp,
    FloorRaw,
}

const ROWS: [Row; 6] = [
    Row::GetCounters,
    Row::PutFile,
    Row::PutTimeout,
    Row::Ping,
    Row::FloorHttp,
    Row::FloorRaw,
];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::GetCounters => "GET vm.counters",
            Row::PutFile => "PUT vm.snp-certs (new file, validated)",
            Row::PutTimeout => "PUT vm.snp-certs (timeout only)",
            Row::Ping => "reference: GET vmm.ping",
            Row::FloorHttp => "floor: same client, minimal responder",
            Row::FloorRaw => "floor: raw Unix socket exchange",
        }
    }
}

struct Ctx {
    vmm_socket: PathBuf,
    floor_socket: PathBuf,
    put_file: Vec<u8>,
}

struct Clients {
    vmm: ApiClient,
    floor: ApiClient,
}

impl Clients {
    fn new(ctx: &Ctx) -> Clients {
        Clients {
            vmm: ApiClient::new(&ctx.vmm_socket).unwrap(),
            floor: ApiClient::new(&ctx.floor_socket).unwrap(),
        }
    }
}

fn raw_exchange(socket: &Path) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(b"GET /api/v1/vm.counters HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
}

/// PUTs refused with 409 (lost the race to other updates) and retried.
static CONFLICTS: AtomicU64 = AtomicU64::new(0);

/// `PUT vm.snp-certs` with `body` until it succeeds: a 409 (another
/// update won the race) is retried and counted in [`CONFLICTS`]; any
/// other refusal fails the bench.
fn put_certs(c: &ApiClient, body: &[u8]) {
    loop {
        let r = c
            .raw_request("PUT", "/api/v1/vm.snp-certs", Some(body.to_vec()))
            .unwrap();
        if r.is_success() {
            return;
        }
        assert_eq!(r.status, 409, "{}", r.text());
        CONFLICTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request of `row`; µs.
fn once(row: Row, ctx: &Ctx, c: &Clients) -> f64 {
    let t = Instant::now();
    match row {
        Row::GetCounters => {
            c.vmm.counters().unwrap();
        }
        Row::PutFile => put_certs(&c.vmm, &ctx.put_file),
        Row::PutTimeout => put_certs(&c.vmm, br#"{"certs_timeout": 100}"#),
        Row::Ping => {
            c.vmm.ping().unwrap();
        }
        Row::FloorHttp => {
            let r = c
                .floor
                .raw_request("GET", "/api/v1/vm.counters", None)
                .unwrap();
            assert!(r.is_success());
        }
        Row::FloorRaw => raw_exchange(&ctx.floor_socket),
    }
    t.elapsed().as_nanos() as f64 / 1e3
}

fn delivered(c: &ApiClient) -> u64 {
    c.counters().unwrap()["snp-certs"]["delivered"]
}

fn main() {
    print_context("api_load");
    let started = Instant::now();
    let iters = env_usize("API_LOAD_ITERS", by_mode(2000, 30)).max(1);
    let citers = env_usize("API_LOAD_CONCURRENT_ITERS", by_mode(300, 10)).max(1);
    let clients_n = 8;
    let dir = tempfile::Builder::new()
        .prefix("api-load-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let certs = dir.path().join("certs.bin");
    std::fs::write(&certs, include_bytes!("../docs/examples/certs.bin")).unwrap();
    let snp = format!("certs-file={},doorbell=on", certs.display());
    let vmm = VmmProcess::start(
        dir.path(),
        &[
            "--snp",
            &snp,
            "--payload",
            "attest,requests=1000000000,interval-ms=1",
        ],
    );
    let floor_socket = dir.path().join("floor.sock");
    start_floor_responder(&floor_socket);
    let ctx = Arc::new(Ctx {
        vmm_socket: vmm.socket.clone(),
        floor_socket,
        put_file: serde_json::to_vec(&serde_json::json!({"certs_file": certs})).unwrap(),
    });
    let c = Clients::new(&ctx);
    // Warm-up, and the guest must be asking.
    for row in ROWS {
        for _ in 0..5 {
            once(row, &ctx, &c);
        }
    }
    let d0 = delivered(&c.vmm);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let idle_rate = (delivered(&c.vmm) - d0) as f64 / 0.2;
    assert!(idle_rate > 0.0, "the guest is not asking");
    println!("# guest: attest interval-ms=1, {idle_rate:.0} delivered/s with the API idle");

    // ------------------------------------------------ sequential
    let mut seq: Vec<Vec<f64>> = vec![Vec::new(); ROWS.len()];
    let t0 = Instant::now();
    let d0 = delivered(&c.vmm);
    for i in 0..iters {
        for k in 0..ROWS.len() {
            let idx = (i + k) % ROWS.len();
            seq[idx].push(once(ROWS[idx], &ctx, &c));
        }
    }
    let seq_rate = (delivered(&c.vmm) - d0) as f64 / t0.elapsed().as_secs_f64();

    // ------------------------------------------------ concurrent
    let mut conc: Vec<Vec<f64>> = vec![Vec::new(); ROWS.len()];
    let t0 = Instant::now();
    let d0 = delivered(&c.vmm);
    for (idx, row) in ROWS.iter().enumerate() {
        let barrier = Arc::new(Barrier::new(clients_n));
        let handles: Vec<_> = (0..clients_n)
            .map(|_| {
                let (b, ctx, row) = (Arc::clone(&barrier), Arc::clone(&ctx), *row);
                std::thread::spawn(move || {
                    let c = Clients::new(&ctx);
                    b.wait();
                    (0..citers).map(|_| once(row, &ctx, &c)).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            conc[idx].extend(h.join().unwrap());
        }
    }
    let conc_rate = (delivered(&c.vmm) - d0) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "# PUTs refused with 409 (lost the race to other updates) and retried: {}",
        CONFLICTS.load(Ordering::Relaxed)
    );

    let floor_idx = ROWS.iter().position(|r| *r == Row::FloorHttp).unwrap();
    let ping_idx = ROWS.iter().position(|r| *r == Row::Ping).unwrap();
    let emit = |set: &[Vec<f64>], clients: usize| -> Vec<Summary> {
        let floor = summarize(&set[floor_idx]).median;
        let reference = summarize(&set[ping_idx]).median;
        ROWS.iter()
            .enumerate()
            .map(|(idx, row)| {
                let s = summarize(&set[idx]);
                record(
                    Figure::new(
                        "api_load",
                        "api_rtt",
                        serde_json::json!({"route": row.name(), "clients": clients}),
                        "us",
                        s,
                    )
                    .reference(baseline(Row::Ping.name(), reference))
                    .floor(baseline(Row::FloorHttp.name(), floor))
                    .samples(&set[idx]),
                );
                s
            })
            .collect()
    };
    let s_seq = emit(&seq, 1);
    let s_conc = emit(&conc, clients_n);
    let mut rows = Vec::new();
    for (idx, row) in ROWS.iter().enumerate() {
        let (a, b) = (&s_seq[idx], &s_conc[idx]);
        rows.push(vec![
            row.name().to_owned(),
            f(a.median, 0),
            f(a.p90, 0),
            f(a.p99, 0),
            ratio(a.median / s_seq[floor_idx].median),
            f(b.median, 0),
            f(b.p99, 0),
            ratio(b.median / s_conc[floor_idx].median),
        ]);
    }
    println!();
    println!(
        "## Round trips, µs ({iters} sequential per row; {clients_n} clients x {citers} concurrent)"
    );
    print_table(
        &[
            "route",
            "seq p50",
            "seq p90",
            "seq p99",
            "seq p50/floor",
            "8 clients p50",
            "8 clients p99",
            "8 clients p50/floor",
        ],
        &rows,
    );
    println!();
    print_table(
        &[
            "guest delivered/s",
            "API idle",
            "sequential load",
            "8 clients",
        ],
        &[vec![
            "attest, interval-ms=1".into(),
            f(idle_rate, 0),
            f(seq_rate, 0),
            f(conc_rate, 0),
        ]],
    );
    record(Figure::new(
        "api_load",
        "guest_delivered_per_s",
        serde_json::json!({"idle": idle_rate.round(), "sequential": seq_rate.round(),
                           "concurrent_8": conc_rate.round()}),
        "1/s",
        summarize(&[idle_rate, seq_rate, conc_rate]),
    ));
    drop(vmm);
    println!();
    println!("api_load: done in {:.1} s", started.elapsed().as_secs_f64());
}
