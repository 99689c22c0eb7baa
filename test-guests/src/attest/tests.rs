use hypervisor::VmExit;
use snp_certs::{CertKind, TableBuilder};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::harness::{Answer, GuestEvent, Transcript, run_mock, scripted};
use super::*;
use crate::report::{GuestReport, ReportStatus, fnv1a32};
use vmm::doorbell::Mailbox;

const ENOSPC: u32 = libc::ENOSPC as u32;
const EAGAIN: u32 = libc::EAGAIN as u32;
const EIO: u32 = libc::EIO as u32;

/// A valid table with the three usual certificates, `sizes` bytes each.
fn table(sizes: [usize; 3]) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, size) in [CertKind::Vcek, CertKind::Ask, CertKind::Ark]
        .into_iter()
        .zip(sizes)
    {
        b.add(kind, (0..size).map(|i| (i * 7 + size) as u8).collect())
            .unwrap();
    }
    b.build().unwrap()
}

fn mock(params: AttestParams, answers: impl FnMut(&Mailbox) -> Answer) -> Transcript {
    let t = run_mock(&params, 10_000, answers).unwrap();
    assert_eq!(t.end, VmExit::Hlt, "{t:?}");
    t
}

fn ring(npages: u64) -> GuestEvent {
    GuestEvent::Ring(Mailbox {
        gpa: BUFFER_GPA,
        npages,
        ret: RET_UNANSWERED,
    })
}

fn report(seq: u32, ret: u32, npages: u32, status: ReportStatus) -> GuestReport {
    GuestReport {
        seq,
        ret,
        npages,
        status: status as u32,
        ..GuestReport::default()
    }
}

fn ok_report(seq: u32, npages: u32, table: &[u8]) -> GuestReport {
    let (entries, table_len, checksum) = expected_report_for(table).unwrap();
    GuestReport {
        entries,
        table_len,
        checksum,
        ..report(seq, 0, npages, ReportStatus::Ok)
    }
}

#[test]
fn program_assembles_for_various_params() {
    let all = [
        AttestParams::default(),
        AttestParams {
            requests: 0,
            ..AttestParams::default()
        },
        AttestParams {
            requests: u32::MAX,
            interval_ms: u32::MAX,
            retry_ms: u32::MAX,
            max_busy_retries: u32::MAX,
        },
        AttestParams {
            requests: 5,
            interval_ms: 0,
            retry_ms: 0,
            max_busy_retries: 0,
        },
    ];
    let mut sizes = Vec::new();
    for params in all {
        let code = program(&params).unwrap();
        assert!(
            !code.is_empty() && code.len() <= CODE_MAX_SIZE,
            "{params:?}"
        );
        // cli; cld first.
        assert_eq!(&code[..2], &[0xfa, 0xfc]);
        sizes.push(code.len());
    }
    // Zero pauses are left out of the code.
    assert!(sizes[3] < sizes[0] && sizes[0] < sizes[2], "{sizes:?}");
}

#[test]
fn expected_report_for_empty_and_three_entry_tables() {
    let empty = snp_certs::table::EMPTY_TABLE;
    let want = (0, 24, fnv1a32(&empty));
    assert_eq!(expected_report_for(&empty).unwrap(), want);

    let t = table([1500, 1600, 1400]);
    assert_eq!(t.len(), 4 * 24 + 4500);
    let e = expected_report_for(&t).unwrap();
    assert_eq!(e, (3, t.len() as u32, fnv1a32(&t)));
    // Trailing bytes beyond the last certificate are not counted.
    let mut padded = t.clone();
    padded.extend_from_slice(&[0xaa; 100]);
    assert_eq!(expected_report_for(&padded).unwrap(), e);

    assert!(matches!(
        expected_report_for(&t[..30]),
        Err(GuestError::Table(_))
    ));
}

#[test]
fn check_table_agrees_with_the_parser_and_bounds_everything() {
    let t = table([100, 200, 300]);
    let mut buffer = vec![BUFFER_FILL; 4096];
    buffer[..t.len()].copy_from_slice(&t);
    assert_eq!(check_table(&buffer), Some(expected_report_for(&t).unwrap()));
    // The whole table must lie in the buffer offered.
    assert_eq!(check_table(&buffer[..t.len() - 1]), None);
    assert!(check_table(&buffer[..t.len()]).is_some());
    // No terminator inside the buffer.
    assert_eq!(check_table(&[BUFFER_FILL; 4096]), None);
    assert_eq!(check_table(&[0; 23]), None);
    // offset + length overflowing 32 bits is beyond any buffer.
    let mut wrap = buffer.clone();
    wrap[16..24].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0]);
    assert_eq!(check_table(&wrap), None);
    // Entries ending inside the header: table_len is the header.
    let mut short = vec![0u8; 48];
    short[0] = 1;
    short[20] = 8;
    assert_eq!(
        check_table(&short).map(|(entries, len, _)| (entries, len)),
        Some((1, 48))
    );
}

