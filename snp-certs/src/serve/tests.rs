#![allow(clippy::arithmetic_side_effects)]

use std::fs;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestUsize};

use super::*;
use crate::guid::CertKind;
use crate::lock::{self, LockKind};
use crate::table::TableBuilder;

pub(super) const MIB: GuestUsize = 1 << 20;

/// A valid table of exactly `size` bytes (size >= 49).
pub(super) fn table_of_size(size: usize) -> Vec<u8> {
    let mut data = vec![0xab; size - 48];
    data[0] = 0x30;
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, data).unwrap();
    let t = b.build().unwrap();
    assert_eq!(t.len(), size);
    t
}

pub(super) fn memory(ranges: &[(u64, u64)]) -> GuestMemoryMmap {
    let ranges: Vec<_> = ranges
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    for &(start, len) in &ranges {
        mem.write_slice(&vec![0xee; len], start).unwrap();
    }
    mem
}

pub(super) fn read(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
    buf
}

pub(super) struct Setup {
    _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) config: CertsConfig,
    pub(super) bytes: Vec<u8>,
}

pub(super) fn setup(size: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs");
    let bytes = table_of_size(size);
    fs::write(&path, &bytes).unwrap();
    Setup {
        config: CertsConfig::with_file(&path),
        path,
        bytes,
        _dir: dir,
    }
}

pub(super) fn req(gpa: u64, npages: u64) -> CertsRequest {
    CertsRequest { gpa, npages }
}

pub(super) fn can_lock_exclusive(path: &Path) -> bool {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    lock::try_lock(&f, LockKind::Exclusive).unwrap()
}

#[test]
fn delivers_the_file_and_holds_the_lock_until_the_lease_drops() {
    let s = setup(5000);
    let mem = memory(&[(0, MIB)]);
    let out = serve(
        &mut CertsReader::new(),
        &s.config,
        &BusyBudget::new(),
        req(0x4000, 2),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason, out.ret()),
        (OutcomeKind::Delivered, Reason::Served, 0)
    );
    assert_eq!(out.npages, 2);
    assert_eq!(out.bytes, 5000);
    assert_eq!(read(&mem, 0x4000, 5000), s.bytes);
    // Nothing past the table was touched.
    assert_eq!(read(&mem, 0x4000 + 5000, 16), vec![0xee; 16]);
    assert!(!can_lock_exclusive(&s.path));
    drop(out.lease);
    assert!(can_lock_exclusive(&s.path));
}

#[test]
fn page_math_is_exact() {
    for (size, pages) in [(4096, 1), (4097, 2), (8192, 2), (8193, 3), (49, 1)] {
        let s = setup(size);
        let mem = memory(&[(0, MIB)]);
        let mut reader = CertsReader::new();
        let out = serve(&mut reader, &s.config, &BusyBudget::new(), req(0, 0), &mem);
        assert_eq!(out.kind, OutcomeKind::NeedPages, "size {size}");
        assert_eq!(out.reason, Reason::SizeQuery);
        assert_eq!(
            (out.ret(), out.npages, out.bytes),
            (ret_of(OutcomeKind::NeedPages), pages, size)
        );
        assert!(out.lease.is_none());
        assert!(can_lock_exclusive(&s.path), "no lease on a size answer");
        let small = serve(
            &mut reader,
            &s.config,
            &BusyBudget::new(),
            req(0, pages - 1),
            &mem,
        );
        if pages > 1 {
            assert_eq!(small.reason, Reason::BufferTooSmall);
            assert_eq!(small.npages, pages);
        }
        drop(small);
        let out = serve(
            &mut reader,
            &s.config,
            &BusyBudget::new(),
            req(0, pages),
            &mem,
        );
        assert_eq!(out.kind, OutcomeKind::Delivered, "size {size}");
        assert_eq!(read(&mem, 0, size), s.bytes);
    }
}

#[test]
fn size_query_writes_nothing() {
    let s = setup(3000);
    let mem = memory(&[(0, MIB)]);
    let out = serve(
        &mut CertsReader::new(),
        &s.config,
        &BusyBudget::new(),
        req(0x1000, 0),
        &mem,
    );
    assert_eq!(out.kind, OutcomeKind::NeedPages);
    assert_eq!(read(&mem, 0x1000, 4096), vec![0xee; 4096]);
}

