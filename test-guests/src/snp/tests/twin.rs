//! The mock twin against scripted answers, and the result encodings it
//! shares with the machine code.

use hypervisor::SnpCertsCompletion;

use super::super::MockSnpGuest;
use super::super::ghcb::{
    TERM_DONE, TERM_PSC, decode_ext_result, kvm_exit_info_2, psc_request, register_request,
    register_response, termination_request, valid_bitmap,
};
use super::super::harness::{SnpEvent, SnpTranscript, run_mock, run_mock_with};
use super::super::layout::{BUFFER_GPA, PAGE_SIZE, SHARED_PAGES};
use super::table;
use crate::attest::harness::{Answer, scripted};
use crate::attest::{AttestParams, expected_report_for};
use crate::report::{GuestReport, ReportStatus};
use hypervisor::mock::KernelModelConfig;

const ENOSPC: u64 = libc::ENOSPC as u64;

fn params() -> AttestParams {
    AttestParams {
        requests: 1,
        interval_ms: 0,
        retry_ms: 7,
        max_busy_retries: 5,
    }
}

fn run(guest: MockSnpGuest, prefix: Vec<Answer>, table: Option<Vec<u8>>) -> SnpTranscript {
    run_p(guest, params(), prefix, table)
}

fn run_p(
    guest: MockSnpGuest,
    p: AttestParams,
    prefix: Vec<Answer>,
    table: Option<Vec<u8>>,
) -> SnpTranscript {
    run_mock(guest, p, 0, 1000, scripted(prefix, table)).unwrap()
}

fn ok_report(npages: u32, busy_retries: u32, table: &[u8]) -> GuestReport {
    let (entries, table_len, checksum) = expected_report_for(table).unwrap();
    GuestReport {
        seq: 1,
        ret: 0,
        npages,
        busy_retries,
        entries,
        table_len,
        checksum,
        status: ReportStatus::Ok as u32,
    }
}

const DONE: SnpEvent = SnpEvent::Terminated {
    reason_set: 0,
    reason_code: TERM_DONE,
};

#[test]
fn size_query_then_delivery_reports_the_checksum() {
    let certs = table([1400, 1700, 1700]);
    assert_eq!((certs.len() as u64).div_ceil(PAGE_SIZE), 2);
    let t = run(MockSnpGuest::new(params()), vec![], Some(certs.clone()));
    assert_eq!(t.requests(), [0, 2]);
    assert_eq!(t.reports(), [ok_report(2, 0, &certs)]);
    assert!(t.delays().is_empty());
    assert_eq!(t.events.last(), Some(&DONE));
}

#[test]
fn every_shared_page_is_converted_before_the_first_request() {
    let t = run(
        MockSnpGuest::new(params()),
        vec![],
        Some(table([10, 20, 30])),
    );
    let conversions: Vec<SnpEvent> = SHARED_PAGES
        .iter()
        .map(|&gpa| SnpEvent::Convert {
            gpa,
            npages: 1,
            private: false,
        })
        .collect();
    assert_eq!(t.events[..SHARED_PAGES.len()], conversions[..]);
    assert!(matches!(
        t.events[SHARED_PAGES.len()],
        SnpEvent::Request(r) if r.gpa == BUFFER_GPA && r.npages == 0
    ));
    // No conversion after the first request; the termination ends it.
    let rest = &t.events[SHARED_PAGES.len()..];
    assert!(!rest.iter().any(|e| matches!(e, SnpEvent::Convert { .. })));
    assert_eq!(rest.iter().filter(|e| **e == DONE).count(), 1);
    assert_eq!(t.events.last(), Some(&DONE));
}

#[test]
fn busy_twice_then_delivery() {
    let certs = table([1400, 1700, 1700]);
    let t = run(
        MockSnpGuest::new(params()),
        vec![Answer::busy(), Answer::busy()],
        Some(certs.clone()),
    );
    assert_eq!(t.requests(), [0, 0, 0, 2]);
    assert_eq!(t.delays(), [7, 7]);
    assert_eq!(t.reports(), [ok_report(2, 2, &certs)]);
}

#[test]
fn busy_beyond_the_budget_gives_up() {
    let p = AttestParams {
        max_busy_retries: 2,
        retry_ms: 0,
        ..params()
    };
    let t = run_p(MockSnpGuest::new(p), p, vec![Answer::busy(); 3], None);
    assert_eq!(t.requests(), [0, 0, 0]);
    assert!(t.delays().is_empty(), "retry_ms 0 pauses not at all");
    let report = t.reports()[0];
    assert_eq!(report.status, ReportStatus::GaveUpBusy as u32);
    assert_eq!(report.busy_retries, 2);
}

#[test]
fn eio_is_a_failed_report() {
    let t = run(MockSnpGuest::new(params()), vec![Answer::eio()], None);
    assert_eq!(t.requests(), [0]);
    let report = t.reports()[0];
    assert_eq!(report.status, ReportStatus::Failed as u32);
    assert_eq!(report.ret, libc::EIO as u32);
    assert_eq!(t.events.last(), Some(&DONE));
}

