//! Cost of one uncontended certificate request on the host side.
//!
//! # Method
//!
//! The table is `docs/examples/certs.bin` (4,772 bytes, 3 entries: VCEK,
//! ASK, ARK), copied into a temporary directory under Cargo's target
//! directory (same file system as the build). Guest memory is a 64 KiB
//! `GuestMemoryMmap`; the guest buffer is 2 pages at 0x8000. Nobody else
//! holds a lock, so no wait happens: this is the per-request overhead.
//!
//! Rows, each timed as `ITERS` back-to-back requests per round, rounds
//! interleaved (every row runs once per round, in rotating order), and the
//! per-request time reported as the median over rounds with the fastest
//! and slowest round beside it:
//!
//! * **ours, deliver**: `snp_certs::serve` with a `CertsReader` that keeps
//!   the descriptor across requests: `F_OFD_SETLK` try, `fstat` +
//!   `stat(path)` re-check, `fstat` + `pread`s to end of file, table
//!   validation, bounds-checked copy into guest memory; then the lease is
//!   dropped (`F_OFD_SETLK F_UNLCK`).
//! * **ours, size query**: the same with `npages = 0` (the guest's first
//!   ring of each request): everything but the copy, answer `ENOSPC`.
//! * **validation alone**: `CertTable::parse` of the bytes, to explain
//!   the difference between ours and the floor.
//! * **floor, open per request**: raw `open` + shared `F_OFD_SETLK` +
//!   one `pread` (16 KiB buffer) + `F_UNLCK` + `close`.
//! * **floor, descriptor kept**: the same without `open`/`close`: the
//!   least any reader that honours the lock protocol can do, and the fair
//!   floor for ours, which keeps its descriptor.
//! * **floor, descriptor kept + re-check**: the same plus `fstat(fd)` and
//!   `stat(path)` compared (device, inode): the least a reader can do that
//!   also notices a file replaced by rename, as the lock protocol asks.
//! * **QEMU v1** (the reference, AMD's RFC v1 `kvm_handle_snp_req_certs`
//!   on its delivery path): `open` + shared `F_OFD_SETLK` +
//!   `g_usleep(1000)` (its loop sleeps after the try that succeeded too) +
//!   `lseek(SEEK_END)` for the size + `lseek(SEEK_SET)` + `read` until 0
//!   straight into guest memory; at the immediate exit `F_UNLCK` +
//!   `close`. Run with fewer iterations because of the sleep.
//! * **QEMU v1 without its sleep**: the same syscalls, no sleep: what its
//!   request would cost had it not slept.
//!
//! Every row also goes to `target/bench/results.json` (values over
//! rounds, ns/request; floor: open per request; reference: QEMU v1
//! without its sleep).
//!
//! # Knobs
//!
//! * `SERVE_COST_ROUNDS` (default 21): rounds.
//! * `SERVE_COST_ITERS` (default 2000): requests per round and row.
//! * `SERVE_COST_QEMU_ITERS` (default 15): requests per round for the QEMU
//!   v1 row with its 1 ms sleep.
//!
//! Default run: about 2 s after building. Under `cargo test --benches` (no
//! `--bench` argument) it runs as a smoke test with tiny samples.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::CString;
use std::hint::black_box;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use common::floor::{close_raw, floor_open, ofd_set, open_raw, pread_raw};
use common::{
    Figure, baseline, by_mode, env_usize, f, print_context, print_table, ratio, record, summarize,
};
use snp_certs::serve::{CertsRequest, OutcomeKind};
use snp_certs::{CertTable, CertsConfig, CertsReader, serve};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The example table, 3 entries, 4,772 bytes.
const TABLE: &[u8] = include_bytes!("../docs/examples/certs.bin");
/// Guest buffer address and size (the table needs 2 pages).
const BUFFER_GPA: u64 = 0x8000;
const BUFFER_PAGES: u64 = 2;
/// The most a Linux guest takes; the floor reads into a buffer this big.
const READ_BUF: usize = 16 * 1024;

