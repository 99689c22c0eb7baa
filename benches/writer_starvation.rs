//! How long a writer waits for the exclusive lock while guests hammer the
//! certs file with requests.
//!
//! # Method
//!
//! The table is `docs/examples/certs.bin`, copied into a temporary
//! directory under Cargo's target directory. For each reader count R in
//! 0 (the floor), 1, 2, 4, 8 and 16 the bench starts R reader
//! **processes** (this binary re-executed with `WRITER_STARVATION_READER`
//! set), each a hostile guest's worth of load: a loop of
//! `CertsReader::lock_and_read` (100 ms timeout, as a VMM's certs-timeout)
//! and dropping the lease, as fast as it can, with no pause. Once every
//! reader has reported its first read, the writer times
//! `ExclusiveLock::acquire` (timeout `WRITER_STARVATION_TIMEOUT_MS`,
//! default 2,000 ms), holds the lock for nothing, releases it, and waits
//! 1 ms before the next try; `WRITER_STARVATION_TRIES` tries (default 200, so
//! that p99 is not just the maximum) per row. A try that times out counts as its timeout in the figures and
//! in the "timeouts" column. The readers are then killed and report how
//! many reads they completed, printed as reads per second.
//!
//! The floor is the row with no readers. Every row also goes to
//! `target/bench/results.json` (figure `writer_wait`, params `readers`).
//!
//! The figures are wall-clock waits on a machine whose cores other work
//! shares; they vary from run to run. Nothing is asserted about them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Figure, baseline, by_mode, env_usize, f, print_context, print_table, record, summarize,
};
use snp_certs::CertsReader;
use snp_certs::update::ExclusiveLock;

/// Set in a reader process: the certs file to hammer.
const READER_ENV: &str = "WRITER_STARVATION_READER";

fn reader_main(path: &Path) -> ! {
    let mut reader = CertsReader::new();
    let mut reads: u64 = 0;
    let mut announced = false;
    // The parent kills us; the count it reports is the last of the lines
    // printed every 4096 reads.
    loop {
        if let Ok(locked) = reader.lock_and_read(path, Duration::from_millis(100)) {
            drop(locked);
            reads += 1;
            if !announced {
                println!("ready");
                announced = true;
            }
            if reads % 4096 == 0 {
                println!("reads {reads}");
            }
        }
    }
}

struct Readers {
    children: Vec<Child>,
    started: Instant,
}

impl Readers {
    fn start(count: usize, path: &Path) -> Readers {
        let exe = std::env::current_exe().expect("current_exe");
        let mut children = Vec::new();
        for _ in 0..count {
            let mut child = Command::new(&exe)
                .env(READER_ENV, path)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn reader");
            let stdout = child.stdout.as_mut().expect("reader stdout");
            let mut line = String::new();
            // Blocks until the reader's first read: the pipe is the event.
            let mut first = BufReader::new(stdout.by_ref().take(6));
            first.read_line(&mut line).expect("reader ready line");
            assert_eq!(line.trim(), "ready", "reader did not start");
            children.push(child);
        }
        Readers {
            children,
            started: Instant::now(),
        }
    }

    /// Kills the readers; returns their reads per second (approximate:
    /// each reports every 4096 reads).
    fn stop(self) -> f64 {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut total = 0u64;
        for mut child in self.children {
            let _ = child.kill();
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out);
            }
            let _ = child.wait();
            let last = out
                .lines()
                .filter_map(|l| l.strip_prefix("reads "))
                .filter_map(|n| n.parse::<u64>().ok())
                .next_back()
                .unwrap_or(0);
            total += last;
        }
        total as f64 / elapsed.max(1e-9)
    }
}

fn scratch_file() -> (tempfile::TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    let dir = tempfile::tempdir_in(&target).expect("temp dir");
    let path = dir.path().join("certs.bin");
    std::fs::copy(root.join("docs/examples/certs.bin"), &path).expect("copy table");
    (dir, path)
}

fn main() {
    if let Some(path) = std::env::var_os(READER_ENV) {
        reader_main(Path::new(&path));
    }
    print_context("writer_starvation");
    let tries = env_usize("WRITER_STARVATION_TRIES", by_mode(200, 5));
    let timeout = Duration::from_millis(env_usize(
        "WRITER_STARVATION_TIMEOUT_MS",
        by_mode(2_000, 500),
    ) as u64);
    let counts: Vec<usize> = if common::is_quick() {
        vec![0, 16]
    } else {
        vec![0, 1, 2, 4, 8, 16]
    };
    let (_dir, path) = scratch_file();
    println!(
        "# writer: ExclusiveLock::acquire, {tries} tries per row, timeout {} ms; \
         readers: CertsReader::lock_and_read loops, one process each",
        timeout.as_millis()
    );
    let mut rows = Vec::new();
    let mut floor_p50 = f64::NAN;
    for &count in &counts {
        let readers = Readers::start(count, &path);
        let mut waits_ms = Vec::with_capacity(tries);
        let mut timeouts = 0usize;
        for _ in 0..tries {
            let start = Instant::now();
            match ExclusiveLock::acquire(&path, timeout) {
                Ok(lock) => {
                    waits_ms.push(start.elapsed().as_secs_f64() * 1e3);
                    lock.release();
                }
                Err(_) => {
                    timeouts += 1;
                    waits_ms.push(timeout.as_secs_f64() * 1e3);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let reads_per_s = readers.stop();
        let s = summarize(&waits_ms);
        if count == 0 {
            floor_p50 = s.median;
        }
        record(
            Figure::new(
                "writer_starvation",
                "writer_wait",
                serde_json::json!({"readers": count, "tries": tries,
                                   "timeout_ms": timeout.as_millis() as u64,
                                   "timeouts": timeouts, "reads_per_s": reads_per_s.round()}),
                "ms",
                s,
            )
            .floor(baseline("writer_wait, readers 0", floor_p50)),
        );
        rows.push(vec![
            if count == 0 {
                "0 (floor)".to_owned()
            } else {
                count.to_string()
            },
            f(s.median, 3),
            f(s.p90, 3),
            f(s.p99, 3),
            f(s.max, 3),
            format!("{timeouts}/{tries}"),
            f(reads_per_s / 1e3, 1),
        ]);
    }
    print_table(
        &[
            "reader processes",
            "writer wait p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "timeouts",
            "reads/s (k)",
        ],
        &rows,
    );
}