#[test]
fn no_certs_file_gives_an_empty_table() {
    let mem = memory(&[(0, MIB)]);
    let config = CertsConfig::default();
    let out = serve(
        &mut CertsReader::new(),
        &config,
        &BusyBudget::new(),
        req(0x2000, 0),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason, out.ret(), out.bytes),
        (OutcomeKind::Delivered, Reason::NoCertsFile, 0, 0)
    );
    assert_eq!(
        read(&mem, 0x2000, 24),
        vec![0xee; 24],
        "npages 0: nothing written"
    );
    let out = serve(
        &mut CertsReader::new(),
        &config,
        &BusyBudget::new(),
        req(0x2000, 1),
        &mem,
    );
    assert_eq!((out.kind, out.bytes), (OutcomeKind::Delivered, 24));
    assert!(out.lease.is_none());
    assert_eq!(read(&mem, 0x2000, 24), vec![0; 24]);
    assert_eq!(read(&mem, 0x2000 + 24, 8), vec![0xee; 8]);
}

#[test]
fn buffer_at_the_very_end_of_ram_is_served() {
    let s = setup(6000);
    let mem = memory(&[(0, MIB)]);
    let gpa = MIB - 2 * 4096;
    let out = serve(
        &mut CertsReader::new(),
        &s.config,
        &BusyBudget::new(),
        req(gpa, 2),
        &mem,
    );
    assert_eq!(out.kind, OutcomeKind::Delivered);
    assert_eq!(read(&mem, gpa, 6000), s.bytes);
}

#[test]
fn buffer_running_past_the_end_of_ram_fails() {
    let s = setup(6000);
    let mem = memory(&[(0, MIB)]);
    let gpa = MIB - 4096;
    let out = serve(
        &mut CertsReader::new(),
        &s.config,
        &BusyBudget::new(),
        req(gpa, 2),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason, out.ret()),
        (
            OutcomeKind::Failed,
            Reason::OutsideGuestRam,
            ret_of(OutcomeKind::Failed)
        )
    );
    assert!(out.lease.is_none());
    assert!(can_lock_exclusive(&s.path), "no lease on failure");
    assert_eq!(read(&mem, gpa, 4096), vec![0xee; 4096], "nothing written");
}

#[test]
fn buffer_straddling_a_hole_fails_and_adjacent_regions_work() {
    let s = setup(6000);
    let mem = memory(&[
        (0, 64 * 1024),
        (128 * 1024, 64 * 1024),
        (192 * 1024, 64 * 1024),
    ]);
    let mut reader = CertsReader::new();
    let out = serve(
        &mut reader,
        &s.config,
        &BusyBudget::new(),
        req(60 * 1024, 2),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Failed, Reason::OutsideGuestRam)
    );
    assert_eq!(read(&mem, 60 * 1024, 4096), vec![0xee; 4096]);
    drop(out);
    // Two regions that touch are one range for the guest.
    let out = serve(
        &mut reader,
        &s.config,
        &BusyBudget::new(),
        req(188 * 1024, 2),
        &mem,
    );
    assert_eq!(out.kind, OutcomeKind::Delivered);
    assert_eq!(read(&mem, 188 * 1024, 6000), s.bytes);
}

#[test]
fn buffer_beyond_ram_fails() {
    let s = setup(100);
    let mem = memory(&[(0, MIB)]);
    let out = serve(
        &mut CertsReader::new(),
        &s.config,
        &BusyBudget::new(),
        req(1 << 30, 1),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Failed, Reason::OutsideGuestRam)
    );
    let empty = CertsConfig::default();
    let out = serve(
        &mut CertsReader::new(),
        &empty,
        &BusyBudget::new(),
        req(1 << 30, 1),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Failed, Reason::OutsideGuestRam)
    );
}

#[test]
fn overflowing_and_misaligned_requests_fail() {
    let s = setup(100);
    let mem = memory(&[(0, MIB)]);
    let mut reader = CertsReader::new();
    for (gpa, npages) in [
        (!0xfff_u64, 2),
        (0, u64::MAX),
        (0x1000, 1 << 52),
        (!0xfff_u64, u64::MAX),
    ] {
        let out = serve(
            &mut reader,
            &s.config,
            &BusyBudget::new(),
            req(gpa, npages),
            &mem,
        );
        assert_eq!(
            (out.kind, out.reason, out.ret()),
            (
                OutcomeKind::Failed,
                Reason::BufferOverflows,
                ret_of(OutcomeKind::Failed)
            ),
            "{gpa:#x} {npages}"
        );
        assert_eq!(out.npages, npages);
    }
    let out = serve(
        &mut reader,
        &s.config,
        &BusyBudget::new(),
        req(0x1001, 1),
        &mem,
    );
    assert_eq!(
        (out.kind, out.reason),
        (OutcomeKind::Failed, Reason::GpaMisaligned)
    );
}

