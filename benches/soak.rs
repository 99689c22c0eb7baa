//! Soak: several VMs serving one shared certs file while a writer rewrites
//! it as fast as it can and hostile guests hammer it; every delivered
//! table must be one complete version, never older than the last version
//! fully written before the request began.
//!
//! # Set-up
//!
//! * The certs file holds one VCEK entry whose bytes are the version
//!   number (u64 LE) repeated; its length varies with the version
//!   (1-8 KiB), so a torn read shows as mixed words or a wrong length.
//! * **Writer** (a thread): rewrites the file in place with version v+1,
//!   v+2, … without pause, as `snp_certs::update::rewrite_in_place` does
//!   (`ExclusiveLock::acquire`, waiting at most 2 s, then `rewrite`), and
//!   while it holds the exclusive lock checks that no VM runs its firmware
//!   step under a lease on that file; every 16th version instead is
//!   written to a temporary file and renamed over the certs file (the
//!   replacement readers must notice by inode; a lease on the replaced
//!   file does not hold off a writer of the new one). After each write it
//!   publishes v as "fully written".
//! * **VMs** (`SOAK_VMS` threads, default 3): each a vCPU with its own
//!   `CertsReader`, guest memory (two regions with a hole) and busy
//!   budget, calling `snp_certs::serve` in a loop as a guest's requests
//!   arrive (certs-timeout 100 ms, on-error empty). A delivery from the
//!   file must hold its lease; the VM checks what landed in guest memory
//!   against the version published before the request began, then runs
//!   its **firmware step** (what the immediate-exit `KVM_RUN` is on a real
//!   host: 10 µs, marked with the file it holds the lease on, for the
//!   writer to see) before it drops the lease.
//! * **Hostile guests** (`SOAK_HOSTILE` processes, default 2): this binary
//!   re-executed, hammering `CertsReader::lock_and_read` without pause and
//!   checking each table is one complete version.
//!
//! Prints the requests checked, the answers (busy and fallback answers by
//! reason), the versions seen and written, and the violations. Exits 1 on
//! any violation: a torn, invalid or stale table; a delivery without its
//! lease; the writer holding the exclusive lock during a VM's firmware
//! step; a fallback answer (the file is always there and valid, and no
//! writer holds the lock for the 30 s busy budget); and a writer that
//! makes no progress (no version written, a 2 s lock wait that timed out,
//! or VMs that never saw a version after the first). Run by
//! scripts/soak.sh DURATION.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use snp_certs::serve::PAGE_SIZE;
use snp_certs::table::{CertTable, TableBuilder};
use snp_certs::update::{ExclusiveLock, UpdateOptions};
use snp_certs::{
    BusyBudget, CertKind, CertsConfig, CertsReader, CertsRequest, OnError, OutcomeKind, Reason,
    serve,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const HOSTILE_ENV: &str = "SOAK_HOSTILE_FILE";
const UNTIL_ENV: &str = "SOAK_HOSTILE_SECONDS";

/// How long a VM's firmware step (the immediate-exit run) lasts.
const FIRMWARE_STEP: Duration = Duration::from_micros(10);

/// How long the writer waits for the exclusive lock before it counts a
/// timeout (no progress).
const WRITER_TIMEOUT: Duration = Duration::from_secs(2);

/// The table of version `v`.
fn table(v: u64) -> Vec<u8> {
    let words = 128 + (v % 8) as usize * 128;
    let data: Vec<u8> = std::iter::repeat_n(v.to_le_bytes(), words)
        .flatten()
        .collect();
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, data).unwrap();
    b.build().unwrap()
}

/// The version a table holds, if it is one complete version.
fn version_of(bytes: &[u8]) -> Result<u64, String> {
    let t = CertTable::parse(bytes).map_err(|e| format!("invalid table: {e}"))?;
    let [entry] = t.entries() else {
        return Err(format!("{} entries", t.entries().len()));
    };
    let first = entry.data.get(..8).ok_or("short entry")?;
    let v = u64::from_le_bytes(first.try_into().map_err(|_| "short entry")?);
    if bytes != table(v) {
        return Err(format!("not exactly version {v}"));
    }
    Ok(v)
}

fn hostile_main(path: &Path, seconds: u64) -> ! {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut reader = CertsReader::new();
    let (mut checked, mut bad, mut max) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        if let Ok(locked) = reader.lock_and_read(path, Duration::from_millis(100)) {
            match version_of(locked.bytes) {
                Ok(v) => max = max.max(v),
                Err(e) => {
                    bad += 1;
                    eprintln!("hostile: {e}");
                }
            }
            checked += 1;
        }
    }
    println!("{checked} {bad} {max}");
    std::process::exit(0);
}

/// Counters per [`Reason`].
struct ByReason([AtomicU64; Reason::ALL.len()]);

