//! Property tests (256 cases each) of the table parser and the serve path:
//! the parser never panics and what it accepts is in bounds, built tables
//! parse back to what was put in, and every class of request (a size
//! query, a buffer too small, one the table fits, a misaligned or
//! overflowing buffer, one outside guest RAM, no certs file, a missing,
//! invalid or too large file, a writer holding the lock) gets exactly the
//! answer the module docs of `snp_certs::serve` give it, with exactly the
//! table (or the empty table, or nothing) written and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use snp_certs::lock::{self, LockKind};
use snp_certs::serve::PAGE_SIZE;
use snp_certs::table::{CertTable, EMPTY_TABLE, LINUX_GUEST_MAX_SIZE, TableBuilder};
use snp_certs::{
    BusyBudget, CertsConfig, CertsReader, CertsRequest, OnError, OutcomeKind, Reason, serve,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Up to 4 entries with distinct, non-nil GUIDs and 1-2500 bytes each (a
/// table of at most about 10 KiB).
fn entries() -> impl Strategy<Value = Vec<(u128, Vec<u8>)>> {
    prop::collection::btree_map(
        1..=u128::MAX,
        prop::collection::vec(any::<u8>(), 1..2500),
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn build(entries: &[(u128, Vec<u8>)]) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (guid, data) in entries {
        b.add_guid(uuid::Uuid::from_u128(*guid), data.clone())
            .unwrap();
    }
    b.build().unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_and_stays_in_bounds(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(table) = CertTable::parse(&bytes) {
            let header = (table.entries().len() + 1) * 24;
            for e in table.entries() {
                let start = e.offset as usize;
                prop_assert!(start >= header);
                prop_assert!(start + e.data.len() <= bytes.len());
                prop_assert_eq!(e.data, &bytes[start..start + e.data.len()]);
            }
        }
    }

    #[test]
    fn built_tables_parse_back(entries in entries()) {
        let bytes = build(&entries);
        let table = CertTable::parse(&bytes).unwrap();
        prop_assert_eq!(table.entries().len(), entries.len());
        for (e, (guid, data)) in table.entries().iter().zip(&entries) {
            prop_assert_eq!(e.guid, uuid::Uuid::from_u128(*guid));
            prop_assert_eq!(e.data, &data[..]);
        }
    }
}

/// Guest memory: two regions of 8 pages with a hole of 8 pages between
/// them, and nothing from page 24 on.
const REGIONS: [(u64, u64); 2] = [(0, 8), (16, 8)];

/// Fill byte of guest memory before each request.
const FILL: u8 = 0xa5;

/// A GUID none of [`entries`] uses, for the entry that makes a table big.
const BIG_GUID: u128 = 0xb1b1;

/// What a request is, as the answer policy tells requests apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `npages` 0, a valid file.
    SizeQuery,
    /// 0 < `npages` < the pages the table needs.
    TooSmall,
    /// An aligned buffer of enough pages whose first bytes, where the
    /// table goes, are guest RAM.
    Fits,
    /// [`Class::Fits`] with a table above 16 KiB and `allow_large` on.
    FitsLarge,
    /// `gpa` not 4 KiB aligned.
    Misaligned,
    /// `gpa + npages * 4096` overflows 64 bits.
    Overflowing,
    /// Enough pages, but where the table goes is not all guest RAM.
    OutsideRam,
    /// No certs file configured.
    NoFile,
    /// The certs file does not exist.
    Missing,
    /// The certs file is not a valid table.
    Invalid,
    /// A valid table above 16 KiB, `allow_large` off.
    TooLargeForGuests,
    /// A writer holds the exclusive lock; `certs-timeout` 0.
    WriterHolds,
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::SizeQuery),
        Just(Class::TooSmall),
        Just(Class::Fits),
        Just(Class::FitsLarge),
        Just(Class::Misaligned),
        Just(Class::Overflowing),
        Just(Class::OutsideRam),
        Just(Class::NoFile),
        Just(Class::Missing),
        Just(Class::Invalid),
        Just(Class::TooLargeForGuests),
        Just(Class::WriterHolds),
    ]
}

/// The answer a request must get.
#[derive(Debug, PartialEq, Eq)]
struct Answer<'a> {
    kind: OutcomeKind,
    reason: Reason,
    /// The `npages` written back.
    npages: u64,
    /// `Outcome::bytes`: written (delivered) or the table's size (need
    /// pages).
    bytes: usize,
    fallback: bool,
    /// Whether the shared lock is still held (a delivery from the file).
    lease: bool,
    /// What lands at `gpa`; nothing else in guest memory changes.
    written: &'a [u8],
}