#[test]
fn too_many_pages_is_too_big_and_a_shrinking_count_fails() {
    let t = run(
        MockSnpGuest::new(params()),
        vec![Answer::need_pages(9)],
        None,
    );
    let report = t.reports()[0];
    assert_eq!(
        (report.status, report.npages),
        (ReportStatus::TooBig as u32, 9)
    );
    let t = run(
        MockSnpGuest::new(params()),
        vec![Answer::need_pages(3), Answer::need_pages(3)],
        None,
    );
    assert_eq!(t.requests(), [0, 3]);
    assert_eq!(t.reports()[0].status, ReportStatus::Failed as u32);
}

#[test]
fn no_certs_file_gets_the_empty_table_in_one_page() {
    let t = run(MockSnpGuest::new(params()), vec![], None);
    assert_eq!(t.requests(), [0, 1]);
    let empty = snp_certs::table::EMPTY_TABLE.to_vec();
    assert_eq!(t.reports(), [ok_report(1, 0, &empty)]);
}

#[test]
fn the_firmware_error_is_reported_not_failed() {
    let certs = table([100, 200, 300]);
    let model = KernelModelConfig {
        guest_request_fw_error: 0x27,
        ..Default::default()
    };
    let t = run_mock_with(
        MockSnpGuest::new(params()),
        params(),
        model,
        0,
        1000,
        scripted([], Some(certs.clone())),
    )
    .unwrap();
    let reports: Vec<(GuestReport, u32)> = t
        .events
        .iter()
        .filter_map(|e| match e {
            SnpEvent::Report(r, fw) => Some((*r, *fw)),
            _ => None,
        })
        .collect();
    assert_eq!(reports, [(ok_report(1, 0, &certs), 0x27)]);
}

#[test]
fn several_requests_pause_between_them() {
    let p = AttestParams {
        requests: 3,
        interval_ms: 4,
        ..params()
    };
    let certs = table([10, 20, 30]);
    let t = run_p(MockSnpGuest::new(p), p, vec![], Some(certs));
    let seqs: Vec<u32> = t.reports().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(t.delays(), [4, 4]);
    assert_eq!(t.events.last(), Some(&DONE));
}

#[test]
fn a_refused_conversion_terminates() {
    let t = run_mock(
        MockSnpGuest::new(params()),
        params(),
        libc::EINVAL as u64,
        100,
        scripted([], None),
    )
    .unwrap();
    assert_eq!(
        t.events,
        [
            SnpEvent::Convert {
                gpa: SHARED_PAGES[0],
                npages: 1,
                private: false
            },
            SnpEvent::Terminated {
                reason_set: 0,
                reason_code: TERM_PSC
            }
        ]
    );
}

#[test]
fn kvm_results_decode_to_what_the_vmm_answered() {
    for (completion, ret) in [
        (SnpCertsCompletion::ok(), 0),
        (SnpCertsCompletion::need_pages(2), ENOSPC),
        (SnpCertsCompletion::busy(), libc::EAGAIN as u64),
        (SnpCertsCompletion::guest_fault(), libc::EIO as u64),
    ] {
        let info2 = kvm_exit_info_2(Some(completion), 0x27);
        let decoded = decode_ext_result(info2);
        assert_eq!(decoded.ret, ret, "{completion:?}");
        let fw = if ret == 0 { 0x27 } else { 0 };
        assert_eq!(decoded.fw_error, fw);
    }
    // The values of snp-certs-abi.md section 2.
    assert_eq!(
        kvm_exit_info_2(Some(SnpCertsCompletion::need_pages(1)), 0),
        1 << 32
    );
    assert_eq!(
        kvm_exit_info_2(Some(SnpCertsCompletion::busy()), 0),
        2 << 32
    );
    assert_eq!(
        kvm_exit_info_2(Some(SnpCertsCompletion::guest_fault()), 0),
        0xffff_ffff_0000_0000
    );
    assert_eq!(kvm_exit_info_2(None, 0), 0);
    // An unknown hypervisor error stays "other" even if it looks like EAGAIN.
    let other = decode_ext_result(11 << 32);
    assert_ne!(other.ret, libc::EAGAIN as u64);
    assert_eq!(other.ret as u32, 11);
}

#[test]
fn msr_protocol_values_follow_the_ghcb_layout() {
    assert_eq!(register_request(0x9000), 0x9012);
    assert_eq!(register_response(0x9000), 0x9013);
    assert_eq!(psc_request(0x1_0000), (2 << 52) | (0x10 << 12) | 0x14);
    assert_eq!(termination_request(0, 0x80), 0x80_0100);
    assert_eq!(termination_request(1, 2), 0x2_1100);
    // rax is bit 63, rbx 99, sw_exit_code 114, info 1 and 2 115, 116.
    let (low, high) = valid_bitmap(&[0x1f8, 0x318, 0x390, 0x398, 0x3a0]);
    assert_eq!(low, 1 << 63);
    assert_eq!(high, (1 << 35) | (1 << 50) | (1 << 51) | (1 << 52));
}
