//! Wake-up latency of a reader waiting for the shared lock on a certs file
//! while a management tool holds the exclusive lock, and the CPU the
//! reader burns while it waits.
//!
//! # Method
//!
//! The writer is **another process**: this bench binary re-executed with
//! `SNP_BENCH_LOCK_WAKE_WRITER=<file>`, driven over its stdin/stdout. For
//! each sample:
//!
//! 1. the reader (this process, its main thread) tells the writer to take
//!    the exclusive OFD lock and hold it for 1.5 ms plus a random 0..1 ms
//!    (so the unlock falls at a uniformly random phase of a 1 ms polling
//!    loop); the writer answers once it holds the lock;
//! 2. the reader starts waiting for the shared lock with one of the
//!    methods below (opened with its own descriptor, so its own open file
//!    description);
//! 3. the writer reads `CLOCK_MONOTONIC` right before `F_UNLCK` and sends
//!    that raw value back; the reader reads the same system-wide clock
//!    when its wait returns, and the difference is the wake-up latency.
//!
//! The methods, interleaved sample by sample so that noise hits them
//! alike, in each of their six orders in turn, so that every method
//! follows every other one equally often:
//!
//! * **ours**: `snp_certs::lock::lock_for_lease(file, 100 ms, None)`, the
//!   lock a vCPU's `CertsReader` takes: the first try (`F_OFD_GETLK` on
//!   the writer intent byte finds the writer's whole-file lock), then one
//!   blocking `F_OFD_SETLKW` on the reader's range bounded by a per-thread
//!   POSIX timer; the timer lingers after the wake-up for the next wait to
//!   reuse (it is armed again only when it would fire after that wait's
//!   deadline, or once it fired), so nothing but the return follows the
//!   wake-up and most waits make no timer system call at all. The
//!   descriptor is kept open across requests, as a vCPU's `CertsReader`
//!   does. (A lingering timer that fires between waits interrupts one
//!   system call of this thread; the floor's `F_OFD_SETLKW` then simply
//!   waits again.)
//! * **floor**: a bare blocking `F_OFD_SETLKW`, no timer, no timeout: what
//!   the kernel alone costs.
//! * **QEMU v1** (the reference algorithm, AMD's RFC v1 of Dec 2024,
//!   `kvm_handle_snp_req_certs`): `do { ret = open_certs_locked();
//!   g_usleep(1000); } while (ret == -EAGAIN && !timed_out);` where
//!   `open_certs_locked` opens the file, tries a shared `F_OFD_SETLK` and
//!   closes the file again on conflict. It sleeps 1 ms after *every* try,
//!   including the one that got the lock. Two latencies are reported for
//!   it: when the lock was taken, and when the loop returns (the request
//!   can proceed), which includes that last sleep.
//!
//! CPU time is the waiting thread's `CLOCK_THREAD_CPUTIME_ID` across the
//! call (user + system, the figure `getrusage(RUSAGE_THREAD)` reports with
//! microsecond rounding); voluntary context switches come from
//! `getrusage(RUSAGE_THREAD)`. A second, shorter series holds the lock for
//! 50 ms to show how the waiting cost grows with the wait: it stays flat
//! for a blocking wait and grows by one poll per millisecond for QEMU's.
//!
//! # Knobs
//!
//! * `LOCK_WAKE_ITERS` (default 300): samples per method, short holds.
//! * `LOCK_WAKE_LONG_ITERS` (default 20, 0 skips): samples per method with
//!   the long hold.
//! * `LOCK_WAKE_LONG_HOLD_MS` (default 50): the long hold.
//!
//! The target (issue 20) is printed with the ratios: ours at most 1.3x the
//! bare `F_OFD_SETLKW` median.
//!
//! Default run: about 6 s after building. Under `cargo test --benches` (no
//! `--bench` argument) it runs as a smoke test with tiny samples.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::floor::ofd_lock;
use common::{
    Figure, Jitter, Summary, baseline, by_mode, env_usize, f, mono_ns, print_context, print_table,
    ratio, record, summarize, thread_cpu_ns, thread_voluntary_switches,
};
use snp_certs::lock;

