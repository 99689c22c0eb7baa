//! Certificate requests per second through the whole pipeline under real
//! KVM, against the floor of what KVM exits cost on the same machine.
//!
//! Needs a usable `/dev/kvm`, and fails without one: `scripts/bench.sh`
//! leaves it out, saying so in its summary, where `/dev/kvm` is not
//! usable.
//!
//! # Method
//!
//! **End to end**: a VM built by the library exactly as `snp-vmm` builds
//! it (`vmm::vm::Vm::create` with an `vmm_api::VmConfig`: 1
//! vCPU, 1 MiB, doorbell on, certs file `docs/examples/certs.bin` copied
//! under Cargo's target directory, events disabled) runs the built-in
//! attestation guest (`test_guests::attest::program`) with `requests = N`,
//! `interval_ms = 0`. The time from `Vm::boot` to every vCPU having ended
//! (the guest halts after its last report) is divided by N; nothing is
//! subtracted. Each guest request is:
//!
//! 1. ring the doorbell with `npages = 0` (an `OUT` exit; the VMM locks,
//!    reads and validates the file and answers `ENOSPC`, 2 pages),
//! 2. fill its 32 KiB buffer, ring again with 2 pages (an `OUT` exit; the
//!    VMM serves the table into guest memory and keeps the lease), then
//!    the VMM's immediate-exit `KVM_RUN` (`EINTR`) before it drops the
//!    lease,
//! 3. check the table (FNV-1a over 4,772 bytes in 16-bit code) and write
//!    its report (an `OUT` exit; the VMM reads and checks it).
//!
//! Every run's reports are checked: N reports, all `ok`, all matching what
//! the VMM delivered. A second variant runs without a certs file (empty
//! table: no file, no lock, no lease, no immediate exit), to separate the
//! certificate file's share from the exits'.
//!
//! **Floor**, in the same run, through `hypervisor::kvm` directly (no VMM
//! code): a bare guest looping `out dx, eax; in eax, dx` (port 0x5f0), for
//! the cost of one I/O exit round trip (the reference figure on these
//! machines is about 115,000 exits/s, 8.6 µs each), and the same vCPU run
//! with `immediate_exit` set (returns `EINTR` without entering the guest).
//! The floor for one guest request is 3 exits + 1 immediate-exit run.
//!
//! **Same guest, stub host**: the attestation guest run straight on
//! `hypervisor::kvm` by a minimal host that answers from memory (no file,
//! lock, validation, statistics or events) but keeps the immediate-exit
//! run: the floor for *this* guest's requests, guest work included.
//!
//! **The VMM alone**: the very same `Vm` (runner, dispatch, doorbell,
//! certs service, `serve`, lease protocol, report check) on the mock
//! backend, whose vCPU runs the Rust twin of the guest: no KVM, no guest
//! code, so this is the VMM's own cost per request (plus the mock's
//! bookkeeping), 20 times as many requests per run.
//!
//! Runs are interleaved: each round measures the floor, then the
//! end-to-end variants (with the file and the stub host in alternating
//! order), each on a fresh VM.
//!
//! Every figure also goes to `target/bench/results.json` (µs; requests
//! with the stub host as reference and the exit floor as floor).
//!
//! # Knobs
//!
//! * `DOORBELL_E2E_ROUNDS` (default 5): rounds.
//! * `DOORBELL_E2E_REQUESTS` (default 100): guest requests per VM run.
//! * `DOORBELL_E2E_EXITS` (default 40000): exits per floor measurement.
//!
//! Default run: about 22 s after building. Under `cargo test --benches` (no
//! `--bench` argument) it runs as a smoke test with tiny samples.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Figure, Summary, baseline, by_mode, env_usize, f, print_context, print_table, ratio, record,
    summarize,
};
use event_monitor::EventSender;
use hypervisor::kvm::KvmHypervisor;
use hypervisor::{GuestMemoryMmap, Vcpu, Vm as _, VmExit, VmType};
use test_guests::TestGuests;
use test_guests::attest::{self, AttestParams};
use vm_memory::{Bytes, GuestAddress};
use vmm::backend::{Backend, BackendChoice};
use vmm::vm::Vm;
use vmm_api::{
    CpusConfig, MemoryConfig, PayloadConfig, PlatformConfig, SnpConfig, TestGuestConfig, VmConfig,
};

