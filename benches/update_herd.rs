//! The update herd: N guest requests blocked on a certs file while a
//! management tool holds the exclusive lock for a firmware update. How
//! long after the unlock is the last of them served, and how much CPU did
//! the waiters burn while they waited?
//!
//! # Method
//!
//! The table is `docs/examples/certs.bin` in a temporary directory under
//! Cargo's target directory. For each waiter count N (1, 16, 64, 256) and
//! each hold length (two of them, default 50 and 250 ms), one sample goes:
//!
//! 1. this process (the writer) takes the exclusive lock;
//! 2. it starts the waiters: min(N, 4) **processes** (this binary
//!    re-executed with `UPDATE_HERD_WAITER` set), each with N/P threads,
//!    each thread with its own open file description;
//! 3. it waits until every waiter is blocked in the kernel (counted in
//!    `/proc/locks`, the `->` lines on the file's inode; for the polling
//!    reference, until every thread has started), then holds the lock for
//!    the hold length more;
//! 4. it reads `CLOCK_MONOTONIC` right before the unlock; each waiter
//!    reads it when it has been served (lock taken, table read);
//! 5. each waiter process reports its served times and its
//!    `getrusage(RUSAGE_SELF)` user + system time from the moment all its
//!    threads were about to wait until all were served.
//!
//! Completion is the last served time minus the unlock. CPU is the waiter
//! processes' total divided by N. The methods:
//!
//! * **ours**: writer `ExclusiveLock::acquire` (intent byte, then whole
//!   file), waiters `CertsReader::lock_and_read` (timeout hold + 5 s);
//! * **floor**: writer a raw whole-file `F_OFD_SETLK` write lock, waiters
//!   a bare blocking `F_OFD_SETLKW` read lock + one `pread`;
//! * **reference, QEMU v1**: the same raw writer; waiters loop `open` +
//!   `F_OFD_SETLK` try (+ `close` on conflict) + 1 ms sleep, as AMD's RFC
//!   v1 does (the sleep also after the successful try), then `pread`.
//!
//! Every figure is written to `target/bench/results.json`
//! (`herd_completion`, `herd_cpu_per_waiter`, params method/waiters/hold).
//!
//! # Knobs
//!
//! * `UPDATE_HERD_REPS` (default 5): samples per method, N and hold.
//! * `UPDATE_HERD_HOLDS_MS` (default `50,250`): the hold lengths.
//! * `UPDATE_HERD_MAX` (default 256): the largest N.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::floor::{ofd_lock, process_cpu_ns};
use common::{
    Figure, Summary, baseline, by_mode, env_usize, f, mono_ns, print_context, print_table, ratio,
    record, summarize,
};
use snp_certs::CertsReader;
use snp_certs::update::ExclusiveLock;

const WAITER_ENV: &str = "UPDATE_HERD_WAITER";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Ours,
    Floor,
    QemuV1,
}

const METHODS: [Method; 3] = [Method::Ours, Method::Floor, Method::QemuV1];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Ours => "ours",
            Method::Floor => "floor",
            Method::QemuV1 => "qemu_v1",
        }
    }

    fn from_name(s: &str) -> Method {
        match s {
            "ours" => Method::Ours,
            "floor" => Method::Floor,
            _ => Method::QemuV1,
        }
    }
}

fn pread_all(file: &File, buf: &mut [u8]) -> usize {
    // SAFETY: `buf` is valid for writes of its length and outlives the
    // call; the descriptor is open.
    let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n > 0, "pread: {}", std::io::Error::last_os_error());
    n as usize
}

/// One waiter thread: waits with `method`, returns when served.
fn wait_once(method: Method, path: &Path, timeout: Duration) -> u64 {
    let mut buf = vec![0u8; 16 * 1024];
    match method {
        Method::Ours => {
            let mut reader = CertsReader::new();
            let locked = reader.lock_and_read(path, timeout).expect("ours: served");
            let t = mono_ns();
            drop(locked);
            t
        }
        Method::Floor => {
            let file = File::open(path).unwrap();
            assert!(ofd_lock(&file, libc::F_RDLCK, libc::F_OFD_SETLKW).is_ok());
            pread_all(&file, &mut buf);
            let t = mono_ns();
            let _ = ofd_lock(&file, libc::F_UNLCK, libc::F_OFD_SETLK);
            t
        }
        Method::QemuV1 => {
            let deadline = Instant::now() + timeout;
            loop {
                let file = File::open(path).unwrap();
                let got = ofd_lock(&file, libc::F_RDLCK, libc::F_OFD_SETLK).is_ok();
                std::thread::sleep(Duration::from_millis(1)); // g_usleep(1000)
                if got {
                    pread_all(&file, &mut buf);
                    let t = mono_ns();
                    let _ = ofd_lock(&file, libc::F_UNLCK, libc::F_OFD_SETLK);
                    return t;
                }
                drop(file);
                assert!(Instant::now() < deadline, "QEMU v1: timed out");
            }
        }
    }
}