/// Set in the re-executed writer process: the file to lock.
const WRITER_ENV: &str = "SNP_BENCH_LOCK_WAKE_WRITER";

/// The timeout passed to our lock: the default `certs_timeout`. Never
/// reached here (holds are far shorter).
const TIMEOUT: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------- writer

/// The writer process: `L` + hold (u32 µs, LE) takes the exclusive lock,
/// answers `k`, holds, then sends the monotonic time read right before
/// unlocking (u64 ns, LE). EOF on stdin ends it.
fn writer_main(path: &str) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("writer: cannot open the file");
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    loop {
        let mut cmd = [0u8; 5];
        if input.read_exact(&mut cmd).is_err() {
            return;
        }
        assert_eq!(cmd[0], b'L', "writer: unknown command");
        let hold = Duration::from_micros(u64::from(u32::from_le_bytes([
            cmd[1], cmd[2], cmd[3], cmd[4],
        ])));
        ofd_lock(&file, libc::F_WRLCK, libc::F_OFD_SETLKW).expect("writer: exclusive lock");
        output.write_all(b"k").unwrap();
        output.flush().unwrap();
        std::thread::sleep(hold);
        let t0 = mono_ns();
        ofd_lock(&file, libc::F_UNLCK, libc::F_OFD_SETLK).expect("writer: unlock");
        output.write_all(&t0.to_le_bytes()).unwrap();
        output.flush().unwrap();
    }
}

/// The reader's handle on the writer process.
struct Writer {
    child: Child,
    to: Option<ChildStdin>,
    from: ChildStdout,
}

impl Writer {
    fn spawn(path: &Path) -> Writer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(WRITER_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the writer process");
        let to = child.stdin.take();
        let from = child.stdout.take().unwrap();
        Writer { child, to, from }
    }

    /// Makes the writer take the exclusive lock; returns once it holds it.
    fn lock_for(&mut self, hold: Duration) {
        let us = u32::try_from(hold.as_micros()).unwrap();
        let mut cmd = [b'L', 0, 0, 0, 0];
        cmd[1..].copy_from_slice(&us.to_le_bytes());
        let to = self.to.as_mut().unwrap();
        to.write_all(&cmd).unwrap();
        to.flush().unwrap();
        let mut ack = [0u8; 1];
        self.from.read_exact(&mut ack).unwrap();
        assert_eq!(&ack, b"k");
    }