impl Default for ByReason {
    fn default() -> ByReason {
        ByReason(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl ByReason {
    fn add(&self, reason: Reason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// `reason N, ...` for the reasons counted.
    fn describe(&self) -> String {
        let parts: Vec<String> = Reason::ALL
            .iter()
            .filter_map(|r| {
                let n = self.0[r.index()].load(Ordering::Relaxed);
                (n > 0).then(|| format!("{r} {n}"))
            })
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Default)]
struct Tally {
    checked: AtomicU64,
    delivered: AtomicU64,
    busy: ByReason,
    fallback: ByReason,
    violations: AtomicU64,
    min_seen: AtomicU64,
    max_seen: AtomicU64,
    /// Per VM: 0, or 1 + the file generation (see [`generation`]) whose
    /// lease the VM holds while it runs its firmware step.
    in_firmware: Vec<AtomicU64>,
    /// Firmware steps run.
    firmware_steps: AtomicU64,
}

impl Tally {
    fn violation(&self, what: String) {
        if self.violations.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("soak: VIOLATION: {what}");
        }
    }

    /// VM `vm`'s firmware step under its lease on the file of generation
    /// `generation` (`None`: not known): marked in `in_firmware` for the
    /// writer to see, [`FIRMWARE_STEP`] long.
    fn firmware_step(&self, vm: usize, generation: Option<u64>) {
        if let Some(g) = generation {
            self.in_firmware[vm].store(g + 1, Ordering::SeqCst);
        }
        let until = Instant::now() + FIRMWARE_STEP;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        self.in_firmware[vm].store(0, Ordering::SeqCst);
        self.firmware_steps.fetch_add(1, Ordering::Relaxed);
    }

    /// How many VMs run their firmware step under a lease on the file of
    /// `generation` now.
    fn in_firmware_on(&self, generation: u64) -> usize {
        self.in_firmware
            .iter()
            .filter(|g| g.load(Ordering::SeqCst) == generation + 1)
            .count()
    }
}

/// Which file a version lives in: the writer renames a new file over the
/// path for every 16th version and rewrites that file in place for the
/// next 15, so versions 16k to 16k + 15 share generation k (one inode).
fn generation(version: u64) -> u64 {
    version / 16
}

fn vm_loop(
    vm: usize,
    path: PathBuf,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let ranges = [(GuestAddress(0), 0x4000), (GuestAddress(0x8000), 0x4000)];
    let memory = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    let mut config = CertsConfig::with_file(&path);
    config.certs_timeout = 100;
    config.on_error = OnError::Empty;
    let request = CertsRequest {
        gpa: 0x8000,
        npages: 4,
    };
    let mut buffer = vec![0u8; 4 * PAGE_SIZE as usize];
    while !stop.load(Ordering::Relaxed) {
        let floor = written.load(Ordering::Acquire);
        let outcome = serve(&mut reader, &config, &budget, request, &memory);
        tally.checked.fetch_add(1, Ordering::Relaxed);
        match (outcome.kind, outcome.fallback) {
            (OutcomeKind::Delivered, false) => {
                tally.delivered.fetch_add(1, Ordering::Relaxed);
                let got = &mut buffer[..outcome.bytes];
                memory.read_slice(got, GuestAddress(request.gpa)).unwrap();
                let version = match version_of(got) {
                    Ok(v) if v < floor => {
                        tally.violation(format!("version {v} delivered after {floor} was written"));
                        None
                    }
                    Ok(v) => {
                        tally.min_seen.fetch_min(v, Ordering::Relaxed);
                        tally.max_seen.fetch_max(v, Ordering::Relaxed);
                        Some(v)
                    }
                    Err(e) => {
                        tally.violation(e);
                        None
                    }
                };
                if outcome.lease.is_some() {
                    tally.firmware_step(vm, version.map(generation));
                } else {
                    tally.violation("a delivery from the file without its lease".to_owned());
                }
            }
            (OutcomeKind::Busy, _) => tally.busy.add(outcome.reason),
            (_, true) => tally.fallback.add(outcome.reason),
            (kind, _) => tally.violation(format!("unexpected {kind} ({})", outcome.reason)),
        }
        // The lease, if any, ends here: after the firmware step.
        drop(outcome);
    }
}

/// One in-place rewrite to version `version` under the exclusive lock,
/// checking while it holds the lock that no VM runs its firmware step
/// under a lease on the same file.
fn rewrite(path: &Path, version: u64, tally: &Tally) -> Result<(), snp_certs::update::UpdateError> {
    let bytes = table(version);
    let lock = ExclusiveLock::acquire(path, WRITER_TIMEOUT)?;
    let overlapping = tally.in_firmware_on(generation(version));
    if overlapping > 0 {
        tally.violation(format!(
            "the writer holds the exclusive lock while {overlapping} VM(s) run their firmware step on the same file"
        ));
    }
    lock.rewrite(&bytes, &UpdateOptions::default())?;
    lock.release();
    Ok(())
}

fn writer_loop(
    path: &Path,
    written: &AtomicU64,
    stop: &AtomicBool,
    tally: &Tally,
) -> (u64, u64, u64) {
    let (mut v, mut renames, mut timeouts) = (0u64, 0u64, 0u64);
    let tmp = path.with_extension("new");
    while !stop.load(Ordering::Relaxed) {
        let next = v + 1;
        let ok = if next % 16 == 0 {
            fs::write(&tmp, table(next)).unwrap();
            fs::rename(&tmp, path).unwrap();
            renames += 1;
            true
        } else {
            match rewrite(path, next, tally) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("soak: writer: {e}");
                    timeouts += 1;
                    false
                }
            }
        };
        if ok {
            v = next;
            written.store(v, Ordering::Release);
        }
    }
    (v, renames, timeouts)
}

fn main() {
    if let (Some(path), Ok(secs)) = (std::env::var_os(HOSTILE_ENV), std::env::var(UNTIL_ENV)) {
        hostile_main(Path::new(&path), secs.parse().unwrap_or(1));
    }
    common::print_context("soak");
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(common::env_usize("SOAK_SECONDS", common::by_mode(20, 2)) as u64);
    let vms = common::env_usize("SOAK_VMS", 3);
    let hostile = common::env_usize("SOAK_HOSTILE", 2);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let path = dir.path().join("certs.bin");
    fs::write(&path, table(0)).unwrap();
    println!("# {seconds} s, {vms} VMs (threads), {hostile} hostile guest processes, 1 writer");

    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally {
        min_seen: AtomicU64::new(u64::MAX),
        in_firmware: (0..vms).map(|_| AtomicU64::new(0)).collect(),
        ..Tally::default()
    });
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..hostile)
        .map(|_| {
            Command::new(&exe)
                .env(HOSTILE_ENV, &path)
                .env(UNTIL_ENV, seconds.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let vm_threads: Vec<_> = (0..vms)
        .map(|vm| {
            let (p, w, s, t) = (
                path.clone(),
                Arc::clone(&written),
                Arc::clone(&stop),
                Arc::clone(&tally),
            );
            std::thread::spawn(move || vm_loop(vm, p, w, s, t))
        })
        .collect();
    let writer = {
        let (p, w, s, t) = (
            path.clone(),
            Arc::clone(&written),
            Arc::clone(&stop),
            Arc::clone(&tally),
        );
        std::thread::spawn(move || writer_loop(&p, &w, &s, &t))
    };
    // The children end at their own deadline; their exit is the clock.
    let mut hostile_checked = 0u64;
    let mut hostile_bad = 0u64;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        match fields[..] {
            [checked, bad, _max] => {
                hostile_checked += checked;
                hostile_bad += bad;
            }
            _ => {
                eprintln!("soak: a hostile guest reported nothing");
                hostile_bad += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in vm_threads {
        t.join().unwrap();
    }
    let (versions, renames, writer_timeouts) = writer.join().unwrap();
    let t = &tally;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "VM requests checked: {} (delivered {}, busy {}, fallback {}); versions seen {}..={}",
        get(&t.checked),
        get(&t.delivered),
        t.busy.total(),
        t.fallback.total(),
        get(&t.min_seen).min(get(&t.max_seen)),
        get(&t.max_seen)
    );
    println!("  busy answers by reason: {}", t.busy.describe());
    println!("  fallback answers by reason: {}", t.fallback.describe());
    println!("  firmware steps under a lease: {}", get(&t.firmware_steps));
    println!("hostile reads checked: {hostile_checked} (torn or invalid: {hostile_bad})");
    println!(
        "writer: {versions} versions written ({renames} by rename, {:.0}/s), {writer_timeouts} lock timeouts ({} s each)",
        versions as f64 / seconds.max(1) as f64,
        WRITER_TIMEOUT.as_secs()
    );
    let mut failures = Vec::new();
    let violations = get(&t.violations) + hostile_bad;
    if violations > 0 {
        failures.push(format!("{violations} violations"));
    }
    if get(&t.delivered) == 0 {
        failures.push("no VM request was delivered".to_owned());
    }
    if t.fallback.total() > 0 {
        failures.push(format!(
            "{} fallback answers ({})",
            t.fallback.total(),
            t.fallback.describe()
        ));
    }
    if versions == 0 {
        failures.push("the writer wrote no version".to_owned());
    }
    if writer_timeouts > 0 {
        failures.push(format!(
            "the writer waited {} s for the lock {writer_timeouts} time(s)",
            WRITER_TIMEOUT.as_secs()
        ));
    }
    if get(&t.max_seen) == 0 {
        failures.push("the VMs never saw a version after the first".to_owned());
    }
    if failures.is_empty() {
        println!("soak: ok");
    } else {
        println!("soak: FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
}