/// A waiter process: `method:threads:timeout_ms:path`. Prints `ready`
/// once its threads are about to wait, then `done CPU_NS T...`.
fn waiter_main(spec: &str) -> ! {
    let mut parts = spec.splitn(4, ':');
    let method = Method::from_name(parts.next().unwrap());
    let threads: usize = parts.next().unwrap().parse().unwrap();
    let timeout = Duration::from_millis(parts.next().unwrap().parse().unwrap());
    let path = PathBuf::from(parts.next().unwrap());
    let barrier = Arc::new(Barrier::new(threads + 1));
    let served = Arc::new(Mutex::new(Vec::with_capacity(threads)));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (b, s, p) = (Arc::clone(&barrier), Arc::clone(&served), path.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    b.wait();
                    let t = wait_once(method, &p, timeout);
                    s.lock().unwrap().push(t);
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let cpu0 = process_cpu_ns();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    let cpu = process_cpu_ns() - cpu0;
    let times = served.lock().unwrap();
    let list: Vec<String> = times.iter().map(u64::to_string).collect();
    writeln!(out, "done {cpu} {}", list.join(" ")).unwrap();
    out.flush().unwrap();
    std::process::exit(0);
}

/// Waiters blocked in the kernel on `ino`, from `/proc/locks`.
fn blocked_on(ino: u64) -> usize {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let suffix = format!(":{ino}");
    text.lines()
        .filter(|l| l.contains("->"))
        .filter(|l| l.split_whitespace().any(|w| w.ends_with(&suffix)))
        .count()
}

enum Held {
    Ours(ExclusiveLock),
    Raw(File),
}

struct Sample {
    completion_us: f64,
    cpu_per_waiter_us: f64,
}

fn sample(method: Method, path: &Path, ino: u64, waiters: usize, hold: Duration) -> Sample {
    let held = match method {
        Method::Ours => Held::Ours(ExclusiveLock::acquire(path, Duration::from_secs(5)).unwrap()),
        _ => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            assert!(ofd_lock(&file, libc::F_WRLCK, libc::F_OFD_SETLK).is_ok());
            Held::Raw(file)
        }
    };
    let procs = waiters.min(4);
    let timeout_ms = hold.as_millis() as u64 + 5000;
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<(Child, BufReader<std::process::ChildStdout>)> = (0..procs)
        .map(|i| {
            let threads = waiters / procs + usize::from(i < waiters % procs);
            let spec = format!(
                "{}:{threads}:{timeout_ms}:{}",
                method.name(),
                path.display()
            );
            let mut child = Command::new(&exe)
                .env(WAITER_ENV, spec)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            (child, out)
        })
        .collect();
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }
    if method != Method::QemuV1 {
        // The event gate: every waiter blocked in the kernel.
        let deadline = Instant::now() + Duration::from_secs(10);
        while blocked_on(ino) < waiters {
            assert!(Instant::now() < deadline, "waiters never all blocked");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::thread::sleep(hold);
    let t0 = mono_ns();
    match held {
        Held::Ours(lock) => {
            lock.release();
        }
        Held::Raw(file) => {
            let _ = ofd_lock(&file, libc::F_UNLCK, libc::F_OFD_SETLK);
        }
    }
    let mut last = 0u64;
    let mut cpu = 0u64;
    let mut served = 0usize;
    for (mut child, mut out) in children {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("done"), "waiter said {line:?}");
        cpu += words.next().unwrap().parse::<u64>().unwrap();
        for w in words {
            last = last.max(w.parse().unwrap());
            served += 1;
        }
        child.wait().unwrap();
    }
    assert_eq!(served, waiters);
    Sample {
        completion_us: last.saturating_sub(t0) as f64 / 1e3,
        cpu_per_waiter_us: cpu as f64 / 1e3 / waiters as f64,
    }
}