/// The example table, 3 entries, 4,772 bytes.
const TABLE: &[u8] = include_bytes!("../docs/examples/certs.bin");

/// The reference figure for these machines: I/O exits per second.
const REFERENCE_EXITS_PER_S: f64 = 115_000.0;

/// Where the floor guest's code goes.
const FLOOR_ENTRY: u64 = 0x1000;

/// The floor guest, 16-bit real mode at `FLOOR_ENTRY`.
const FLOOR_CODE: [u8; 9] = [
    0xba, 0xf0, 0x05, // mov dx, 0x5f0
    0x66, 0xef, //       loop: out dx, eax
    0x66, 0xed, //       in eax, dx
    0xeb, 0xfa, //       jmp loop (rel8 -6: from 0x1009 back to 0x1003)
];

/// A 64 KiB VM running the floor guest on one vCPU.
fn floor_vm(kvm: &KvmHypervisor) -> (hypervisor::kvm::KvmVm, hypervisor::kvm::KvmVcpu) {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    memory
        .write_slice(&FLOOR_CODE, GuestAddress(FLOOR_ENTRY))
        .unwrap();
    let vm = kvm.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::new(memory)).unwrap();
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.setup_real_mode(FLOOR_ENTRY).unwrap();
    (vm, vcpu)
}

/// Runs the floor guest for `exits` I/O exits; ns per exit.
fn io_exit_floor(kvm: &KvmHypervisor, exits: usize) -> f64 {
    let (_vm, mut vcpu) = floor_vm(kvm);
    let step = |vcpu: &mut hypervisor::kvm::KvmVcpu| match vcpu.run().unwrap() {
        VmExit::IoOut { .. } => {}
        VmExit::IoIn { size, .. } => vcpu.complete_io_in(&[0u8; 4][..usize::from(size)]).unwrap(),
        other => panic!("floor guest: unexpected exit {other:?}"),
    };
    for _ in 0..1000 {
        step(&mut vcpu);
    }
    let start = Instant::now();
    for _ in 0..exits {
        step(&mut vcpu);
    }
    start.elapsed().as_nanos() as f64 / exits.max(1) as f64
}

/// `runs` `KVM_RUN`s with `immediate_exit` set; ns per run.
fn immediate_exit_floor(kvm: &KvmHypervisor, runs: usize) -> f64 {
    let (_vm, mut vcpu) = floor_vm(kvm);
    // Enter the guest once so the vCPU is past its first-run setup.
    assert!(matches!(vcpu.run().unwrap(), VmExit::IoOut { .. }));
    vcpu.set_immediate_exit(true);
    for _ in 0..100 {
        assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    }
    let start = Instant::now();
    for _ in 0..runs {
        assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    }
    start.elapsed().as_nanos() as f64 / runs.max(1) as f64
}

/// A guest spinning `dec ecx; jnz` `LOOP_ITERS` times between `OUT`s.
const LOOP_ITERS: u32 = 10_000;
const LOOP_CODE: [u8; 17] = [
    0x66, 0xb9, 0x10, 0x27, 0x00, 0x00, // top: mov ecx, 10000
    0x66, 0x49, //                         l: dec ecx
    0x75, 0xfc, //                         jnz l (rel8 -4: from 0x100a to 0x1006)
    0xba, 0xf0, 0x05, //                   mov dx, 0x5f0
    0x66, 0xef, //                         out dx, eax
    0xeb, 0xef, //                         jmp top (rel8 -17: from 0x1011 to 0x1000)
];

/// ns per iteration of a two-instruction 16-bit guest loop: how fast this
/// host executes the guest's own code (natively: well under 1 ns).
fn guest_loop_floor(kvm: &KvmHypervisor, outs: usize, exit_ns: f64) -> f64 {
    assert_eq!(u32::from_le_bytes([0x10, 0x27, 0, 0]), LOOP_ITERS);
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    memory
        .write_slice(&LOOP_CODE, GuestAddress(FLOOR_ENTRY))
        .unwrap();
    let vm = kvm.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::new(memory)).unwrap();
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.setup_real_mode(FLOOR_ENTRY).unwrap();
    assert!(matches!(vcpu.run().unwrap(), VmExit::IoOut { .. }));
    let start = Instant::now();
    for _ in 0..outs {
        assert!(matches!(vcpu.run().unwrap(), VmExit::IoOut { .. }));
    }
    let per_out = start.elapsed().as_nanos() as f64 / outs.max(1) as f64;
    (per_out - exit_ns).max(0.0) / f64::from(LOOP_ITERS)
}