    /// The writer's monotonic time right before it unlocked.
    fn unlocked_at(&mut self) -> u64 {
        let mut t0 = [0u8; 8];
        self.from.read_exact(&mut t0).unwrap();
        u64::from_le_bytes(t0)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing its stdin ends the writer's loop.
        drop(self.to.take());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- methods

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Ours,
    Floor,
    QemuV1,
}

const METHODS: [Method; 3] = [Method::Ours, Method::Floor, Method::QemuV1];

/// The reference algorithm: QEMU RFC v1's `open_certs_locked`: open the
/// file, try a shared `F_OFD_SETLK` (`qemu_lock_fd(fd, 0, 0, false)`), and
/// close it again when another holder conflicts.
fn qemu_open_certs_locked(path: &Path) -> io::Result<Option<File>> {
    let file = File::open(path)?;
    match ofd_lock(&file, libc::F_RDLCK, libc::F_OFD_SETLK) {
        Ok(()) => Ok(Some(file)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
            drop(file); // out_close: close(fd)
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The reference algorithm: QEMU RFC v1's wait in
/// `kvm_handle_snp_req_certs`, faithfully:
///
/// ```c
/// do {
///     ret = open_certs_locked(sev_snp_guest);
///     g_usleep(1000);
/// } while (ret == -EAGAIN && !timed_out);
/// ```
///
/// `timed_out` is set by a QEMU timer `certs_timeout` ms after the start;
/// an `Instant` deadline is the same. Note the unconditional 1 ms sleep,
/// also after the try that took the lock. Returns the locked file and the
/// monotonic time at which the lock was taken.
fn qemu_v1_wait(path: &Path, timeout: Duration) -> Option<(File, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let ret = qemu_open_certs_locked(path).unwrap();
        let taken = mono_ns();
        std::thread::sleep(Duration::from_micros(1000)); // g_usleep(1000)
        match ret {
            Some(file) => return Some((file, taken)),
            None if Instant::now() < deadline => continue,
            None => return None,
        }
    }
}

/// One measured wait.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Unlock to lock taken, ns.
    taken_ns: f64,
    /// Unlock to the wait returning, ns.
    returned_ns: f64,
    /// Waiting thread's CPU time across the call, ns.
    cpu_ns: f64,
    /// Voluntary context switches across the call.
    switches: f64,
}

/// Waits once with `method` while `writer` holds the lock for `hold`.
fn sample(method: Method, writer: &mut Writer, path: &Path, kept: &File, hold: Duration) -> Sample {
    writer.lock_for(hold);
    let cpu0 = thread_cpu_ns();
    let sw0 = thread_voluntary_switches();
    let (taken, returned, file) = match method {
        Method::Ours => {
            lock::lock_for_lease(kept, TIMEOUT, None).expect("ours: lock");
            let t = mono_ns();
            (t, t, None)
        }
        Method::Floor => {
            // A blocking lock call ends with EINTR when a signal arrives
            // (here: ours's lingering timer, once in a while); it is then
            // simply made again, as any waiter would.
            loop {
                match ofd_lock(kept, libc::F_RDLCK, libc::F_OFD_SETLKW) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => panic!("floor: lock: {e}"),
                }
            }
            let t = mono_ns();
            (t, t, None)
        }
        Method::QemuV1 => {
            let (file, taken) = qemu_v1_wait(path, TIMEOUT).expect("QEMU v1: timed out");
            (taken, mono_ns(), Some(file))
        }
    };
    let cpu = thread_cpu_ns() - cpu0;
    let switches = thread_voluntary_switches() - sw0;
    // Release before the writer may lock again (QEMU: unlock and close).
    match file {
        Some(file) => {
            ofd_lock(&file, libc::F_UNLCK, libc::F_OFD_SETLK).unwrap();
            drop(file);
        }
        None => lock::unlock(kept).unwrap(),
    }
    let t0 = writer.unlocked_at();
    Sample {
        taken_ns: taken.saturating_sub(t0) as f64,
        returned_ns: returned.saturating_sub(t0) as f64,
        cpu_ns: cpu as f64,
        switches: switches as f64,
    }
}

/// Samples each of `methods` `iters` times, interleaved; holds are `base`
/// plus a random `0..spread`. The methods run in every order in turn, so
/// each runs right after each other one equally often.
fn series(
    methods: &[Method],
    writer: &mut Writer,
    path: &Path,
    kept: &File,
    iters: usize,
    base: Duration,
    spread: Duration,
) -> Vec<(Method, Vec<Sample>)> {
    let orders: &[&[usize]] = match methods.len() {
        3 => &[
            &[0, 1, 2],
            &[0, 2, 1],
            &[1, 0, 2],
            &[1, 2, 0],
            &[2, 0, 1],
            &[2, 1, 0],
        ],
        2 => &[&[0, 1], &[1, 0]],
        _ => &[&[0]],
    };
    let mut jitter = Jitter::new();
    let mut out: Vec<(Method, Vec<Sample>)> = methods.iter().map(|m| (*m, Vec::new())).collect();
    for i in 0..iters {
        for &idx in orders[i % orders.len()] {
            let spread_us = u64::try_from(spread.as_micros()).unwrap();
            let hold = base + Duration::from_micros(jitter.below(spread_us.max(1)));
            let s = sample(methods[idx], writer, path, kept, hold);
            out[idx].1.push(s);
        }
    }
    out
}

fn us(ns: f64) -> String {
    f(ns / 1e3, 1)
}

fn main() {
    if let Ok(path) = std::env::var(WRITER_ENV) {
        writer_main(&path);
        return;
    }
    let iters = env_usize("LOCK_WAKE_ITERS", by_mode(300, 3));
    let qemu_iters = env_usize("LOCK_WAKE_QEMU_ITERS", by_mode(100, 2));
    let long_iters = env_usize("LOCK_WAKE_LONG_ITERS", by_mode(20, 1));
    let long_hold = Duration::from_millis(env_usize("LOCK_WAKE_LONG_HOLD_MS", 50) as u64);
    let started = Instant::now();

    print_context("lock_wake");
    let dir = tempfile::Builder::new()
        .prefix("lock-wake-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, include_bytes!("../docs/examples/certs.bin")).unwrap();
    let kept = File::open(&path).unwrap();
    let mut writer = Writer::spawn(&path);
    println!(
        "writer: separate process (this binary re-executed); reader: main thread, own open file description; file {}",
        path.display()
    );

    // Warm-up: creates our per-thread timer, faults in code paths.
    let _ = series(
        &METHODS,
        &mut writer,
        &path,
        &kept,
        6,
        Duration::from_micros(500),
        Duration::from_micros(1),
    );

    let hold = Duration::from_micros(1500);
    let spread = Duration::from_micros(1000);
    // Ours against the floor, alternating: the target comparison.
    let target = series(
        &[Method::Ours, Method::Floor],
        &mut writer,
        &path,
        &kept,
        iters,
        hold,
        spread,
    );
    // QEMU v1 against ours, in a series of its own (see the module docs).
    let reference = series(
        &[Method::Ours, Method::QemuV1],
        &mut writer,
        &path,
        &kept,
        qemu_iters,
        hold,
        spread,
    );
    let get = |m: Method, set: &[(Method, Vec<Sample>)]| -> Vec<Sample> {
        set.iter()
            .find(|(k, _)| *k == m)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let ours = get(Method::Ours, &target);
    let floor = get(Method::Floor, &target);
    let ours_ref = get(Method::Ours, &reference);
    let qemu = get(Method::QemuV1, &reference);
    let short = vec![
        (Method::Ours, ours.clone()),
        (Method::Floor, floor.clone()),
        (Method::QemuV1, qemu.clone()),
    ];

    println!();
    println!(
        "## Wake-up latency: writer's unlock -> reader holds the lock (hold 1.5-2.5 ms; ours and the floor: {iters} samples each, alternating; QEMU v1: {qemu_iters} samples, alternating with ours)"
    );
    let mut rows = Vec::new();
    let mut latency_row = |name: &str, samples: &[Sample], pick: fn(&Sample) -> f64| {
        let values: Vec<f64> = samples.iter().map(pick).collect();
        let cpu = summarize(&samples.iter().map(|s| s.cpu_ns).collect::<Vec<_>>());
        let sw = summarize(&samples.iter().map(|s| s.switches).collect::<Vec<_>>());
        let s = summarize(&values);
        rows.push(vec![
            name.to_owned(),
            us(s.median),
            us(s.p90),
            us(s.p99),
            us(s.max),
            us(cpu.median),
            f(sw.mean, 1),
        ]);
        s
    };
    let s_ours = latency_row("ours: lock_for_lease() (SETLKW + timer)", &ours, |s| {
        s.taken_ns
    });
    let s_floor = latency_row("floor: bare F_OFD_SETLKW", &floor, |s| s.taken_ns);
    let s_ours_ref = latency_row("ours, in QEMU v1's series", &ours_ref, |s| s.taken_ns);
    let s_qemu_taken = latency_row("QEMU v1: lock taken", &qemu, |s| s.taken_ns);
    let s_qemu_ret = latency_row("QEMU v1: returns (+1 ms sleep)", &qemu, |s| s.returned_ns);
    print_table(
        &[
            "method",
            "median µs",
            "p90 µs",
            "p99 µs",
            "max µs",
            "CPU µs/wait (median)",
            "vol. ctx switches/wait (mean)",
        ],
        &rows,
    );
    // results.json: latencies in µs, with raw samples for the CDF plot.
    let to_us = |samples: &[Sample], pick: fn(&Sample) -> f64| -> Vec<f64> {
        samples.iter().map(|s| pick(s) / 1e3).collect()
    };
    let floor_base = baseline("wake_floor_setlkw", s_floor.median / 1e3);
    let ref_base = baseline("wake_qemu_v1_returns", s_qemu_ret.median / 1e3);
    let params = serde_json::json!({"hold_ms": "1.5-2.5", "iters": iters});
    for (figure, samples, pick) in [
        (
            "wake_ours",
            &ours,
            (|s: &Sample| s.taken_ns) as fn(&Sample) -> f64,
        ),
        ("wake_floor_setlkw", &floor, |s: &Sample| s.taken_ns),
        ("wake_qemu_v1_taken", &qemu, |s: &Sample| s.taken_ns),
        ("wake_qemu_v1_returns", &qemu, |s: &Sample| s.returned_ns),
    ] {
        let v = to_us(samples, pick);
        record(
            Figure::new("lock_wake", figure, params.clone(), "us", summarize(&v))
                .reference(ref_base.clone())
                .floor(floor_base.clone())
                .samples(&v),
        );
    }
    let cpu_floor = summarize(&to_us(&floor, |s| s.cpu_ns)).median;
    for (figure, samples) in [
        ("cpu_per_wait_ours", &ours),
        ("cpu_per_wait_floor", &floor),
        ("cpu_per_wait_qemu_v1", &qemu),
    ] {
        let v = to_us(samples, |s| s.cpu_ns);
        record(
            Figure::new("lock_wake", figure, params.clone(), "us", summarize(&v))
                .floor(baseline("cpu_per_wait_floor", cpu_floor)),
        );
    }
    println!();
    println!("## Ratios (medians; p99 in brackets)");
    let ratio_row = |name: &str, a: &Summary, b: &Summary| -> Vec<String> {
        vec![
            name.into(),
            format!("{} [{}]", ratio(a.median / b.median), ratio(a.p99 / b.p99)),
            String::new(),
        ]
    };
    let wake = s_ours.median / s_floor.median;
    let mut ours_row = ratio_row("ours / floor", &s_ours, &s_floor);
    ours_row[2] = format!(
        "median <= 1.30x: {}",
        if wake <= 1.30 { "met" } else { "missed" }
    );
    print_table(
        &["ratio", "value", "target"],
        &[
            ours_row,
            ratio_row("QEMU v1 returns / ours", &s_qemu_ret, &s_ours_ref),
            ratio_row("QEMU v1 lock taken / ours", &s_qemu_taken, &s_ours_ref),
        ],
    );

    if long_iters > 0 {
        let long = series(
            &METHODS,
            &mut writer,
            &path,
            &kept,
            long_iters,
            long_hold,
            Duration::from_micros(1000),
        );
        println!();
        println!(
            "## CPU burnt while waiting: short holds (1.5-2.5 ms) vs long holds ({} ms), per wait",
            long_hold.as_millis()
        );
        let mut rows = Vec::new();
        for (m, name) in [
            (Method::Ours, "ours"),
            (Method::Floor, "floor"),
            (Method::QemuV1, "QEMU v1"),
        ] {
            let a = get(m, &short);
            let b = get(m, &long);
            let cpu_a = summarize(&a.iter().map(|s| s.cpu_ns).collect::<Vec<_>>());
            let cpu_b = summarize(&b.iter().map(|s| s.cpu_ns).collect::<Vec<_>>());
            let sw_a = summarize(&a.iter().map(|s| s.switches).collect::<Vec<_>>());
            let sw_b = summarize(&b.iter().map(|s| s.switches).collect::<Vec<_>>());
            let lat_b = summarize(&b.iter().map(|s| s.returned_ns).collect::<Vec<_>>());
            let cpu_us: Vec<f64> = b.iter().map(|s| s.cpu_ns / 1e3).collect();
            record(Figure::new(
                "lock_wake",
                &format!("cpu_per_wait_{}", name.replace(' ', "_").to_lowercase()),
                serde_json::json!({"hold_ms": long_hold.as_millis() as u64, "iters": long_iters}),
                "us",
                summarize(&cpu_us),
            ));
            rows.push(vec![
                name.to_owned(),
                us(cpu_a.median),
                f(sw_a.mean, 1),
                us(cpu_b.median),
                f(sw_b.mean, 1),
                us(lat_b.median),
            ]);
        }
        print_table(
            &[
                "method",
                "CPU µs (short)",
                "ctx switches (short)",
                "CPU µs (long)",
                "ctx switches (long)",
                "wake µs (long, median)",
            ],
            &rows,
        );
    }
    drop(writer);
    println!();
    println!(
        "lock_wake: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
