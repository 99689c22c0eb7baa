//! Serving a request allocates nothing once a vCPU's reader is warm: not
//! when it delivers, not when it answers a size query, not when a writer
//! holds the lock, not when the file turned invalid. Counted by
//! `test_support::alloc_count`, the allocations of the thread that asks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::time::Duration;

use snp_certs::lock::{self, LockKind};
use snp_certs::{
    BusyBudget, CertKind, CertsConfig, CertsReader, CertsRequest, OutcomeKind, Reason,
    TableBuilder, serve,
};
use test_support::alloc_count::{CountingAllocator, allocations};
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn a_warm_reader_serves_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let mut builder = TableBuilder::new();
    let mut vcek = vec![0x5a; 1400];
    vcek[0] = 0x30;
    builder.add(CertKind::Vcek, vcek).unwrap();
    let table = builder.build().unwrap();
    fs::write(&path, &table).unwrap();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let config = CertsConfig::with_file(&path);
    let budget = BusyBudget::new();
    let mut reader = CertsReader::new();
    let deliver = CertsRequest {
        gpa: 0x8000,
        npages: 1,
    };
    let size_query = CertsRequest {
        gpa: 0x8000,
        npages: 0,
    };
    // Warm up: the first request opens the file and sizes the buffer.
    let first = serve(&mut reader, &config, &budget, deliver, &memory);
    assert_eq!(first.kind, OutcomeKind::Delivered);
    drop(first);

    let mut kinds = Vec::with_capacity(256);
    let n = allocations(|| {
        for _ in 0..100 {
            let outcome = serve(&mut reader, &config, &budget, deliver, &memory);
            kinds.push(outcome.kind);
            drop(outcome);
            let outcome = serve(&mut reader, &config, &budget, size_query, &memory);
            kinds.push(outcome.kind);
        }
        kinds.truncate(0);
    });
    assert_eq!(n, 0, "delivering and answering size queries allocated");

    // A writer holds the lock: busy (a single try), without allocating.
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let busy = CertsConfig {
        certs_timeout: 0,
        ..config.clone()
    };
    let mut reason = None;
    let n = allocations(|| {
        for _ in 0..10 {
            let outcome = serve(&mut reader, &busy, &budget, deliver, &memory);
            reason = Some(outcome.reason);
        }
    });
    assert_eq!(reason, Some(Reason::LockTimeout));
    assert_eq!(n, 0, "a busy answer allocated");
    lock::unlock(&writer).unwrap();

    // The file turned invalid (rewritten in place): the fallback, and the
    // reason is data, not a formatted message.
    fs::write(&path, [1u8; 100]).unwrap();
    let mut answer = None;
    let n = allocations(|| {
        for _ in 0..10 {
            let outcome = serve(&mut reader, &config, &budget, deliver, &memory);
            answer = Some((outcome.kind, outcome.reason, outcome.fallback));
        }
    });
    assert_eq!(
        answer,
        Some((OutcomeKind::Delivered, Reason::FileInvalid, true))
    );
    assert_eq!(n, 0, "the fallback allocated");
}
