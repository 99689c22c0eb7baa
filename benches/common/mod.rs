//! Helpers shared by the benchmarks: clocks, per-thread CPU time, order
//! statistics, environment knobs and table printing. Each bench uses a
//! subset.

#![allow(dead_code)]

use std::time::Duration;

/// `CLOCK_MONOTONIC` in nanoseconds. The clock is system-wide, so values
/// taken in two processes can be subtracted.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time (user + system) consumed so far by the calling thread, in
/// nanoseconds: `CLOCK_THREAD_CPUTIME_ID`, the scheduler's exact runtime
/// (the same accounting `getrusage(RUSAGE_THREAD)` reports, without its
/// microsecond rounding).
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let ret = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(ret, 0, "clock_gettime({clock}) failed");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Voluntary context switches of the calling thread so far
/// (`getrusage(RUSAGE_THREAD).ru_nvcsw`): each one is the thread going to
/// sleep, so a polling loop shows one per poll.
pub fn thread_voluntary_switches() -> u64 {
    // SAFETY: all-zero is a valid `rusage`; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable for the duration of the call.
    let ret = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(ret, 0, "getrusage(RUSAGE_THREAD) failed");
    usage.ru_nvcsw as u64
}

/// A positive integer from the environment, or `default` when unset.
/// Exits with a message when it is set but not a valid number.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("{name}={text:?} is not a non-negative integer ({e})");
                std::process::exit(2);
            }
        },
    }
}

/// Whether this is a real benchmark run: `cargo bench` passes `--bench`
/// to a `harness = false` target, `cargo test --benches` does not. Under
/// `cargo test` the benches run as smoke tests with tiny samples.
pub fn is_bench_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `full` under `cargo bench`, `smoke` under `cargo test`.
pub fn by_mode(full: usize, smoke: usize) -> usize {
    if is_bench_run() { full } else { smoke }
}

/// Order statistics of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile `p` (0..=100) of an ascending sample.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `values` (any order).
pub fn summarize(values: &[f64]) -> Summary {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = if sorted.is_empty() {
        f64::NAN
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    Summary {
        n: sorted.len(),
        min: sorted.first().copied().unwrap_or(f64::NAN),
        median: percentile(&sorted, 50.0),
        p90: percentile(&sorted, 90.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or(f64::NAN),
        mean,
    }
}

/// Prints a table with a header row and right-aligned columns (the first
/// column left-aligned), as GitHub-flavoured Markdown so it can be pasted
/// into docs as is.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::from("|");
        for (i, width) in widths.iter().enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            if i == 0 {
                out.push_str(&format!(" {cell:<width$} |"));
            } else {
                out.push_str(&format!(" {cell:>width$} |"));
            }
        }
        out
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    println!("{}", line(&header));
    let mut rule = String::from("|");
    for (i, width) in widths.iter().enumerate() {
        if i == 0 {
            rule.push_str(&format!(" {} |", "-".repeat(*width)));
        } else {
            rule.push_str(&format!(" {}: |", "-".repeat(width.saturating_sub(1))));
        }
    }
    println!("{rule}");
    for row in rows {
        println!("{}", line(row));
    }
}

/// Formats with `digits` decimals.
pub fn f(value: f64, digits: usize) -> String {
    format!("{value:.digits$}")
}

/// Formats a ratio as `12.3x`.
pub fn ratio(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}x")
    } else if value >= 10.0 {
        format!("{value:.1}x")
    } else {
        format!("{value:.2}x")
    }
}

/// Prints the context every bench starts with: date, CPUs, kernel.
pub fn print_context(bench: &str) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    println!("# {bench}: {cpus} CPUs, kernel {kernel}, unix time {now}");
    if !is_bench_run() {
        println!("# smoke run (not started by `cargo bench`): tiny samples, figures meaningless");
    }
}

/// A small xorshift generator for jitter; not for anything that matters.
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the monotonic clock.
    pub fn new() -> Jitter {
        Jitter(mono_ns() | 1)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % bound.max(1)
    }
}
