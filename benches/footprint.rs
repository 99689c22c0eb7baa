//! Footprint: memory, threads and descriptors of `snp-vmm` idle and under
//! load, whether they grow over a soak, and the peak RSS of
//! `snp-certs build` for a 16 KiB table.
//!
//! # Method
//!
//! From `/proc/PID/status` (VmRSS, VmHWM, Threads) and `/proc/PID/fd`:
//!
//! * **floor**: this bench binary re-executed doing nothing but sleep (a
//!   Rust process linked against the same libraries);
//! * **reference, snp-vmm idle**: `snp-vmm --hypervisor mock
//!   --api-socket S`, no VM;
//! * **snp-vmm under load**: the same with a VM whose attestation guest
//!   asks without pause (`interval-ms=0`, doorbell on, the example table),
//!   while 8 client threads call `GET vm.counters` in a loop and one
//!   `PUT vm.snp-certs` (new file) every 10 ms. Sampled every second for
//!   `FOOTPRINT_SOAK_S` seconds (default 60); growth is the last sample
//!   minus the sample at a quarter of the soak (after warm-up).
//!
//! `snp-certs build` (ARK, ASK, VCEK of the Milan fixtures plus one
//! opaque entry padding the table to 16 KiB) is run as a child and its
//! `ru_maxrss` read with `wait4`; the floor is `snp-certs --version`.
//!
//! Every figure goes to `target/bench/results.json` (`rss`, `threads`,
//! `fds`, `rss_growth`, `build_maxrss`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api_server::ApiClient;
use common::{
    Figure, ProcStatus, VmmProcess, baseline, by_mode, env_usize, f, print_context, print_table,
    proc_status, ratio, record, summarize,
};

const IDLE_ENV: &str = "FOOTPRINT_IDLE";
const AT: &str = "1811808000";

/// Runs `cmd` to completion; its `ru_maxrss` in KiB.
fn maxrss_of(cmd: &mut Command) -> u64 {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: all-zero is a valid `rusage`; wait4 only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped; `status` and `ru` are
    // valid and writable for the call.
    let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(ret, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {status}"
    );
    // The child is reaped; dropping `child` does not wait on it again.
    drop(child);
    ru.ru_maxrss as u64
}

fn build_cmd(out: &Path, pad: Option<&Path>) -> Command {
    let fx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("snp-certs-verify/tests/fixtures/amd/milan");
    let mut c = Command::new(env!("CARGO_BIN_EXE_snp-certs"));
    c.arg("build")
        .arg("--ark")
        .arg(fx.join("ark.pem"))
        .arg("--ask")
        .arg(fx.join("ask.pem"))
        .arg("--vcek")
        .arg(fx.join("vcek.der"))
        .args(["--at", AT, "-o"])
        .arg(out);
    if let Some(p) = pad {
        c.arg("--other").arg(format!(
            "11111111-2222-4333-8444-555555555555={}",
            p.display()
        ));
    }
    c
}

fn mib(kib: u64) -> String {
    f(kib as f64 / 1024.0, 1)
}

