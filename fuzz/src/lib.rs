//! Fuzz target functions for snp-certs, shared by the libFuzzer entry
//! points (`fuzz_targets/`) and the stable driver (`src/bin/driver.rs`).
//!
//! * [`table_parse`]: `CertTable::parse` on arbitrary bytes: never panics,
//!   and what it accepts is self-consistent (every entry lies inside the
//!   blob, after the terminator, GUIDs unique).
//! * [`serve_path`]: the whole serve path on an arbitrary certs file, an
//!   arbitrary request and a guest memory of 1 to 3 regions with holes.
//!   The answer is derived here, independently, from the request, the
//!   memory layout, the file and the configuration ([`expected`], which
//!   follows the table in the module docs of `snp_certs::serve`), and the
//!   outcome must be exactly it: kind, reason, `ret`, `npages`, bytes, the
//!   fallback flag and whether the lease is held. So an engine that falls
//!   back for a valid file, answers a fitting buffer with `ENOSPC` or a
//!   guest fault with anything but `EIO` fails. Guest memory must then
//!   hold exactly what that answer writes at `gpa` (the file, the 24-byte
//!   empty table, or nothing) and be unchanged everywhere else.
//!
//! A failed check panics, which both drivers report as a crash.

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use snp_certs::serve::PAGE_SIZE;
use snp_certs::table::{CertTable, EMPTY_TABLE, MAX_TABLE_SIZE, TableBuilder, exceeds_guest_limit};
use snp_certs::{
    BusyBudget, CertsConfig, CertsReader, CertsRequest, OnError, OutcomeKind, Reason, serve,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `CertTable::parse` on `data`.
pub fn table_parse(data: &[u8]) {
    let Ok(table) = CertTable::parse(data) else {
        return;
    };
    let entries = table.entries();
    let header = (entries.len() + 1) * 24;
    assert!(header <= data.len(), "terminator beyond the blob");
    let mut guids = Vec::new();
    for e in entries {
        let start = e.offset as usize;
        let end = start
            .checked_add(e.data.len())
            .expect("entry end overflows");
        assert!(start >= header, "entry inside the header");
        assert!(end <= data.len(), "entry beyond the blob");
        assert_eq!(e.data, &data[start..end], "entry bytes are not the blob's");
        assert!(!guids.contains(&e.guid), "duplicate GUID accepted");
        guids.push(e.guid);
    }
    let _ = table.warnings();
}

/// Bytes consumed from the front of the input, zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
}

/// The certs file every exec of this process rewrites.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("certs.bin");
            (dir, path)
        })
        .1
}

/// Fill byte of guest memory before the request.
const FILL: u8 = 0xa5;

/// The whole serve path; see the module docs for what is checked.
pub fn serve_path(data: &[u8]) {
    let _ = serve_path_outcome(data);
}