/// The floor with the descriptor kept: shared lock, read, unlock.
fn floor_kept(fd: libc::c_int, buf: &mut [u8]) -> usize {
    ofd_set(fd, libc::F_RDLCK);
    let n = pread_raw(fd, buf);
    ofd_set(fd, libc::F_UNLCK);
    n
}

/// The floor with the descriptor kept and the replaced-file re-check the
/// lock protocol asks for (QEMU RFC v2 does it too): shared lock,
/// `fstat(fd)` + `stat(path)`, read, unlock.
fn floor_kept_recheck(fd: libc::c_int, path: &CString, buf: &mut [u8]) -> usize {
    ofd_set(fd, libc::F_RDLCK);
    // SAFETY: all-zero `stat` buffers are valid; each call only writes
    // into its buffer, which outlives the call; `path` is NUL-terminated.
    let same = unsafe {
        let mut open: libc::stat = std::mem::zeroed();
        let mut named: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut open) == 0
            && libc::stat(path.as_ptr(), &mut named) == 0
            && open.st_dev == named.st_dev
            && open.st_ino == named.st_ino
    };
    assert!(same, "the file was replaced");
    let n = pread_raw(fd, buf);
    ofd_set(fd, libc::F_UNLCK);
    n
}

/// QEMU RFC v1's delivery path for one uncontended request, syscall for
/// syscall (see the module docs). `guest_buf` is the host address of the
/// guest buffer (QEMU's `address_space_map`), `buf_sz` its size.
///
/// # Safety
///
/// `guest_buf` must point to `buf_sz` bytes that are valid for writes and
/// that nothing else accesses during the call.
unsafe fn qemu_v1_request(path: &CString, guest_buf: *mut u8, buf_sz: usize, sleep: bool) -> usize {
    // open_certs_locked(): qemu_open + qemu_lock_fd(fd, 0, 0, false).
    let fd = open_raw(path);
    ofd_set(fd, libc::F_RDLCK);
    // The loop's g_usleep(1000), also after the successful try.
    if sleep {
        std::thread::sleep(Duration::from_micros(1000));
    }
    // get_certs_size(): lseek(fd, 0, SEEK_END).
    // SAFETY: plain lseek on an open descriptor.
    let size = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
    assert!(size > 0 && (size as usize) <= buf_sz);
    // read_certs(): lseek(fd, 0, SEEK_SET), then read until it returns 0.
    // (v1 never advances `buf` between reads: harmless here, as the
    // first read returns the whole file.)
    // SAFETY: plain lseek on an open descriptor.
    let at = unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    assert_eq!(at, 0);
    let mut len = 0;
    loop {
        // SAFETY: the caller guarantees `guest_buf` is valid for writes of
        // `buf_sz` bytes and not accessed by anything else meanwhile.
        let n = unsafe { libc::read(fd, guest_buf.cast(), buf_sz) };
        assert!(n >= 0, "read: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        len += n as usize;
    }
    // snp_release_certs_lock() at the immediate exit: close_certs().
    ofd_set(fd, libc::F_UNLCK);
    close_raw(fd);
    len
}

/// Times `iters` calls of `op`; returns ns per call.
fn time_per_op(iters: usize, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    OursDeliver,
    OursSizeQuery,
    Validate,
    FloorOpen,
    FloorKept,
    FloorKeptRecheck,
    QemuV1,
    QemuV1NoSleep,
}

const ROWS: [Row; 8] = [
    Row::OursDeliver,
    Row::OursSizeQuery,
    Row::Validate,
    Row::FloorOpen,
    Row::FloorKept,
    Row::FloorKeptRecheck,
    Row::QemuV1,
    Row::QemuV1NoSleep,
];

fn name(row: Row) -> &'static str {
    match row {
        Row::OursDeliver => "ours: serve(), deliver 2 pages",
        Row::OursSizeQuery => "ours: serve(), size query (npages 0)",
        Row::Validate => "  of which: CertTable::parse alone",
        Row::FloorOpen => "floor: open+SETLK+pread+unlock+close",
        Row::FloorKept => "floor: SETLK+pread+unlock (fd kept)",
        Row::FloorKeptRecheck => "floor: fd kept + fstat/stat re-check",
        Row::QemuV1 => "QEMU v1: request incl. its 1 ms sleep",
        Row::QemuV1NoSleep => "QEMU v1: same syscalls, sleep removed",
    }
}