/// One request of a class: the certs file (`None`: none on disk), the
/// configuration that differs between classes, and the request.
struct Case {
    file: Option<Vec<u8>>,
    allow_large: bool,
    on_error: OnError,
    request: CertsRequest,
}

/// The address of the page among `pages` (page numbers) that `pick` picks.
fn page_gpa(pages: &[u64], pick: u64) -> u64 {
    pages[(pick % pages.len() as u64) as usize] * PAGE_SIZE
}

/// Pages at which `len` bytes lie entirely in one region.
fn fitting_pages(len: u64) -> Vec<u64> {
    let pages = len.div_ceil(PAGE_SIZE).max(1);
    REGIONS
        .iter()
        .flat_map(|&(start, n)| (start..=start + n - pages.min(n)).filter(move |_| pages <= n))
        .collect()
}

/// Pages at which `len` bytes do not all lie in guest RAM: in the hole,
/// past the end, or running off the end of a region.
fn outside_pages(len: u64) -> Vec<u64> {
    (0..40)
        .filter(|&p| {
            !REGIONS
                .iter()
                .any(|&(start, n)| p >= start && p * PAGE_SIZE + len <= (start + n) * PAGE_SIZE)
        })
        .collect()
}

/// A request of `class` for `table`; `pick` chooses among the requests of
/// the class.
fn case(class: Class, table: &[u8], pick: u64, on_error: OnError) -> Case {
    let len = table.len() as u64;
    let needed = len.div_ceil(PAGE_SIZE);
    let any_page = pick % 40 * PAGE_SIZE;
    let small = pick % 8;
    let (file, allow_large, request) = match class {
        Class::SizeQuery => (Some(table.to_vec()), false, (any_page, 0)),
        Class::TooSmall => (
            Some(table.to_vec()),
            false,
            (any_page, 1 + pick % (needed - 1)),
        ),
        Class::Fits | Class::FitsLarge => {
            let gpa = page_gpa(&fitting_pages(len), pick);
            // A buffer longer than RAM around it is served: only the
            // table is written.
            (
                Some(table.to_vec()),
                class == Class::FitsLarge,
                (gpa, needed + pick % 20),
            )
        }
        Class::Misaligned => {
            let npages = if pick & 1 == 0 { small } else { pick };
            (
                Some(table.to_vec()),
                false,
                (any_page + 1 + pick % 4095, npages),
            )
        }
        Class::Overflowing => {
            // The smallest count that overflows, and up to 2^40 more.
            let first = (u64::MAX - any_page) / PAGE_SIZE + 1;
            let npages = first.saturating_add(pick >> 24);
            (Some(table.to_vec()), false, (any_page, npages))
        }
        Class::OutsideRam => {
            let gpa = page_gpa(&outside_pages(len), pick);
            (Some(table.to_vec()), false, (gpa, needed + pick % 4))
        }
        Class::NoFile => (None, false, (page_gpa(&fitting_pages(24), pick), small)),
        Class::Missing | Class::WriterHolds | Class::TooLargeForGuests => (
            Some(table.to_vec()),
            false,
            (page_gpa(&fitting_pages(24), pick), small),
        ),
        Class::Invalid => {
            // The last byte cut off: the last entry (or the terminator)
            // runs past the end.
            let cut = table[..table.len() - 1].to_vec();
            (
                Some(cut),
                false,
                (page_gpa(&fitting_pages(24), pick), small),
            )
        }
    };
    let file = if class == Class::Missing { None } else { file };
    Case {
        file,
        allow_large,
        on_error,
        request: CertsRequest {
            gpa: request.0,
            npages: request.1,
        },
    }
}