/// [`serve_path`], returning the answer's reason (the stable driver counts
/// them, to show which paths were reached).
pub fn serve_path_outcome(data: &[u8]) -> Reason {
    let mut input = Input(data);
    let flags = input.u8();
    // Guest memory: 1-3 regions of 1-16 pages, with holes of 0-15 pages
    // (a hole of 0 makes two regions adjacent).
    let regions = 1 + usize::from(flags & 3) % 3;
    let mut ranges = Vec::new();
    let mut cursor: u64 = u64::from(input.u8() % 16) * PAGE_SIZE;
    for _ in 0..regions {
        let pages = 1 + u64::from(input.u8() % 16);
        ranges.push((GuestAddress(cursor), (pages * PAGE_SIZE) as usize));
        cursor += pages * PAGE_SIZE + u64::from(input.u8() % 16) * PAGE_SIZE;
    }
    // The request: near the memory most of the time, anything otherwise.
    let gpa = if flags & 0x80 != 0 {
        // A few pages into one of the regions.
        let (start, _) = ranges[usize::from(input.u8()) % ranges.len()];
        start.0 + u64::from(input.u8() % 4) * PAGE_SIZE
    } else if flags & 0x04 != 0 {
        input.u64()
    } else {
        let page = u64::from(input.u16() % 64);
        let misalign = if flags & 0x08 != 0 {
            u64::from(input.u16())
        } else {
            0
        };
        page * PAGE_SIZE + misalign
    };
    let npages = if flags & 0x10 != 0 {
        input.u64()
    } else {
        u64::from(input.u8() % 24)
    };
    let mut config = CertsConfig::with_file(scratch());
    config.certs_timeout = 0;
    config.on_error = if flags & 0x20 != 0 {
        OnError::Busy
    } else {
        OnError::Empty
    };
    config.allow_large = flags & 0x40 != 0;
    // The file: the rest as raw bytes, or a table built from it (to get
    // past the parser), or no file configured at all.
    let rest = input.0;
    let mode = rest.first().copied().unwrap_or(0) % 4;
    let file: Option<Vec<u8>> = match mode {
        0 => None,
        1 => Some(rest.to_vec()),
        _ => {
            let mut b = TableBuilder::new();
            for (i, chunk) in rest
                .chunks(1 + rest.len() / (usize::from(mode) + 1))
                .enumerate()
            {
                let guid = uuid::Uuid::from_u128(0x1000 + i as u128);
                let _ = b.add_guid(guid, chunk.to_vec());
            }
            b.build().ok()
        }
    };
    let path = scratch();
    match &file {
        Some(bytes) => fs::write(path, bytes).expect("write the certs file"),
        None => config.certs_file = None,
    }
    let memory = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
    for (start, size) in &ranges {
        memory
            .write_slice(&vec![FILL; *size], *start)
            .expect("fill guest memory");
    }
    let request = CertsRequest { gpa, npages };
    let mut reader = CertsReader::new();
    let outcome = serve(&mut reader, &config, &BusyBudget::new(), request, &memory);
    assert_eq!(
        outcome.ret(),
        match outcome.kind {
            OutcomeKind::Delivered => 0,
            OutcomeKind::NeedPages => 28,
            OutcomeKind::Busy => 11,
            OutcomeKind::Failed => 5,
        }
    );
    let want = expected(request, &ranges, file.as_deref(), &config);
    let got = Answer {
        kind: outcome.kind,
        reason: outcome.reason,
        npages: outcome.npages,
        bytes: outcome.bytes,
        fallback: outcome.fallback,
        lease: outcome.lease.is_some(),
        // What was written is read back from guest memory below.
        written: want.written,
    };
    assert_eq!(got, want, "request {request:?}, memory {ranges:?}");
    let written = want.written;
    // Every byte of guest memory is the fill, except the table at gpa.
    for (start, size) in &ranges {
        let mut bytes = vec![0u8; *size];
        memory
            .read_slice(&mut bytes, *start)
            .expect("read guest memory");
        let mut expected = vec![FILL; *size];
        if let Some(w) = written {
            // The part of [gpa, gpa + len) inside this region.
            let (lo, hi) = (start.0, start.0 + *size as u64);
            let (from, to) = (gpa.max(lo), gpa.saturating_add(w.len() as u64).min(hi));
            if from < to {
                expected[(from - lo) as usize..(to - lo) as usize]
                    .copy_from_slice(&w[(from - gpa) as usize..(to - gpa) as usize]);
            }
        }
        if bytes != expected {
            let at = bytes.iter().zip(&expected).position(|(a, b)| a != b);
            panic!(
                "guest memory at {:#x} + {at:?} changed outside the table (gpa {gpa:#x})",
                start.0
            );
        }
    }
    outcome.reason
}

