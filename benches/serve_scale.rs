//! How the cost of a certificate request grows: with the size of the
//! table, and with the number of vCPU threads asking at once.
//!
//! # Method
//!
//! **Table size.** Tables of 1, 4, 8 and 16 KiB (one VCEK entry padded to
//! the size) in temporary files under Cargo's target directory. For each,
//! `ITERS` back-to-back requests per round and row, rounds interleaved:
//!
//! * **ours**: `snp_certs::serve` delivering into a 4-page guest buffer
//!   (a `CertsReader` that keeps its descriptor), lease dropped after;
//! * **floor**: raw `open` + shared `F_OFD_SETLK` + one 16 KiB `pread` +
//!   `F_UNLCK` + `close`.
//!
//! The median over rounds is fitted with a least-squares line (ns = a +
//! b·KiB); the largest relative residual says how linear it is.
//!
//! **Threads.** T = 1, 2, 4, 8 threads (each a vCPU: its own
//! `CertsReader`, guest memory and busy budget) serve the example table
//! (4,772 bytes) from the **same** file at once, `ITERS` requests each,
//! started together by a barrier. Reported: the process CPU time
//! (`getrusage(RUSAGE_SELF)`) per request, which stays flat unless the
//! threads contend (lock or cache-line contention shows up as CPU), and
//! the aggregate requests/s (bounded by the CPU count). The floor runs the
//! same way. There is no reference algorithm for this figure: QEMU v1's
//! path costs the same system calls plus its 1 ms sleep (see serve_cost).
//!
//! Every figure goes to `target/bench/results.json` (`serve_vs_size`,
//! `serve_vs_threads_cpu`, `serve_vs_threads_wall`).
//!
//! # Knobs
//!
//! * `SERVE_SCALE_ROUNDS` (default 15), `SERVE_SCALE_ITERS` (default 2000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::CString;
use std::hint::black_box;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use common::floor::{floor_open, process_cpu_ns};
use common::{
    Figure, baseline, by_mode, env_usize, f, print_context, print_table, ratio, record, summarize,
};
use snp_certs::serve::{CertsRequest, OutcomeKind};
use snp_certs::table::TableBuilder;
use snp_certs::{BusyBudget, CertKind, CertsConfig, CertsReader, serve};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const BUFFER_GPA: u64 = 0x8000;
const BUFFER_PAGES: u64 = 4;
const READ_BUF: usize = 16 * 1024;

/// A table of exactly `size` bytes: one VCEK entry plus the terminator.
fn table_of(size: usize) -> Vec<u8> {
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, vec![0x5a; size - 48]).unwrap();
    let t = b.build().unwrap();
    assert_eq!(t.len(), size);
    t
}

/// A vCPU's worth of state.
struct Vcpu {
    reader: CertsReader,
    config: CertsConfig,
    budget: BusyBudget,
    memory: GuestMemoryMmap<()>,
}

impl Vcpu {
    fn new(path: &Path) -> Vcpu {
        Vcpu {
            reader: CertsReader::new(),
            config: CertsConfig::with_file(path),
            budget: BusyBudget::new(),
            memory: GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        }
    }

    fn request(&mut self) -> usize {
        let req = CertsRequest {
            gpa: BUFFER_GPA,
            npages: BUFFER_PAGES,
        };
        let outcome = serve(
            &mut self.reader,
            &self.config,
            &self.budget,
            req,
            &self.memory,
        );
        debug_assert_eq!(outcome.kind, OutcomeKind::Delivered);
        black_box(outcome.bytes)
    }
}

fn time_per_op(iters: usize, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

/// T threads × `iters` requests at once; (CPU ns/request, wall ns/request
/// aggregate).
fn concurrent(threads: usize, iters: usize, path: &Path, ours: bool) -> (f64, f64) {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = Arc::clone(&barrier);
            let p = path.to_owned();
            let cp = cpath.clone();
            std::thread::spawn(move || {
                let mut vcpu = Vcpu::new(&p);
                let mut buf = vec![0u8; READ_BUF];
                vcpu.request(); // warm: open the descriptor
                b.wait();
                for _ in 0..iters {
                    if ours {
                        vcpu.request();
                    } else {
                        black_box(floor_open(&cp, &mut buf));
                    }
                }
                b.wait();
            })
        })
        .collect();
    barrier.wait();
    let cpu0 = process_cpu_ns();
    let t0 = Instant::now();
    barrier.wait();
    let wall = t0.elapsed().as_nanos() as f64;
    let cpu = (process_cpu_ns() - cpu0) as f64;
    for h in handles {
        h.join().unwrap();
    }
    let total = (threads * iters) as f64;
    (cpu / total, wall / total)
}

