//! The attestation guest's machine code under real KVM, against scripted
//! doorbell answers, compared with the mock guest on the same scripts.
//! Skips (saying so) when `/dev/kvm` cannot be opened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hypervisor::VmExit;
use hypervisor::kvm::KvmHypervisor;
use snp_certs::{CertKind, TableBuilder};
use test_guests::attest::harness::{self, Answer, GuestEvent, Transcript, scripted};
use test_guests::attest::{AttestParams, BUFFER_GPA, RET_UNANSWERED, expected_report_for};
use test_guests::report::{GuestReport, ReportStatus};

const MAX_EXITS: usize = 10_000;

fn kvm() -> Option<KvmHypervisor> {
    match KvmHypervisor::new() {
        Ok(hv) => Some(hv),
        Err(e) => {
            let cause = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            eprintln!("skipped: /dev/kvm not available ({e}{cause})");
            None
        }
    }
}

/// A valid table of the usual certificates, one per size.
fn table(sizes: &[usize]) -> Vec<u8> {
    let kinds = [
        CertKind::Vcek,
        CertKind::Ask,
        CertKind::Ark,
        CertKind::Crl,
        CertKind::Vlek,
    ];
    let mut b = TableBuilder::new();
    for (kind, &size) in kinds.into_iter().zip(sizes) {
        b.add(kind, (0..size).map(|i| (i * 31 + size) as u8).collect())
            .unwrap();
    }
    b.build().unwrap()
}

/// Runs `params` with `prefix` answers then serving `table`, on KVM and on
/// the mock; asserts both did exactly the same and halted. Returns the
/// transcript, or `None` without KVM.
fn both(params: AttestParams, prefix: &[Answer], table: Option<&[u8]>) -> Option<Transcript> {
    let hv = kvm()?;
    let answers = || scripted(prefix.to_vec(), table.map(<[u8]>::to_vec));
    let real = harness::run(&hv, &params, MAX_EXITS, answers()).unwrap();
    let mock = harness::run_mock(&params, MAX_EXITS, answers()).unwrap();
    assert_eq!(real, mock, "KVM and mock guests disagree");
    assert_eq!(real.end, VmExit::Hlt);
    Some(real)
}

fn npages_rung(t: &Transcript) -> Vec<u64> {
    for m in t.rings() {
        assert_eq!((m.gpa, m.ret), (BUFFER_GPA, RET_UNANSWERED));
    }
    t.rings().iter().map(|m| m.npages).collect()
}

fn assert_delivered(report: &GuestReport, table: &[u8]) {
    let want = expected_report_for(table).unwrap();
    assert_eq!(report.status, ReportStatus::Ok as u32, "{report:?}");
    assert_eq!(report.ret, 0);
    assert_eq!((report.entries, report.table_len, report.checksum), want);
}

#[test]
fn guest_asks_for_the_size_then_checks_the_table() {
    let t = table(&[1500, 1600, 1400]);
    let Some(got) = both(AttestParams::default(), &[], Some(&t)) else {
        return;
    };
    assert_eq!(npages_rung(&got), [0, 2]);
    let reports = got.reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].seq, reports[0].npages, reports[0].busy_retries),
        (1, 2, 0)
    );
    assert_delivered(&reports[0], &t);
    assert!(got.delays().is_empty());
}

#[test]
fn guest_receives_large_tables_up_to_its_buffer() {
    // About 16 KiB (4 pages), then exactly the 8-page buffer.
    let t16 = table(&[4000, 4000, 4000, 4000]);
    let header = 6 * 24;
    let t32 = table(&[8000, 8000, 8000, 8000, 32 * 1024 - header - 32000]);
    assert_eq!(t32.len(), 32 * 1024);
    for (t, pages) in [(t16, 4), (t32, 8)] {
        let Some(got) = both(AttestParams::default(), &[], Some(&t)) else {
            return;
        };
        assert_eq!(npages_rung(&got), [0, pages]);
        assert_delivered(&got.reports()[0], &t);
    }
}

