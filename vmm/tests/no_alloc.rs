//! A VM's certificate service answers and reports a request without
//! allocating, once warm, when no event monitor is attached: the answer
//! (`CertsService::serve`, the lease window) and what follows the release
//! (`CertsService::report`: atomic counters, no log line, no event built),
//! also while a fault goes on between its log lines.
//! Counted by `test_support::alloc_count`, the allocations of the thread
//! that asks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use event_monitor::EventSender;
use snp_certs::serve::CertsRequest;
use snp_certs::{ActiveCerts, CertKind, CertsConfig, CertsReader, OutcomeKind, TableBuilder};
use test_support::alloc_count::{CountingAllocator, allocations};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::certs_service::{CertsService, RequestSource};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A certificate service without an event monitor, serving a valid
/// one-entry table written to `dir`, and the table's path.
fn service_without_monitor(dir: &std::path::Path) -> (std::path::PathBuf, CertsService) {
    let path = dir.join("certs.bin");
    let mut vcek = vec![0x5a; 1400];
    vcek[0] = 0x30;
    let mut builder = TableBuilder::new();
    builder.add(CertKind::Vcek, vcek).unwrap();
    std::fs::write(&path, builder.build().unwrap()).unwrap();
    let active =
        ActiveCerts::validate(CertsConfig::with_file(&path), std::time::Duration::ZERO).unwrap();
    (path, CertsService::new(active, EventSender::disabled()))
}

#[test]
fn serving_and_reporting_a_request_allocates_nothing_without_a_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, service) = service_without_monitor(dir.path());
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut reader = CertsReader::for_vcpu(Arc::new(AtomicBool::new(false)));
    let request = CertsRequest {
        gpa: 0x8000,
        npages: 1,
    };
    let all_shared = |_: u64, _: u64| true;
    let one = |reader: &mut CertsReader| {
        let mut served = service.serve(RequestSource::Kvm, reader, request, &memory, &all_shared);
        let kind = served.outcome.kind;
        let held = served.outcome.lease.take().map(|lease| lease.release());
        service.report(0, &served, held);
        kind
    };
    // Warm up: the first request opens the file and validates it.
    assert_eq!(one(&mut reader), OutcomeKind::Delivered);

    let mut delivered = 0;
    let n = allocations(|| {
        for _ in 0..200 {
            if one(&mut reader) == OutcomeKind::Delivered {
                delivered += 1;
            }
        }
    });
    assert_eq!(delivered, 200);
    assert_eq!(n, 0, "a request allocated");
    assert_eq!(service.stats().requests.delivered, 201);
}

#[test]
fn a_fault_that_goes_on_is_reported_without_allocating_between_its_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (path, service) = service_without_monitor(dir.path());
    // The file goes away: every answer is the fallback, a fault that is
    // logged when it starts and then at most every 10 s.
    std::fs::remove_file(&path).unwrap();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut reader = CertsReader::for_vcpu(Arc::new(AtomicBool::new(false)));
    let request = CertsRequest {
        gpa: 0x8000,
        npages: 1,
    };
    let all_shared = |_: u64, _: u64| true;
    let one = |reader: &mut CertsReader| {
        let served = service.serve(RequestSource::Kvm, reader, request, &memory, &all_shared);
        service.report(0, &served, None);
        served.outcome.fallback
    };
    // The first fallback starts the fault (and may allocate its line).
    assert!(one(&mut reader));

    let mut fallbacks = 0;
    let n = allocations(|| fallbacks = (0..200).filter(|_| one(&mut reader)).count());
    assert_eq!(fallbacks, 200);
    assert_eq!(n, 0, "a repeated fault allocated");
    assert_eq!(service.stats().fallbacks["file-missing"], 201);
}