#[test]
fn mock_asks_for_the_size_then_receives_the_table() {
    let t = table([1500, 1600, 1400]);
    let answers = scripted([Answer::need_pages(2), Answer::Deliver(t.clone())], None);
    let got = mock(AttestParams::default(), answers);
    assert_eq!(
        got.events,
        [ring(0), ring(2), GuestEvent::Report(ok_report(1, 2, &t))]
    );
}

#[test]
fn mock_retries_busy_answers_after_a_pause() {
    let t = table([10, 20, 30]);
    let answers = scripted(
        [Answer::busy(), Answer::need_pages(1), Answer::busy()],
        Some(t.clone()),
    );
    let got = mock(AttestParams::default(), answers);
    let mut want = ok_report(1, 1, &t);
    want.busy_retries = 2;
    assert_eq!(
        got.events,
        [
            ring(0),
            GuestEvent::Delay(10),
            ring(0),
            ring(1),
            GuestEvent::Delay(10),
            ring(1),
            GuestEvent::Report(want),
        ]
    );
}

#[test]
fn mock_gives_up_when_busy_too_long() {
    let params = AttestParams {
        max_busy_retries: 3,
        retry_ms: 0,
        ..AttestParams::default()
    };
    let got = mock(params, |_: &Mailbox| Answer::busy());
    assert_eq!(got.rings().len(), 4);
    assert!(got.delays().is_empty(), "retry_ms 0 pauses not at all");
    let mut want = report(1, EAGAIN, 0, ReportStatus::GaveUpBusy);
    want.busy_retries = 3;
    assert_eq!(got.reports(), [want]);
}

#[test]
fn mock_reports_failures() {
    let p = AttestParams::default();
    let cases = [
        (vec![Answer::eio()], report(1, EIO, 0, ReportStatus::Failed)),
        (
            vec![Answer::need_pages(2), Answer::eio()],
            report(1, EIO, 2, ReportStatus::Failed),
        ),
        (
            vec![Answer::need_pages(9)],
            report(1, ENOSPC, 9, ReportStatus::TooBig),
        ),
        (
            vec![Answer::need_pages(1 << 40)],
            report(1, ENOSPC, u32::MAX, ReportStatus::TooBig),
        ),
        // ENOSPC must ask for more than was offered.
        (
            vec![Answer::need_pages(2), Answer::need_pages(2)],
            report(1, ENOSPC, 2, ReportStatus::Failed),
        ),
        (
            vec![Answer::Ignore],
            report(1, u32::MAX, 0, ReportStatus::Failed),
        ),
        (
            vec![Answer::Reply {
                ret: 1 << 32,
                npages: 0,
            }],
            report(1, 0, 0, ReportStatus::Failed),
        ),
        // "0" without a table: the guest's fill has no terminator.
        (
            vec![Answer::need_pages(1), Answer::Reply { ret: 0, npages: 0 }],
            report(1, 0, 1, ReportStatus::BadTable),
        ),
        (
            vec![
                Answer::need_pages(1),
                Answer::Deliver(table([2000, 2000, 100])),
            ],
            report(1, 0, 1, ReportStatus::BadTable),
        ),
    ];
    for (answers, want) in cases {
        let got = mock(p, scripted(answers.clone(), None));
        assert_eq!(got.reports(), [want], "{answers:?}");
    }
}

#[test]
fn mock_receives_the_empty_table_without_a_certs_file() {
    let got = mock(AttestParams::default(), scripted([], None));
    let want = ok_report(1, 1, &snp_certs::table::EMPTY_TABLE);
    assert_eq!((want.entries, want.table_len), (0, 24));
    assert_eq!(got.events, [ring(0), ring(1), GuestEvent::Report(want)]);
}

#[test]
fn mock_makes_n_requests_with_pauses_between() {
    let t = table([5000, 5000, 5000]);
    let params = AttestParams {
        requests: 3,
        interval_ms: 7,
        ..AttestParams::default()
    };
    let got = mock(params, scripted([], Some(t.clone())));
    let reports: Vec<_> = (1..=3).map(|seq| ok_report(seq, 4, &t)).collect();
    assert_eq!(got.reports(), reports);
    assert_eq!(got.delays(), [7, 7]);
    assert!(matches!(got.events.last(), Some(GuestEvent::Report(_))));

    let none = mock(
        AttestParams {
            requests: 0,
            ..AttestParams::default()
        },
        scripted([], None),
    );
    assert!(none.events.is_empty());
}

#[test]
fn mock_guest_without_its_memory_faults() {
    use hypervisor::mock::MockGuest;
    let mut guest = MockAttestGuest::new(AttestParams::default());
    let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let exit = guest.next_exit(&Default::default(), &small);
    assert!(
        matches!(&exit, VmExit::Other(m) if m.contains("mailbox")),
        "{exit:?}"
    );
    assert_eq!(guest.next_exit(&Default::default(), &small), VmExit::Hlt);
}