/// The answer `class` must get, from the module docs of `serve`.
fn expected<'a>(class: Class, table: &'a [u8], case: &Case) -> Answer<'a> {
    let npages = case.request.npages;
    let answer = |kind, reason| Answer {
        kind,
        reason,
        npages,
        bytes: 0,
        fallback: false,
        lease: false,
        written: &[],
    };
    let empty: &'static [u8] = if npages > 0 { &EMPTY_TABLE } else { &[] };
    let fallback = |reason| match case.on_error {
        OnError::Empty => Answer {
            bytes: empty.len(),
            fallback: true,
            written: empty,
            ..answer(OutcomeKind::Delivered, reason)
        },
        OnError::Busy => Answer {
            fallback: true,
            ..answer(OutcomeKind::Busy, reason)
        },
    };
    let needed = (table.len() as u64).div_ceil(PAGE_SIZE);
    match class {
        Class::SizeQuery | Class::TooSmall => Answer {
            npages: needed,
            bytes: table.len(),
            ..answer(
                OutcomeKind::NeedPages,
                if class == Class::SizeQuery {
                    Reason::SizeQuery
                } else {
                    Reason::BufferTooSmall
                },
            )
        },
        Class::Fits | Class::FitsLarge => Answer {
            bytes: table.len(),
            lease: true,
            written: table,
            ..answer(OutcomeKind::Delivered, Reason::Served)
        },
        Class::Misaligned => answer(OutcomeKind::Failed, Reason::GpaMisaligned),
        Class::Overflowing => answer(OutcomeKind::Failed, Reason::BufferOverflows),
        Class::OutsideRam => answer(OutcomeKind::Failed, Reason::OutsideGuestRam),
        Class::NoFile => Answer {
            bytes: empty.len(),
            written: empty,
            ..answer(OutcomeKind::Delivered, Reason::NoCertsFile)
        },
        Class::Missing => fallback(Reason::FileMissing),
        Class::Invalid => fallback(Reason::FileInvalid),
        Class::TooLargeForGuests => fallback(Reason::ExceedsGuestLimit),
        // Transient: busy while the budget lasts, whatever on_error says.
        Class::WriterHolds => answer(OutcomeKind::Busy, Reason::LockTimeout),
    }
}

/// The table for `class`: `entries`, with one more entry where the class
/// needs a table of more than a page or more than 16 KiB.
fn table_for(class: Class, entries: &[(u128, Vec<u8>)]) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (guid, data) in entries.iter().filter(|(g, _)| *g != BIG_GUID) {
        b.add_guid(uuid::Uuid::from_u128(*guid), data.clone())
            .unwrap();
    }
    let extra = match class {
        Class::TooSmall => PAGE_SIZE as usize,
        Class::FitsLarge | Class::TooLargeForGuests => LINUX_GUEST_MAX_SIZE,
        _ => 0,
    };
    if extra > 0 {
        b.add_guid(uuid::Uuid::from_u128(BIG_GUID), vec![0x30; extra])
            .unwrap();
    }
    b.build().unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_class_of_request_gets_its_answer_and_writes_only_that(
        class in class(),
        entries in entries(),
        pick in any::<u64>(),
        on_busy in any::<bool>(),
    ) {
        let table = table_for(class, &entries);
        let on_error = if on_busy { OnError::Busy } else { OnError::Empty };
        let case = case(class, &table, pick, on_error);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs.bin");
        if let Some(bytes) = &case.file {
            std::fs::write(&path, bytes).unwrap();
        }
        let ranges: Vec<(GuestAddress, usize)> = REGIONS
            .iter()
            .map(|&(start, n)| (GuestAddress(start * PAGE_SIZE), (n * PAGE_SIZE) as usize))
            .collect();
        let memory = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        for &(start, size) in &ranges {
            memory.write_slice(&vec![FILL; size], start).unwrap();
        }
        let mut config = if class == Class::NoFile {
            CertsConfig::default()
        } else {
            CertsConfig::with_file(&path)
        };
        config.certs_timeout = 0;
        config.allow_large = case.allow_large;
        config.on_error = case.on_error;
        let _writer = (class == Class::WriterHolds).then(|| hold_exclusive(&path));
        let mut reader = CertsReader::new();
        let outcome = serve(&mut reader, &config, &BusyBudget::new(), case.request, &memory);
        let want = expected(class, &table, &case);
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
        prop_assert_eq!(&got, &want, "{:?} {:?}", class, case.request);
        let gpa = case.request.gpa;
        for &(start, size) in &ranges {
            let mut bytes = vec![0; size];
            memory.read_slice(&mut bytes, start).unwrap();
            for (i, b) in bytes.iter().enumerate() {
                let addr = start.0 + i as u64;
                let expected = match addr.checked_sub(gpa) {
                    Some(at) if at < want.written.len() as u64 => want.written[at as usize],
                    _ => FILL,
                };
                prop_assert_eq!(*b, expected, "{:?}: byte {:#x}", class, addr);
            }
        }
    }
}

/// A management tool's exclusive lock on `path`, held until dropped.
fn hold_exclusive(path: &Path) -> std::fs::File {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    lock::lock(&file, LockKind::Exclusive, Duration::ZERO).unwrap();
    file
}