#[test]
fn guest_pauses_and_retries_busy_answers() {
    let t = table(&[100, 200, 300]);
    let params = AttestParams {
        retry_ms: 3,
        ..AttestParams::default()
    };
    let prefix = [
        Answer::busy(),
        Answer::need_pages(1),
        Answer::busy(),
        Answer::busy(),
    ];
    let Some(got) = both(params, &prefix, Some(&t)) else {
        return;
    };
    assert_eq!(npages_rung(&got), [0, 0, 1, 1, 1]);
    assert_eq!(got.delays(), [3, 3, 3]);
    let r = got.reports()[0];
    assert_eq!(r.busy_retries, 3);
    assert_delivered(&r, &t);
}

#[test]
fn guest_gives_up_after_its_busy_budget() {
    let params = AttestParams {
        retry_ms: 0,
        max_busy_retries: 4,
        ..AttestParams::default()
    };
    let prefix = vec![Answer::busy(); 5];
    let Some(got) = both(params, &prefix, None) else {
        return;
    };
    assert_eq!(npages_rung(&got), [0; 5]);
    assert!(got.delays().is_empty());
    let r = got.reports()[0];
    assert_eq!(
        (r.status, r.ret, r.busy_retries),
        (ReportStatus::GaveUpBusy as u32, 11, 4)
    );
}

#[test]
fn guest_makes_n_requests_then_halts() {
    let t = table(&[3000, 1000, 500]);
    let params = AttestParams {
        requests: 4,
        interval_ms: 25,
        ..AttestParams::default()
    };
    let Some(got) = both(params, &[], Some(&t)) else {
        return;
    };
    let reports = got.reports();
    assert_eq!(
        reports.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for r in &reports {
        assert_delivered(r, &t);
    }
    assert_eq!(got.delays(), [25, 25, 25]);
    assert!(matches!(got.events.last(), Some(GuestEvent::Report(_))));
}

#[test]
fn guest_reports_the_empty_table_without_a_certs_file() {
    let Some(got) = both(AttestParams::default(), &[], None) else {
        return;
    };
    assert_eq!(npages_rung(&got), [0, 1]);
    let r = got.reports()[0];
    assert_eq!((r.status, r.entries, r.table_len, r.npages), (0, 0, 24, 1));
    assert_delivered(&r, &snp_certs::table::EMPTY_TABLE);
}

#[test]
fn guest_reports_failures() {
    use ReportStatus::{BadTable, Failed, TooBig};
    let ok0 = || Answer::Reply { ret: 0, npages: 0 };
    let cases = [
        (vec![Answer::need_pages(2), Answer::eio()], Failed, 5, 2),
        (vec![Answer::eio()], Failed, 5, 0),
        (vec![Answer::need_pages(9)], TooBig, 28, 9),
        (vec![Answer::need_pages(1 << 33)], TooBig, 28, u32::MAX),
        (
            vec![Answer::need_pages(3), Answer::need_pages(2)],
            Failed,
            28,
            3,
        ),
        (vec![Answer::Ignore], Failed, u32::MAX, 0),
        (vec![Answer::Reply { ret: 22, npages: 0 }], Failed, 22, 0),
        (
            vec![Answer::Reply {
                ret: 1 << 32,
                npages: 0,
            }],
            Failed,
            0,
            0,
        ),
        (vec![ok0(), ok0()], BadTable, 0, 1),
        (
            vec![
                Answer::need_pages(1),
                Answer::Deliver(table(&[3000, 1000, 500])),
            ],
            BadTable,
            0,
            1,
        ),
    ];
    for (prefix, status, ret, npages) in cases {
        let Some(got) = both(AttestParams::default(), &prefix, None) else {
            return;
        };
        let want = GuestReport {
            seq: 1,
            ret,
            npages,
            status: status as u32,
            ..GuestReport::default()
        };
        assert_eq!(got.reports(), [want], "{prefix:?}");
    }
}

#[test]
fn guest_with_no_requests_halts_at_once() {
    let params = AttestParams {
        requests: 0,
        ..AttestParams::default()
    };
    let Some(got) = both(params, &[], None) else {
        return;
    };
    assert!(got.events.is_empty());
}