fn main() {
    let rounds = env_usize("SERVE_COST_ROUNDS", by_mode(21, 1)).max(1);
    let iters = env_usize("SERVE_COST_ITERS", by_mode(2000, 10)).max(1);
    let qemu_iters = env_usize("SERVE_COST_QEMU_ITERS", by_mode(15, 1));
    let started = Instant::now();
    print_context("serve_cost");

    let table = CertTable::parse(TABLE).expect("the example table is valid");
    let dir = tempfile::Builder::new()
        .prefix("serve-cost-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, TABLE).unwrap();
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    println!(
        "table: {} bytes, {} entries, file {}",
        TABLE.len(),
        table.entries().len(),
        path.display()
    );

    let memory =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("guest memory");
    let guest_buf = memory
        .get_host_address(GuestAddress(BUFFER_GPA))
        .expect("buffer inside guest memory");
    let buf_sz = (BUFFER_PAGES * 4096) as usize;
    let config = CertsConfig::with_file(&path);
    let budget = snp_certs::BusyBudget::new();
    let mut reader = CertsReader::new();
    let kept_fd = open_raw(&cpath);
    let mut buf = vec![0u8; READ_BUF];

    let deliver = CertsRequest {
        gpa: BUFFER_GPA,
        npages: BUFFER_PAGES,
    };
    let size_query = CertsRequest {
        gpa: BUFFER_GPA,
        npages: 0,
    };
    // Check each path once, untimed.
    let outcome = serve(&mut reader, &config, &budget, deliver, &memory);
    assert_eq!(
        outcome.kind,
        OutcomeKind::Delivered,
        "{:?}",
        outcome.detail(&config)
    );
    assert_eq!(outcome.bytes, TABLE.len());
    drop(outcome);
    let outcome = serve(&mut reader, &config, &budget, size_query, &memory);
    assert_eq!(outcome.kind, OutcomeKind::NeedPages);
    assert_eq!(floor_open(&cpath, &mut buf), TABLE.len());
    // SAFETY: `guest_buf` is the host address of the 2-page buffer inside
    // the 64 KiB mapping, which lives until the end of `main`; only this
    // thread touches guest memory, one call at a time.
    let read = unsafe { qemu_v1_request(&cpath, guest_buf, buf_sz, false) };
    assert_eq!(read, TABLE.len());

    let mut results: Vec<Vec<f64>> = vec![Vec::new(); ROWS.len()];
    let mut run = |row: Row| -> f64 {
        match row {
            Row::OursDeliver => time_per_op(iters, || {
                let outcome = serve(&mut reader, &config, &budget, deliver, &memory);
                debug_assert_eq!(outcome.kind, OutcomeKind::Delivered);
                // Dropping the outcome drops the lease: the unlock.
                drop(black_box(outcome));
            }),
            Row::OursSizeQuery => time_per_op(iters, || {
                let outcome = serve(&mut reader, &config, &budget, size_query, &memory);
                drop(black_box(outcome));
            }),
            Row::Validate => time_per_op(iters, || {
                black_box(CertTable::parse(black_box(TABLE)).is_ok());
            }),
            Row::FloorOpen => time_per_op(iters, || {
                black_box(floor_open(&cpath, &mut buf));
            }),
            Row::FloorKept => time_per_op(iters, || {
                black_box(floor_kept(kept_fd, &mut buf));
            }),
            Row::FloorKeptRecheck => time_per_op(iters, || {
                black_box(floor_kept_recheck(kept_fd, &cpath, &mut buf));
            }),
            Row::QemuV1 => time_per_op(qemu_iters, || {
                // SAFETY: as above: a live, unaliased 2-page guest buffer.
                black_box(unsafe { qemu_v1_request(&cpath, guest_buf, buf_sz, true) });
            }),
            Row::QemuV1NoSleep => time_per_op(iters, || {
                // SAFETY: as above: a live, unaliased 2-page guest buffer.
                black_box(unsafe { qemu_v1_request(&cpath, guest_buf, buf_sz, false) });
            }),
        }
    };
    // One untimed warm-up round.
    for row in ROWS {
        if row != Row::QemuV1 {
            run(row);
        }
    }
    for round in 0..rounds {
        for k in 0..ROWS.len() {
            let idx = (round + k) % ROWS.len();
            let row = ROWS[idx];
            if row == Row::QemuV1 && qemu_iters == 0 {
                continue;
            }
            results[idx].push(run(row));
        }
    }
    close_raw(kept_fd);

    let median = |row: Row| -> f64 {
        let idx = ROWS.iter().position(|r| *r == row).unwrap_or(0);
        summarize(&results[idx]).median
    };
    println!();
    println!(
        "## Per-request cost, uncontended ({rounds} rounds x {iters} requests; QEMU v1 with sleep: {qemu_iters} per round)"
    );
    let mut rows = Vec::new();
    for (idx, row) in ROWS.iter().enumerate() {
        if results[idx].is_empty() {
            continue;
        }
        let s = summarize(&results[idx]);
        let floor_idx = ROWS.iter().position(|r| *r == Row::FloorOpen).unwrap_or(0);
        let ref_idx = ROWS
            .iter()
            .position(|r| *r == Row::QemuV1NoSleep)
            .unwrap_or(0);
        record(
            Figure::new(
                "serve_cost",
                name(*row).trim(),
                serde_json::json!({"table_bytes": TABLE.len(), "rounds": rounds, "iters": iters}),
                "ns",
                s,
            )
            .reference(baseline(
                name(Row::QemuV1NoSleep),
                summarize(&results[ref_idx]).median,
            ))
            .floor(baseline(
                name(Row::FloorOpen),
                summarize(&results[floor_idx]).median,
            )),
        );
        rows.push(vec![
            name(*row).to_owned(),
            f(s.median, 0),
            f(s.min, 0),
            f(s.max, 0),
            f(1e9 / s.median, 0),
        ]);
    }
    print_table(
        &[
            "path",
            "ns/request (median)",
            "fastest round",
            "slowest round",
            "requests/s",
        ],
        &rows,
    );

    let ours = median(Row::OursDeliver);
    println!();
    println!("## Ratios (medians)");
    let mut ratios = vec![
        vec![
            "ours deliver / floor (fd kept)".to_owned(),
            ratio(ours / median(Row::FloorKept)),
        ],
        vec![
            "ours deliver / floor (fd kept + re-check)".to_owned(),
            ratio(ours / median(Row::FloorKeptRecheck)),
        ],
        vec![
            "ours deliver / floor (open per request)".to_owned(),
            ratio(ours / median(Row::FloorOpen)),
        ],
        vec![
            "QEMU v1 without sleep / ours".to_owned(),
            ratio(median(Row::QemuV1NoSleep) / ours),
        ],
    ];
    if qemu_iters > 0 {
        ratios.push(vec![
            "QEMU v1 (with its 1 ms sleep) / ours".to_owned(),
            ratio(median(Row::QemuV1) / ours),
        ]);
    }
    print_table(&["ratio", "value"], &ratios);
    println!();
    println!(
        "serve_cost: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(dir);
}