fn main() {
    print_context("serve_scale");
    let started = Instant::now();
    let rounds = env_usize("SERVE_SCALE_ROUNDS", by_mode(15, 2)).max(1);
    let iters = env_usize("SERVE_SCALE_ITERS", by_mode(2000, 100)).max(1);
    let dir = tempfile::Builder::new()
        .prefix("serve-scale-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();

    // ---------------------------------------------------------- size
    let sizes_kib = [1usize, 4, 8, 16];
    let mut per_size = Vec::new();
    for &kib in &sizes_kib {
        let path = dir.path().join(format!("certs-{kib}k.bin"));
        std::fs::write(&path, table_of(kib * 1024)).unwrap();
        per_size.push(path);
    }
    let mut ours_ns: Vec<Vec<f64>> = vec![Vec::new(); sizes_kib.len()];
    let mut floor_ns: Vec<Vec<f64>> = vec![Vec::new(); sizes_kib.len()];
    let mut vcpus: Vec<Vcpu> = per_size.iter().map(|p| Vcpu::new(p)).collect();
    let cpaths: Vec<CString> = per_size
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).unwrap())
        .collect();
    let mut buf = vec![0u8; READ_BUF];
    for (i, v) in vcpus.iter_mut().enumerate() {
        assert_eq!(v.request(), sizes_kib[i] * 1024);
    }
    for round in 0..rounds {
        for k in 0..sizes_kib.len() {
            let i = (round + k) % sizes_kib.len();
            let v = &mut vcpus[i];
            ours_ns[i].push(time_per_op(iters, || {
                v.request();
            }));
            floor_ns[i].push(time_per_op(iters, || {
                black_box(floor_open(&cpaths[i], &mut buf));
            }));
        }
    }
    drop(vcpus);
    let fit = |ys: &[f64]| -> (f64, f64, f64) {
        let xs: Vec<f64> = sizes_kib.iter().map(|k| *k as f64).collect();
        let n = xs.len() as f64;
        let mx = xs.iter().sum::<f64>() / n;
        let my = ys.iter().sum::<f64>() / n;
        let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let b = sxy / sxx;
        let a = my - b * mx;
        let worst = xs
            .iter()
            .zip(ys)
            .map(|(x, y)| ((a + b * x) - y).abs() / y)
            .fold(0.0, f64::max);
        (a, b, worst)
    };
    let mut rows = Vec::new();
    let mut med_ours = Vec::new();
    let mut med_floor = Vec::new();
    for (i, &kib) in sizes_kib.iter().enumerate() {
        let o = summarize(&ours_ns[i]);
        let fl = summarize(&floor_ns[i]);
        med_ours.push(o.median);
        med_floor.push(fl.median);
        let params = serde_json::json!({"table_kib": kib, "rounds": rounds, "iters": iters});
        record(
            Figure::new("serve_scale", "serve_vs_size", params.clone(), "ns", o)
                .floor(baseline("floor_vs_size", fl.median)),
        );
        record(Figure::new(
            "serve_scale",
            "floor_vs_size",
            params,
            "ns",
            fl,
        ));
        rows.push(vec![
            format!("{kib} KiB"),
            f(o.median, 0),
            f(fl.median, 0),
            ratio(o.median / fl.median),
            f(o.median - fl.median, 0),
        ]);
    }
    println!();
    println!("## Per-request cost vs table size ({rounds} rounds x {iters} requests, ns, medians)");
    print_table(
        &[
            "table",
            "ours ns",
            "floor ns",
            "ours/floor",
            "ours - floor ns",
        ],
        &rows,
    );
    let (a_o, b_o, w_o) = fit(&med_ours);
    let (a_f, b_f, w_f) = fit(&med_floor);
    println!();
    print_table(
        &["fit ns = a + b*KiB", "a ns", "b ns/KiB", "worst residual"],
        &[
            vec![
                "ours".into(),
                f(a_o, 0),
                f(b_o, 1),
                format!("{:.1}%", w_o * 100.0),
            ],
            vec![
                "floor".into(),
                f(a_f, 0),
                f(b_f, 1),
                format!("{:.1}%", w_f * 100.0),
            ],
        ],
    );

    // ---------------------------------------------------------- threads
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, include_bytes!("../docs/examples/certs.bin")).unwrap();
    let threads = [1usize, 2, 4, 8];
    let trounds = rounds.div_ceil(2).max(1);
    let mut cpu: Vec<[Vec<f64>; 2]> = threads.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    let mut wall: Vec<[Vec<f64>; 2]> = threads.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..trounds {
        for k in 0..threads.len() {
            let i = (round + k) % threads.len();
            for (j, ours) in [(0usize, true), (1usize, false)] {
                let (c, w) = concurrent(threads[i], iters, &path, ours);
                cpu[i][j].push(c);
                wall[i][j].push(w);
            }
        }
    }
    let mut rows = Vec::new();
    let cpu1 = summarize(&cpu[0][0]).median;
    for (i, &t) in threads.iter().enumerate() {
        let co = summarize(&cpu[i][0]);
        let cf = summarize(&cpu[i][1]);
        let wo = summarize(&wall[i][0]);
        let wf = summarize(&wall[i][1]);
        let params = serde_json::json!({"threads": t, "rounds": trounds, "iters": iters,
                                        "table_bytes": 4772});
        record(
            Figure::new(
                "serve_scale",
                "serve_vs_threads_cpu",
                params.clone(),
                "ns",
                co,
            )
            .reference(baseline("serve_vs_threads_cpu, 1 thread", cpu1))
            .floor(baseline("floor_vs_threads_cpu", cf.median)),
        );
        record(Figure::new(
            "serve_scale",
            "floor_vs_threads_cpu",
            params.clone(),
            "ns",
            cf,
        ));
        record(
            Figure::new("serve_scale", "serve_vs_threads_wall", params, "ns", wo)
                .floor(baseline("floor_vs_threads_wall", wf.median)),
        );
        rows.push(vec![
            t.to_string(),
            f(co.median, 0),
            f(cf.median, 0),
            ratio(co.median / cf.median),
            ratio(co.median / cpu1),
            f(1e9 / wo.median, 0),
            f(1e9 / wf.median, 0),
        ]);
    }
    println!();
    println!(
        "## Concurrent vCPU threads on one file ({trounds} rounds x {iters} requests per thread)"
    );
    print_table(
        &[
            "threads",
            "ours CPU ns/req",
            "floor CPU ns/req",
            "ours/floor",
            "ours / ours at 1 thread",
            "ours req/s (all)",
            "floor req/s (all)",
        ],
        &rows,
    );
    println!();
    println!(
        "serve_scale: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