/// The answer a request must get, and what it writes at `gpa`.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The outcome's kind.
    pub kind: OutcomeKind,
    /// Why.
    pub reason: Reason,
    /// The `npages` written back.
    pub npages: u64,
    /// Bytes written (delivered) or the table's size (need pages).
    pub bytes: usize,
    /// Whether it is the fallback answer.
    pub fallback: bool,
    /// Whether the shared lock is still held (a delivery from the file).
    pub lease: bool,
    /// What lands at `gpa`, if anything.
    pub written: Option<&'a [u8]>,
}

/// Whether `[gpa, gpa + len)` is all guest RAM in `ranges` (sorted;
/// adjacent ones join).
fn inside(ranges: &[(GuestAddress, usize)], gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    let mut pos = gpa;
    while pos < end {
        let Some((start, size)) = ranges
            .iter()
            .find(|(start, size)| start.0 <= pos && pos < start.0 + *size as u64)
        else {
            return false;
        };
        pos = start.0 + *size as u64;
    }
    true
}

/// The answer `request` must get with guest memory `ranges`, the certs
/// file holding `file` (`None`: no certs file configured) and `config`
/// (certs-timeout 0, nobody else holding the lock, a fresh busy budget),
/// derived from the module docs of `snp_certs::serve`, not from its code.
pub fn expected<'a>(
    request: CertsRequest,
    ranges: &[(GuestAddress, usize)],
    file: Option<&'a [u8]>,
    config: &CertsConfig,
) -> Answer<'a> {
    let CertsRequest { gpa, npages } = request;
    let answer = |kind, reason| Answer {
        kind,
        reason,
        npages,
        bytes: 0,
        fallback: false,
        lease: false,
        written: None,
    };
    // The guest's own faults first: nothing else is looked at.
    if gpa % PAGE_SIZE != 0 {
        return answer(OutcomeKind::Failed, Reason::GpaMisaligned);
    }
    if npages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| gpa.checked_add(len))
        .is_none()
    {
        return answer(OutcomeKind::Failed, Reason::BufferOverflows);
    }
    // Writing `bytes` at gpa: delivered, or EIO if they are not all RAM.
    let write = |base: Answer<'a>, bytes: &'a [u8]| {
        if inside(ranges, gpa, bytes.len() as u64) {
            Answer {
                bytes: bytes.len(),
                written: Some(bytes),
                ..base
            }
        } else {
            Answer {
                kind: OutcomeKind::Failed,
                reason: Reason::OutsideGuestRam,
                lease: false,
                ..base
            }
        }
    };
    // The empty table: 24 zero bytes when the guest offered a buffer.
    let empty = |base: Answer<'a>| {
        if npages == 0 {
            base
        } else {
            write(base, &EMPTY_TABLE)
        }
    };
    let Some(file) = file else {
        return empty(answer(OutcomeKind::Delivered, Reason::NoCertsFile));
    };
    let trouble = if file.len() > MAX_TABLE_SIZE {
        Some(Reason::FileTooLarge)
    } else if CertTable::parse(file).is_err() {
        Some(Reason::FileInvalid)
    } else if exceeds_guest_limit(file.len() as u64, config.allow_large) {
        Some(Reason::ExceedsGuestLimit)
    } else {
        None
    };
    if let Some(reason) = trouble {
        // Persistent: the fallback at once.
        return match config.on_error {
            OnError::Busy => Answer {
                fallback: true,
                ..answer(OutcomeKind::Busy, reason)
            },
            OnError::Empty => empty(Answer {
                fallback: true,
                ..answer(OutcomeKind::Delivered, reason)
            }),
        };
    }
    let needed = (file.len() as u64).div_ceil(PAGE_SIZE);
    if npages < needed {
        let reason = if npages == 0 {
            Reason::SizeQuery
        } else {
            Reason::BufferTooSmall
        };
        return Answer {
            npages: needed,
            bytes: file.len(),
            ..answer(OutcomeKind::NeedPages, reason)
        };
    }
    write(
        Answer {
            lease: true,
            ..answer(OutcomeKind::Delivered, Reason::Served)
        },
        file,
    )
}