/// The same attestation guest with a minimal host written straight on
/// `hypervisor::kvm`: a size query gets `ENOSPC` with the table's pages,
/// a ring with enough pages gets the table (already in memory) copied in
/// and `ret` 0, followed by the immediate-exit run; reports are read and
/// checked. No file, lock, validation, statistics or events: the floor
/// for *this guest's* requests. Returns seconds from the first run to
/// the halt.
fn stub_host(kvm: &KvmHypervisor, requests: u32) -> f64 {
    use test_guests::report::{REPORT_PORT, ReportStatus, read_report};
    use vmm::doorbell::{DOORBELL_PORT, Mailbox};
    let params = AttestParams {
        requests,
        interval_ms: 0,
        ..AttestParams::default()
    };
    let code = attest::program(&params).unwrap();
    let memory =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    memory
        .write_slice(&code, GuestAddress(attest::CODE_GPA))
        .unwrap();
    let vm = kvm.create_kvm_vm(VmType::Default).unwrap();
    vm.map_memory(Arc::clone(&memory)).unwrap();
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.setup_real_mode(attest::CODE_GPA).unwrap();
    let pages = (TABLE.len() as u64).div_ceil(4096);
    let mut reports = 0u32;
    let start = Instant::now();
    loop {
        match vcpu.run().unwrap() {
            VmExit::IoOut { port, data } if port == DOORBELL_PORT => {
                let at = u64::from(u32::from_le_bytes(data[..4].try_into().unwrap()));
                let mailbox = Mailbox::read(&*memory, at).unwrap();
                if mailbox.npages < pages {
                    Mailbox::write_answer(&*memory, at, libc::ENOSPC as u64, pages).unwrap();
                } else {
                    memory
                        .write_slice(TABLE, GuestAddress(mailbox.gpa))
                        .unwrap();
                    Mailbox::write_answer(&*memory, at, 0, mailbox.npages).unwrap();
                    vcpu.set_immediate_exit(true);
                    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
                    vcpu.set_immediate_exit(false);
                }
            }
            VmExit::IoOut { port, data } if port == REPORT_PORT => {
                let at = u64::from(u32::from_le_bytes(data[..4].try_into().unwrap()));
                let report = read_report(&*memory, at).unwrap();
                assert_eq!(report.status, ReportStatus::Ok as u32, "{report:?}");
                reports += 1;
            }
            VmExit::Hlt => break,
            other => panic!("attest guest on the stub host: unexpected exit {other:?}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(reports, requests);
    elapsed
}

/// One end-to-end run: the attestation guest making `requests` requests;
/// returns the seconds from boot to the guest's halt.
fn end_to_end(backend: &Backend, certs_file: Option<&Path>, requests: u32) -> f64 {
    let config = VmConfig {
        cpus: CpusConfig::with_boot(1),
        memory: MemoryConfig { size: 1 << 20 },
        platform: PlatformConfig::default(),
        snp: SnpConfig {
            certs_file: certs_file.map(Path::to_path_buf),
            certs_timeout: 100,
            doorbell: true,
            ..SnpConfig::default()
        },
        payload: Some(PayloadConfig::test_guest(TestGuestConfig::Attest {
            requests,
            interval_ms: 0,
            retry_ms: 10,
            max_busy_retries: 100,
        })),
        ..VmConfig::default()
    };
    let guests = TestGuests::new(false);
    let mut vm = Vm::create(
        backend,
        config,
        EventSender::disabled(),
        &guests,
        std::sync::Arc::default(),
    )
    .unwrap_or_else(|e| panic!("cannot create the VM: {e:#?}"));
    let start = Instant::now();
    vm.boot().unwrap();
    let ended = vm.wait_for_end(Duration::from_secs(300));
    let elapsed = start.elapsed().as_secs_f64();
    vm.shutdown();
    assert!(ended, "the guest did not halt within 300 s");
    // The totals count every report; the log keeps only the most recent
    // (test_guests::report_check::RECORDS_KEPT), fewer than the mock
    // variant's requests.
    let log = guests.last_log().expect("the attestation guest's log");
    let totals = log.totals();
    assert_eq!(totals.reports, requests as usize, "reports missing");
    let bad = log
        .records()
        .into_iter()
        .find(|r| r.status != "ok" || !r.matches);
    assert_eq!(
        totals.matched, totals.reports,
        "reports not ok or not matching what was delivered; one of the last: {bad:?}"
    );
    elapsed
}

fn main() {
    let rounds = env_usize("DOORBELL_E2E_ROUNDS", by_mode(5, 1)).max(1);
    let requests =
        u32::try_from(env_usize("DOORBELL_E2E_REQUESTS", by_mode(100, 2)).max(1)).unwrap();
    let exits = env_usize("DOORBELL_E2E_EXITS", by_mode(40_000, 100)).max(1);
    let started = Instant::now();
    print_context("doorbell_e2e");

    // Where /dev/kvm is not usable, scripts/bench.sh leaves this bench
    // out and says so; run anyway, it fails: a broken KVM backend never
    // passes for a missing device.
    let backend = match Backend::open(BackendChoice::Kvm) {
        Ok((backend, _)) => backend,
        Err(e) => panic!(
            "doorbell_e2e needs a usable /dev/kvm (scripts/bench.sh skips it where there is none): {}",
            vmm_api::error_chain(&e)
        ),
    };
    let Backend::Kvm(kvm) = &backend else {
        panic!("doorbell_e2e: BackendChoice::Kvm opened another backend");
    };
    let program = attest::program(&AttestParams {
        requests,
        interval_ms: 0,
        ..AttestParams::default()
    })
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("doorbell-e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, TABLE).unwrap();
    println!(
        "guest: built-in attest program ({} bytes), {requests} requests per run, interval 0; certs file {} ({} bytes)",
        program.len(),
        path.display(),
        TABLE.len()
    );

    let mut exit_ns = Vec::new();
    let mut ie_ns = Vec::new();
    let mut loop_ns = Vec::new();
    let mut with_file = Vec::new();
    let mut stub = Vec::new();
    let mut no_file = Vec::new();
    let mut mock = Vec::new();
    let mock_requests = requests.saturating_mul(20);
    let (mock_backend, _) = Backend::open(BackendChoice::Mock).unwrap();
    // Warm-up: one short run of each kind, untimed.
    end_to_end(&backend, Some(&path), 5);
    end_to_end(&backend, None, 5);
    stub_host(kvm, 5);
    let per_request = |seconds: f64| seconds * 1e9 / f64::from(requests);
    for round in 0..rounds {
        let e = io_exit_floor(kvm, exits);
        exit_ns.push(e);
        ie_ns.push(immediate_exit_floor(kvm, exits / 4));
        loop_ns.push(guest_loop_floor(kvm, 20, e));
        // Alternate which of the two comparable runs goes first.
        if round % 2 == 0 {
            with_file.push(per_request(end_to_end(&backend, Some(&path), requests)));
            stub.push(per_request(stub_host(kvm, requests)));
        } else {
            stub.push(per_request(stub_host(kvm, requests)));
            with_file.push(per_request(end_to_end(&backend, Some(&path), requests)));
        }
        no_file.push(per_request(end_to_end(&backend, None, requests)));
        mock.push(
            end_to_end(&mock_backend, Some(&path), mock_requests) * 1e9 / f64::from(mock_requests),
        );
    }

    let exit = summarize(&exit_ns);
    let ie = summarize(&ie_ns);
    let guest_loop = summarize(&loop_ns);
    let e2e = summarize(&with_file);
    let stubbed = summarize(&stub);
    let empty = summarize(&no_file);
    let on_mock = summarize(&mock);
    let floor_request = 3.0 * exit.median + ie.median;
    // results.json: µs per request / operation, over rounds.
    let to_us = |t: &Summary| -> Summary {
        Summary {
            n: t.n,
            min: t.min / 1e3,
            median: t.median / 1e3,
            p90: t.p90 / 1e3,
            p99: t.p99 / 1e3,
            max: t.max / 1e3,
            mean: t.mean / 1e3,
        }
    };
    let params = serde_json::json!({"rounds": rounds, "requests": requests, "exits": exits});
    let floor_base = baseline(
        "floor per guest request (3 exits + 1 EINTR run)",
        floor_request / 1e3,
    );
    let stub_base = baseline("same guest, stub host", stubbed.median / 1e3);
    for (figure, t, per_request) in [
        ("I/O exit round trip", &exit, false),
        ("KVM_RUN with immediate_exit", &ie, false),
        ("16-bit guest loop iteration", &guest_loop, false),
        ("e2e, certs file", &e2e, true),
        ("same guest, stub host", &stubbed, true),
        ("e2e, no certs file", &empty, true),
        ("VMM alone, mock backend", &on_mock, true),
    ] {
        let mut fig = Figure::new("doorbell_e2e", figure, params.clone(), "us", to_us(t));
        if per_request {
            fig = fig.reference(stub_base.clone()).floor(floor_base.clone());
        }
        record(fig);
    }

    println!();
    println!(
        "## Floor: hypervisor::kvm directly ({rounds} rounds; {exits} exits, {} immediate-exit runs each)",
        exits / 4
    );
    let per_s = |ns: f64| f(1e9 / ns, 0);
    // A row: name, median / best / worst in µs, and the median as a rate.
    let timing_row = |name: &str, t: &Summary, digits: usize| -> Vec<String> {
        vec![
            name.into(),
            f(t.median / 1e3, digits),
            f(t.min / 1e3, digits),
            f(t.max / 1e3, digits),
            per_s(t.median),
        ]
    };
    print_table(
        &[
            "operation",
            "µs (median)",
            "µs (best)",
            "µs (worst)",
            "per second (median)",
        ],
        &[
            timing_row("I/O exit round trip (OUT/IN loop)", &exit, 2),
            timing_row("KVM_RUN with immediate_exit (EINTR)", &ie, 2),
            timing_row("16-bit guest loop iteration (dec ecx; jnz)", &guest_loop, 3),
            vec![
                "floor per guest request (3 exits + 1 EINTR run)".into(),
                f(floor_request / 1e3, 2),
                "".into(),
                "".into(),
                per_s(floor_request),
            ],
        ],
    );
    println!(
        "(reference for these machines: {} I/O exits/s; measured here: {} = {} of it)",
        f(REFERENCE_EXITS_PER_S, 0),
        per_s(exit.median),
        ratio(1e9 / exit.median / REFERENCE_EXITS_PER_S)
    );

    println!();
    println!(
        "## End to end: attest guest through the whole VMM ({rounds} runs x {requests} requests)"
    );
    print_table(
        &[
            "variant",
            "µs/request (median)",
            "best run",
            "worst run",
            "requests/s (median)",
        ],
        &[
            timing_row("certs file (4,772 bytes, 3 entries)", &e2e, 1),
            timing_row("same guest, stub host (canned answers)", &stubbed, 1),
            timing_row("no certs file (empty table, no lease)", &empty, 1),
        ],
    );
    println!();
    println!(
        "## The VMM alone: same VM, certs file and pipeline on the mock backend ({rounds} runs x {mock_requests} requests)"
    );
    print_table(
        &[
            "variant",
            "µs/request (median)",
            "best run",
            "worst run",
            "requests/s (median)",
        ],
        &[timing_row("mock vCPU, guest modelled in Rust", &on_mock, 1)],
    );

    println!();
    println!("## Ratios (medians)");
    print_table(
        &["ratio", "value"],
        &[
            vec![
                "e2e / same guest on the stub host".into(),
                ratio(e2e.median / stubbed.median),
            ],
            vec![
                "e2e / exit floor (3 exits + 1 EINTR run)".into(),
                ratio(e2e.median / floor_request),
            ],
            vec![
                "VMM alone (mock) / e2e".into(),
                format!("{:.2}%", 100.0 * on_mock.median / e2e.median),
            ],
            vec![
                "VMM alone (mock) / exit floor".into(),
                ratio(on_mock.median / floor_request),
            ],
            vec![
                "e2e with certs file / without".into(),
                ratio(e2e.median / empty.median),
            ],
        ],
    );
    println!(
        "e2e minus stub host: {} µs per request (medians; within the run-to-run noise of {} µs)",
        f((e2e.median - stubbed.median) / 1e3, 1),
        f((e2e.max - e2e.min) / 1e3, 0)
    );
    println!(
        "guest's own work beyond the exits: {} µs per request (stub host minus exit floor)",
        f((stubbed.median - floor_request) / 1e3, 1)
    );
    println!();
    println!(
        "doorbell_e2e: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
