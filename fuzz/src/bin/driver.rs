//! Stable driver for the fuzz targets: no nightly, no libFuzzer, no
//! coverage feedback. Feeds each target random inputs and mutations of a
//! small seed corpus (`fuzz/seeds/TARGET/`, if present, and built-in
//! seeds) from a seeded generator for a given time, and prints the
//! executions and, for `serve_path`, the answers reached. A failed check
//! panics and the panic message, the seed and the input (hex) are
//! printed; the exit code is then 101. A `serve_path` run that never
//! reached one of [`SERVE_PATH_REACHES`] tested too little: exit code 1.
//!
//! Usage: `driver TARGET SECONDS [SEED]` (TARGET: table_parse, serve_path).

use std::time::{Duration, Instant};

/// The answers (reasons) every `serve_path` run must reach at least once:
/// each class of request and file the inputs are built to produce.
const SERVE_PATH_REACHES: [&str; 9] = [
    "served",
    "no-certs-file",
    "size-query",
    "buffer-too-small",
    "file-invalid",
    "exceeds-guest-limit",
    "gpa-misaligned",
    "buffer-overflows",
    "outside-guest-ram",
];

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Built-in seeds: a valid table (the example certs file), its header,
/// and structured serve inputs around it.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let example = include_bytes!("../../../docs/examples/certs.bin").to_vec();
    let mut seeds = vec![example.clone(), example[..96].to_vec(), vec![0; 24]];
    if let Ok(dir) = std::fs::read_dir(format!("{}/seeds/{target}", env!("CARGO_MANIFEST_DIR"))) {
        for entry in dir.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                seeds.push(bytes);
            }
        }
    }
    if target == "serve_path" {
        // flags, first hole, 3x (pages, hole), gpa page (u16), npages,
        // then the file: the example table's bytes, whose first byte
        // (0x63, 3 modulo 4) makes mode 3, a table of 3 entries built
        // from them (2 pages). A size query, a buffer too small, one that
        // fits.
        for npages in [0, 1, 2] {
            let mut s = vec![0x02, 1, 4, 0, 4, 2, 4, 0, 1, 0, npages];
            s.extend_from_slice(&example);
            seeds.push(s);
        }
        // Three regions of 16 pages, gpa 0, 5 pages, then a valid table
        // above 16 KiB as the raw file (mode 1: its first byte is 1), with
        // allow-large (flags 0x40) off and on.
        let big = {
            let mut t = vec![0u8; 48];
            // Any GUID but the nil one; its first byte makes mode 1.
            for (i, b) in t[..16].iter_mut().enumerate() {
                *b = 1 + i as u8;
            }
            t[16..20].copy_from_slice(&48u32.to_le_bytes());
            t[20..24].copy_from_slice(&(17u32 * 1024).to_le_bytes());
            t.resize(48 + 17 * 1024, 0x30);
            t
        };
        for flags in [0x02, 0x42] {
            let mut s = vec![flags, 0, 15, 0, 15, 0, 15, 0, 0, 0, 5];
            s.extend_from_slice(&big);
            seeds.push(s);
        }
    }
    seeds
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(8) == 0 {
        let len = rng.below(512);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(8) {
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 if !data.is_empty() => {
                // An interesting little-endian u32 (offsets, lengths).
                let i = rng.below(data.len());
                let v: u32 = [0, 1, 24, 48, 0x7fff_ffff, u32::MAX, 4096][rng.below(7)];
                for (k, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = data.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            3 => data.truncate(rng.below(data.len() + 1)),
            4 => {
                let n = rng.below(64);
                data.extend((0..n).map(|_| rng.next() as u8));
            }
            5 if !data.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(data.len());
                let from = rng.below(other.len().max(1));
                let n = rng.below(64);
                let piece: Vec<u8> = other.iter().skip(from).take(n).copied().collect();
                data.splice(at..at, piece);
            }
            _ => {
                if data.len() >= 2 {
                    let i = rng.below(data.len());
                    let j = rng.below(data.len());
                    data.swap(i, j);
                }
            }
        }
    }
    data
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(seconds)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: driver TARGET SECONDS [SEED]");
        std::process::exit(2);
    };
    let run: fn(&[u8]) -> Option<&'static str> = match target.as_str() {
        "table_parse" => |d| {
            snp_certs_fuzz::table_parse(d);
            None
        },
        "serve_path" => |d| Some(snp_certs_fuzz::serve_path_outcome(d).as_str()),
        other => {
            eprintln!("unknown target {other}");
            std::process::exit(2);
        }
    };
    let Ok(seconds) = seconds.parse::<u64>() else {
        eprintln!("SECONDS must be a number");
        std::process::exit(2);
    };
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed);
    let corpus = seeds(target);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut execs: u64 = 0;
    let mut reasons = std::collections::BTreeMap::new();
    // A panic is reported below with its input; the default hook prints
    // its message first.
    while Instant::now() < deadline {
        for _ in 0..64 {
            let input = mutate(&mut rng, &corpus);
            let Ok(reason) = std::panic::catch_unwind(|| run(&input)) else {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("{target}: check failed after {execs} executions (seed {seed})");
                eprintln!("input: {hex}");
                std::process::exit(101);
            };
            if let Some(reason) = reason {
                *reasons.entry(reason).or_insert(0u64) += 1;
            }
            execs += 1;
        }
    }
    println!("{target}: {execs} executions in {seconds} s, no failure (seed {seed})");
    for (reason, n) in &reasons {
        println!("  {reason}: {n}");
    }
    if target == "serve_path" {
        let missed: Vec<&str> = SERVE_PATH_REACHES
            .into_iter()
            .filter(|r| !reasons.contains_key(r))
            .collect();
        if !missed.is_empty() {
            eprintln!(
                "{target}: the run never reached {} (seed {seed}): it tested too little",
                missed.join(", ")
            );
            std::process::exit(1);
        }
    }
}