fn main() {
    if let Ok(spec) = std::env::var(WAITER_ENV) {
        waiter_main(&spec);
    }
    print_context("update_herd");
    let started = Instant::now();
    let reps = env_usize("UPDATE_HERD_REPS", by_mode(5, 1)).max(1);
    let max = env_usize("UPDATE_HERD_MAX", by_mode(256, 16));
    let holds: Vec<u64> = std::env::var("UPDATE_HERD_HOLDS_MS")
        .unwrap_or_else(|_| {
            if common::is_quick() {
                "20,60"
            } else {
                "50,250"
            }
            .to_owned()
        })
        .split(',')
        .map(|s| s.trim().parse().expect("UPDATE_HERD_HOLDS_MS: ms,ms"))
        .collect();
    let counts: Vec<usize> = [1usize, 16, 64, 256]
        .into_iter()
        .filter(|n| *n <= max)
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("update-herd-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, include_bytes!("../docs/examples/certs.bin")).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    println!(
        "# {reps} samples per cell; waiters in min(N, 4) processes; holds {holds:?} ms after all are blocked"
    );

    // (method, n, hold) -> samples
    let mut results: Vec<(Method, usize, u64, Vec<Sample>)> = Vec::new();
    for &n in &counts {
        for &hold in &holds {
            let mut cells: Vec<Vec<Sample>> = METHODS.iter().map(|_| Vec::new()).collect();
            for rep in 0..reps {
                for k in 0..METHODS.len() {
                    let idx = (rep + k) % METHODS.len();
                    let s = sample(METHODS[idx], &path, ino, n, Duration::from_millis(hold));
                    cells[idx].push(s);
                }
            }
            for (idx, samples) in cells.into_iter().enumerate() {
                results.push((METHODS[idx], n, hold, samples));
            }
        }
    }

    let summary_of = |m: Method, n: usize, hold: u64, cpu: bool| -> Summary {
        let (_, _, _, s) = results
            .iter()
            .find(|(mm, nn, hh, _)| *mm == m && *nn == n && *hh == hold)
            .unwrap();
        let v: Vec<f64> = s
            .iter()
            .map(|x| {
                if cpu {
                    x.cpu_per_waiter_us
                } else {
                    x.completion_us
                }
            })
            .collect();
        summarize(&v)
    };
    let mut rows = Vec::new();
    for &n in &counts {
        for &hold in &holds {
            let ours = summary_of(Method::Ours, n, hold, false);
            let floor = summary_of(Method::Floor, n, hold, false);
            let qemu = summary_of(Method::QemuV1, n, hold, false);
            let cpu_ours = summary_of(Method::Ours, n, hold, true);
            let cpu_floor = summary_of(Method::Floor, n, hold, true);
            let cpu_qemu = summary_of(Method::QemuV1, n, hold, true);
            for (m, lat, cpu) in [
                (Method::Ours, ours, cpu_ours),
                (Method::Floor, floor, cpu_floor),
                (Method::QemuV1, qemu, cpu_qemu),
            ] {
                let params = serde_json::json!({"method": m.name(), "waiters": n,
                    "hold_ms": hold, "processes": n.min(4), "reps": reps});
                record(
                    Figure::new("update_herd", "herd_completion", params.clone(), "us", lat)
                        .reference(baseline("herd_completion qemu_v1", qemu.median))
                        .floor(baseline("herd_completion floor", floor.median)),
                );
                record(
                    Figure::new("update_herd", "herd_cpu_per_waiter", params, "us", cpu)
                        .reference(baseline("herd_cpu_per_waiter qemu_v1", cpu_qemu.median))
                        .floor(baseline("herd_cpu_per_waiter floor", cpu_floor.median)),
                );
            }
            rows.push(vec![
                n.to_string(),
                hold.to_string(),
                f(ours.median / 1e3, 3),
                f(ours.max / 1e3, 3),
                f(floor.median / 1e3, 3),
                f(qemu.median / 1e3, 3),
                ratio(ours.median / floor.median),
                f(cpu_ours.median, 1),
                f(cpu_floor.median, 1),
                f(cpu_qemu.median, 1),
            ]);
        }
    }
    println!();
    println!("## Unlock -> last waiter served (ms), and CPU per waiter over the wait (µs)");
    print_table(
        &[
            "waiters",
            "hold ms",
            "ours p50 ms",
            "ours max ms",
            "floor p50 ms",
            "QEMU v1 p50 ms",
            "ours/floor",
            "CPU µs/waiter ours",
            "floor",
            "QEMU v1",
        ],
        &rows,
    );
    println!();
    println!(
        "update_herd: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