fn main() {
    if std::env::var_os(IDLE_ENV).is_some() {
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    print_context("footprint");
    let started = Instant::now();
    let soak_s = env_usize("FOOTPRINT_SOAK_S", by_mode(60, 3)).max(2) as u64;
    let dir = tempfile::Builder::new()
        .prefix("footprint-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();

    // ---------------------------------------------------- floor, idle
    let mut floor_child = Command::new(std::env::current_exe().unwrap())
        .env(IDLE_ENV, "1")
        .spawn()
        .unwrap();
    let idle_dir = dir.path().join("idle");
    std::fs::create_dir(&idle_dir).unwrap();
    let idle = VmmProcess::start(&idle_dir, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let floor = proc_status(floor_child.id());
    let idle_status = idle.status();
    let _ = floor_child.kill();
    let _ = floor_child.wait();
    drop(idle);

    // ---------------------------------------------------- under load
    let load_dir = dir.path().join("load");
    std::fs::create_dir(&load_dir).unwrap();
    let certs = load_dir.join("certs.bin");
    std::fs::write(&certs, include_bytes!("../docs/examples/certs.bin")).unwrap();
    let snp = format!("certs-file={},doorbell=on", certs.display());
    let vmm = VmmProcess::start(
        &load_dir,
        &[
            "--snp",
            &snp,
            "--payload",
            "attest,requests=1000000000,interval-ms=0",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..9 {
        let (stop, calls, socket) = (Arc::clone(&stop), Arc::clone(&calls), vmm.socket.clone());
        let body = serde_json::to_vec(&serde_json::json!({"certs_file": certs})).unwrap();
        clients.push(std::thread::spawn(move || {
            let c = ApiClient::new(&socket).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if i == 8 {
                    c.raw_request("PUT", "/api/v1/vm.snp-certs", Some(body.clone()))
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                } else {
                    c.counters().unwrap();
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut samples: Vec<(f64, ProcStatus)> = Vec::new();
    let t0 = Instant::now();
    let step = if soak_s >= 20 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(250)
    };
    while t0.elapsed() < Duration::from_secs(soak_s) {
        std::thread::sleep(step);
        samples.push((t0.elapsed().as_secs_f64(), vmm.status()));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let api_calls = calls.load(Ordering::Relaxed);
    let counters = ApiClient::new(&vmm.socket).unwrap().counters().unwrap();
    let guest_delivered = counters["snp-certs"]["delivered"];
    drop(vmm);

    let rss: Vec<f64> = samples.iter().map(|(_, s)| s.rss_kib as f64).collect();
    let threads: Vec<f64> = samples.iter().map(|(_, s)| s.threads as f64).collect();
    let fds: Vec<f64> = samples.iter().map(|(_, s)| s.fds as f64).collect();
    let hwm = samples.iter().map(|(_, s)| s.hwm_kib).max().unwrap_or(0);
    let quarter = samples.len() / 4;
    let growth = rss.last().copied().unwrap_or(0.0) - rss.get(quarter).copied().unwrap_or(0.0);
    let s_rss = summarize(&rss);

    // ---------------------------------------------------- snp-certs build
    let first = dir.path().join("plain.bin");
    let plain = maxrss_of(&mut build_cmd(&first, None));
    let plain_len = std::fs::metadata(&first).unwrap().len() as usize;
    let pad_len = 16 * 1024 - plain_len - 24;
    let pad = dir.path().join("pad.bin");
    std::fs::write(&pad, vec![0xa5u8; pad_len]).unwrap();
    let out16 = dir.path().join("certs16k.bin");
    let build16 = maxrss_of(&mut build_cmd(&out16, Some(&pad)));
    let len16 = std::fs::metadata(&out16).unwrap().len();
    let version = maxrss_of(Command::new(env!("CARGO_BIN_EXE_snp-certs")).arg("--version"));

    // ---------------------------------------------------- report
    let one = |x: f64| summarize(&[x]);
    let floor_rss = floor.rss_kib as f64;
    let idle_rss = idle_status.rss_kib as f64;
    let params_load = serde_json::json!({"state": "load", "soak_s": soak_s,
        "samples": samples.len(), "api_calls": api_calls, "guest_delivered": guest_delivered});
    record(
        Figure::new(
            "footprint",
            "rss",
            serde_json::json!({"state": "floor (idle Rust process)"}),
            "KiB",
            one(floor_rss),
        )
        .floor(baseline("rss floor", floor_rss)),
    );
    record(
        Figure::new(
            "footprint",
            "rss",
            serde_json::json!({"state": "idle"}),
            "KiB",
            one(idle_rss),
        )
        .floor(baseline("rss floor", floor_rss)),
    );
    record(
        Figure::new("footprint", "rss", params_load.clone(), "KiB", s_rss)
            .reference(baseline("rss snp-vmm idle", idle_rss))
            .floor(baseline("rss floor", floor_rss))
            .samples(&rss),
    );
    record(Figure::new(
        "footprint",
        "hwm",
        params_load.clone(),
        "KiB",
        one(hwm as f64),
    ));
    record(Figure::new(
        "footprint",
        "rss_growth",
        params_load.clone(),
        "KiB",
        one(growth),
    ));
    record(
        Figure::new(
            "footprint",
            "threads",
            params_load.clone(),
            "count",
            summarize(&threads),
        )
        .reference(baseline("threads idle", idle_status.threads as f64)),
    );
    record(
        Figure::new("footprint", "fds", params_load, "count", summarize(&fds))
            .reference(baseline("fds idle", idle_status.fds as f64)),
    );
    record(
        Figure::new(
            "footprint",
            "build_maxrss",
            serde_json::json!({"table_bytes": len16}),
            "KiB",
            one(build16 as f64),
        )
        .reference(baseline("build_maxrss 3 entries", plain as f64))
        .floor(baseline("snp-certs --version", version as f64)),
    );

    println!();
    println!(
        "## snp-vmm footprint (MiB; soak {soak_s} s, {} samples)",
        samples.len()
    );
    let last = samples.last().map(|(_, s)| *s).unwrap_or_default();
    print_table(
        &[
            "process",
            "VmRSS MiB",
            "VmHWM MiB",
            "threads",
            "fds",
            "RSS / floor",
        ],
        &[
            vec![
                "floor: idle Rust process".into(),
                mib(floor.rss_kib),
                mib(floor.hwm_kib),
                floor.threads.to_string(),
                floor.fds.to_string(),
                "1.00x".into(),
            ],
            vec![
                "snp-vmm idle (no VM)".into(),
                mib(idle_status.rss_kib),
                mib(idle_status.hwm_kib),
                idle_status.threads.to_string(),
                idle_status.fds.to_string(),
                ratio(idle_rss / floor_rss),
            ],
            vec![
                "snp-vmm under load (max over soak)".into(),
                mib(s_rss.max as u64),
                mib(hwm),
                f(summarize(&threads).max, 0),
                f(summarize(&fds).max, 0),
                ratio(s_rss.max / floor_rss),
            ],
            vec![
                "snp-vmm under load (last sample)".into(),
                mib(last.rss_kib),
                mib(last.hwm_kib),
                last.threads.to_string(),
                last.fds.to_string(),
                ratio(last.rss_kib as f64 / floor_rss),
            ],
        ],
    );
    println!(
        "RSS growth from {:.1} s to the end: {growth:+.0} KiB; {api_calls} API calls, {guest_delivered} guest requests delivered",
        samples.get(quarter).map_or(0.0, |(t, _)| *t)
    );
    println!();
    print_table(
        &["snp-certs", "ru_maxrss MiB", "/ --version"],
        &[
            vec!["--version (floor)".into(), mib(version), "1.00x".into()],
            vec![
                format!("build, 3 entries ({plain_len} bytes)"),
                mib(plain),
                ratio(plain as f64 / version as f64),
            ],
            vec![
                format!("build, 16 KiB ({len16} bytes)"),
                mib(build16),
                ratio(build16 as f64 / version as f64),
            ],
        ],
    );
    println!();
    println!(
        "footprint: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