#[test]
fn a_buffer_not_shared_with_the_host_is_the_guests_fault_before_any_lock() {
    let s = setup(5000);
    let mem = memory(&[(0, MIB)]);
    // Only [0x10000, 0x12000) is shared.
    let shared = |gpa: u64, len: u64| gpa >= 0x10000 && gpa + len <= 0x12000;
    let writer = fs::OpenOptions::new().write(true).open(&s.path).unwrap();
    assert!(lock::try_lock(&writer, LockKind::Exclusive).unwrap());
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    for gpa in [0x8000, 0x11000] {
        let out = serve_shared_only(&mut reader, &s.config, &budget, req(gpa, 2), &mem, &shared);
        assert_eq!(
            (out.kind, out.reason, out.ret(), out.lock_tried),
            (OutcomeKind::Failed, Reason::BufferNotShared, 5, false),
            "{gpa:#x}: refused without waiting for the held lock"
        );
        assert_eq!(
            out.detail(&s.config).unwrap(),
            format!(
                "the buffer of 2 pages at {gpa:#x} is not all memory the guest shared with the host"
            )
        );
    }
    lock::unlock(&writer).unwrap();
    let out = serve_shared_only(
        &mut reader,
        &s.config,
        &budget,
        req(0x10000, 2),
        &mem,
        &shared,
    );
    assert_eq!(out.kind, OutcomeKind::Delivered);
    assert_eq!(read(&mem, 0x10000, s.bytes.len()), s.bytes);
}

#[test]
fn guest_fault_is_the_one_judge_of_eio() {
    let mem = memory(&[(0, 0x4000)]);
    let all = |_: u64, _: u64| true;
    let none = |_: u64, _: u64| false;
    let fault = |gpa, npages, write, shared: IsShared<'_>| {
        guest_fault(req(gpa, npages), write, &mem, shared).map(GuestFault::reason)
    };
    assert_eq!(fault(0x1001, 1, None, &all), Some(Reason::GpaMisaligned));
    assert_eq!(fault(!0xfff, 2, None, &all), Some(Reason::BufferOverflows));
    assert_eq!(fault(0x1000, 1, None, &none), Some(Reason::BufferNotShared));
    assert_eq!(fault(0x1000, 1, None, &all), None);
    // The bytes written must be in RAM; the buffer itself may run past it.
    assert_eq!(fault(0x3000, 4, Some(4096), &all), None);
    assert_eq!(
        fault(0x3000, 4, Some(4097), &all),
        Some(Reason::OutsideGuestRam)
    );
    // Sharing is decided before the write, not again at it.
    assert_eq!(fault(0x3000, 1, Some(24), &none), None);
}

#[test]
fn random_requests_never_write_outside_the_table() {
    let s = setup(5000);
    let mem = memory(&[(0, 64 * 1024), (128 * 1024, 64 * 1024)]);
    let mut reader = CertsReader::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..500 {
        let gpa = match next() % 4 {
            0 => next(),
            1 => next() & !0xfff,
            _ => (next() % (256 * 1024)) & !0xfff,
        };
        let npages = match next() % 3 {
            0 => next(),
            _ => next() % 4,
        };
        let before: Vec<u8> = [(0u64, 64 * 1024usize), (128 * 1024, 64 * 1024)]
            .iter()
            .flat_map(|&(a, l)| read(&mem, a, l))
            .collect();
        let out = serve(
            &mut reader,
            &s.config,
            &BusyBudget::new(),
            req(gpa, npages),
            &mem,
        );
        let after: Vec<u8> = [(0u64, 64 * 1024usize), (128 * 1024, 64 * 1024)]
            .iter()
            .flat_map(|&(a, l)| read(&mem, a, l))
            .collect();
        if out.kind != OutcomeKind::Delivered {
            assert_eq!(before, after, "{gpa:#x} {npages} {:?}", out.reason);
        } else {
            assert_eq!(read(&mem, gpa, 5000), s.bytes);
            mem.write_slice(&vec![0xee; 5000], GuestAddress(gpa))
                .unwrap();
        }
    }
}
