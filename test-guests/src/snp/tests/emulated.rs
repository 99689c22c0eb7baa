//! The guest's real machine code, executed in an emulator against the
//! kernel model: it must do what its twin does, and a guest that forgets
//! its message header, registers its GHCB wrongly or misreads RBX after
//! "too small" must not pass.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

use super::super::MockSnpGuest;
use super::super::ghcb::{self, TERM_DONE, register_request};
use super::super::harness::{SnpEvent, SnpTranscript, run_mock};
use super::super::layout::{CODE_GPA, GHCB_GPA, REQUEST_GPA};
use super::super::program;
use super::emulated_guest::EmulatedGuest;
use super::table;
use crate::attest::harness::{Answer, scripted};
use crate::attest::{AttestParams, expected_report_for};
use crate::report::ReportStatus;

fn params() -> AttestParams {
    AttestParams {
        requests: 2,
        interval_ms: 3,
        retry_ms: 5,
        max_busy_retries: 4,
    }
}

fn run_bytes(guest: EmulatedGuest, answers: Vec<Answer>, certs: Option<Vec<u8>>) -> SnpTranscript {
    run_mock(guest, params(), 0, 2000, scripted(answers, certs)).unwrap()
}

const DONE: SnpEvent = SnpEvent::Terminated {
    reason_set: 0,
    reason_code: TERM_DONE,
};

#[test]
fn executes_the_guest_bytes_as_its_twin_behaves() {
    let certs = table([1400, 1700, 1700]);
    let answers = || vec![Answer::busy(), Answer::need_pages(2)];
    let bytes = run_bytes(EmulatedGuest::new(), answers(), Some(certs.clone()));
    let twin = run_mock(
        MockSnpGuest::new(params()),
        params(),
        0,
        2000,
        scripted(answers(), Some(certs.clone())),
    )
    .unwrap();
    assert_eq!(bytes, twin);
    assert_eq!(bytes.events.last(), Some(&DONE));
    let (entries, table_len, checksum) = expected_report_for(&certs).unwrap();
    let reports = bytes.reports();
    assert_eq!(reports.len(), 2);
    for r in reports {
        assert_eq!(r.status, ReportStatus::Ok as u32, "{r:?}");
        assert_eq!(
            (r.entries, r.table_len, r.checksum),
            (entries, table_len, checksum)
        );
    }
    assert_eq!(bytes.delays(), [5, 3]);
}

/// Decodes the program; `which` picks an instruction, `patch` changes its
/// bytes (given the instruction's offset in the code).
fn mutated(
    which: impl Fn(&iced_x86::Instruction) -> bool,
    patch: impl Fn(&mut [u8], usize, &iced_x86::Instruction),
) -> Vec<u8> {
    let mut code = program(&params()).unwrap();
    let found: Vec<iced_x86::Instruction> =
        Decoder::with_ip(64, &code, CODE_GPA, DecoderOptions::NONE)
            .into_iter()
            .filter(|i| which(i))
            .collect();
    assert!(!found.is_empty(), "nothing to mutate");
    for i in found {
        let at = (i.ip() - CODE_GPA) as usize;
        patch(&mut code, at, &i);
    }
    code
}

fn got_certificates(t: &SnpTranscript) -> bool {
    let certs = table([1400, 1700, 1700]);
    let (entries, _, checksum) = expected_report_for(&certs).unwrap();
    !t.reports().is_empty()
        && t.reports().iter().all(|r| {
            r.status == ReportStatus::Ok as u32 && r.entries == entries && r.checksum == checksum
        })
}

#[test]
fn emulated_guest_without_its_header_gets_no_certificates() {
    // `mov dword [request + 0x34], msg_type word`: msg_type 0 instead of 5.
    let code = mutated(
        |i| {
            i.op0_kind() == OpKind::Memory
                && i.memory_displacement64() == REQUEST_GPA + ghcb::msg::MSG_TYPE_OFFSET
        },
        |code, at, i| {
            let imm = at + i.len() - 4;
            code[imm] = 0;
        },
    );
    let certs = table([1400, 1700, 1700]);
    let good = run_bytes(EmulatedGuest::new(), vec![], Some(certs.clone()));
    assert!(got_certificates(&good));
    let bad = run_bytes(EmulatedGuest::with_code(code), vec![], Some(certs));
    assert!(!got_certificates(&bad), "{bad:?}");
    assert!(
        bad.requests().is_empty(),
        "no certificate exit without the header"
    );
}

#[test]
fn emulated_guest_registering_another_ghcb_fails() {
    let wanted = register_request(GHCB_GPA);
    let code = mutated(
        |i| {
            i.mnemonic() == Mnemonic::Mov
                && i.op1_kind() == OpKind::Immediate64
                && i.immediate64() == wanted
        },
        |code, at, i| {
            let imm = at + i.len() - 8;
            code[imm..imm + 8].copy_from_slice(&register_request(GHCB_GPA + 0x1000).to_le_bytes());
        },
    );
    let certs = table([1400, 1700, 1700]);
    let result = run_mock(
        EmulatedGuest::with_code(code),
        params(),
        0,
        2000,
        scripted(vec![], Some(certs)),
    );
    match result {
        Ok(t) => assert!(
            !got_certificates(&t) && t.events.last() != Some(&DONE),
            "{t:?}"
        ),
        Err(e) => assert!(e.to_string().contains("Hypervisor"), "{e}"),
    }
}

#[test]
fn emulated_guest_misreading_rbx_after_enospc_fails() {
    // `mov rax, [ghcb + RBX]` made `mov rax, [ghcb + RAX]`.
    let code = mutated(
        |i| {
            i.op1_kind() == OpKind::Memory
                && i.memory_displacement64() == GHCB_GPA + ghcb::RBX
                && i.mnemonic() == Mnemonic::Mov
        },
        |code, at, i| {
            let disp = at + i.len() - 4;
            code[disp..disp + 4].copy_from_slice(&((GHCB_GPA + ghcb::RAX) as u32).to_le_bytes());
        },
    );
    let certs = table([1400, 1700, 1700]);
    let good = run_bytes(
        EmulatedGuest::new(),
        vec![Answer::need_pages(2)],
        Some(certs.clone()),
    );
    assert!(got_certificates(&good));
    // It asks with the buffer's address as its page count, or faults.
    let bad = run_mock(
        EmulatedGuest::with_code(code),
        params(),
        0,
        2000,
        scripted(vec![Answer::need_pages(2)], Some(certs)),
    );
    assert!(
        bad.as_ref().map_or(true, |t| !got_certificates(t)),
        "{bad:?}"
    );
}
