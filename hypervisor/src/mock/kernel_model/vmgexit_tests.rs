//! The model's handling of VMGEXITs, one rule of `sev.c` per case: which
//! GHCB fields count (the valid bitmap), the bad-input answers of
//! `sev_es_validate_vmgexit`, the I/O and termination exits, the MSR
//! protocol (GHCB registration, page-state changes, termination), and the
//! answers the VMM's busy and `EIO` become.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::KernelModelConfig;
use super::tests::{
    Action, BUF, GHCB, REQ, RESP, Seen, ext_request, launched, observe, register, terminate,
};
use super::vmgexit::ghcb;
use crate::mock::GuestStop;
use crate::{SnpCertsCompletion, Vcpu, VmExit};

/// `SW_EXITINFO1` "malformed input" and the `SW_EXITINFO2` reasons.
const MALFORMED: u64 = 2;
const INVALID_USAGE: u64 = 2;
const MISSING_INPUT: u64 = 4;
const INVALID_INPUT: u64 = 5;
const INVALID_EVENT: u64 = 6;

/// A VMGEXIT through the GHCB: exit code, exit information and `regs`
/// written, each marked valid unless its offset is in `unmarked`, and
/// `usage` in `ghcb_usage`.
fn gexit(
    exit_code: u64,
    info: (u64, u64),
    regs: Vec<(u64, u64)>,
    unmarked: Vec<u64>,
    usage: u32,
) -> Action {
    Box::new(move |cpu, mem| {
        let mut fields = vec![
            (ghcb::SW_EXIT_CODE, exit_code),
            (ghcb::SW_EXIT_INFO_1, info.0),
            (ghcb::SW_EXIT_INFO_2, info.1),
        ];
        fields.extend(regs.iter().copied());
        let mut bitmap = [0u64; 2];
        for (offset, value) in fields {
            mem.write_obj(value, GuestAddress(GHCB + offset)).unwrap();
            if !unmarked.contains(&offset) {
                let bit = offset / 8;
                bitmap[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        mem.write_obj(bitmap[0], GuestAddress(GHCB + ghcb::VALID_BITMAP))
            .unwrap();
        mem.write_obj(bitmap[1], GuestAddress(GHCB + ghcb::VALID_BITMAP + 8))
            .unwrap();
        mem.write_obj(usage, GuestAddress(GHCB + ghcb::GHCB_USAGE))
            .unwrap();
        cpu.ghcb_msr = GHCB;
        GuestStop::Vmgexit
    })
}

/// What the guest finds in `SW_EXITINFO1`/`2` after `step`, handled in
/// the kernel without an exit to the VMM.
fn answer_in_kernel(step: Action) -> (u64, u64) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let (_vm, mut vcpu, _mem) = launched(
        KernelModelConfig::default(),
        vec![register(GHCB), step, observe(&seen, terminate())],
    );
    assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
    let (info_1, info_2, _) = seen.lock().unwrap()[0];
    (info_1, info_2)
}

const IOIO: u64 = 0x7b;
const GUEST_REQUEST: u64 = 0x8000_0011;
const EXT_GUEST_REQUEST: u64 = 0x8000_0012;

#[test]
fn kernel_model_bad_input_answers() {
    let out_port = (0x5e8 << 16) | (1 << 6);
    let rax = vec![(ghcb::RAX, 7)];
    let cases: Vec<(&str, Action, u64)> = vec![
        (
            "usage 1",
            gexit(IOIO, (out_port, 0), rax.clone(), vec![], 1),
            INVALID_USAGE,
        ),
        (
            "exit code not marked",
            gexit(
                IOIO,
                (out_port, 0),
                rax.clone(),
                vec![ghcb::SW_EXIT_CODE],
                0,
            ),
            MISSING_INPUT,
        ),
        (
            "exit information 1 not marked",
            gexit(
                IOIO,
                (out_port, 0),
                rax.clone(),
                vec![ghcb::SW_EXIT_INFO_1],
                0,
            ),
            MISSING_INPUT,
        ),
        (
            "exit information 2 not marked",
            gexit(
                IOIO,
                (out_port, 0),
                rax.clone(),
                vec![ghcb::SW_EXIT_INFO_2],
                0,
            ),
            MISSING_INPUT,
        ),
        (
            "a string OUT",
            gexit(IOIO, (out_port | (1 << 2), 0), rax.clone(), vec![], 0),
            MISSING_INPUT,
        ),
        (
            "an OUT without RAX",
            gexit(IOIO, (out_port, 0), rax.clone(), vec![ghcb::RAX], 0),
            MISSING_INPUT,
        ),
        (
            "a request page not page aligned",
            gexit(GUEST_REQUEST, (REQ + 8, RESP), vec![], vec![], 0),
            MISSING_INPUT,
        ),
        (
            "a response page not page aligned",
            gexit(GUEST_REQUEST, (REQ, RESP + 8), vec![], vec![], 0),
            MISSING_INPUT,
        ),
        (
            "one page for request and response",
            gexit(GUEST_REQUEST, (REQ, REQ), vec![], vec![], 0),
            MISSING_INPUT,
        ),
        (
            "an unknown exit",
            gexit(0x1234, (0, 0), vec![], vec![], 0),
            INVALID_EVENT,
        ),
    ];
    for (what, step, reason) in cases {
        assert_eq!(answer_in_kernel(step), (MALFORMED, reason), "{what}");
    }
}

/// An extended guest request for a report, with RAX (the buffer) and RBX
/// (its pages), marked valid unless in `unmarked`.
fn report_request(rax: u64, unmarked: Vec<u64>) -> Action {
    let mut request = gexit(
        EXT_GUEST_REQUEST,
        (REQ, RESP),
        vec![(ghcb::RAX, rax), (ghcb::RBX, 1)],
        unmarked,
        0,
    );
    Box::new(move |cpu, mem| {
        // msg_type of struct snp_guest_msg_hdr: SNP_MSG_REPORT_REQ.
        mem.write_obj(5u8, GuestAddress(REQ + 0x34)).unwrap();
        request(cpu, mem)
    })
}

#[test]
fn kernel_model_a_report_request_needs_its_buffer_in_rax_and_rbx() {
    for (what, step) in [
        ("RAX not marked", report_request(BUF, vec![ghcb::RAX])),
        ("RBX not marked", report_request(BUF, vec![ghcb::RBX])),
        ("RAX not page aligned", report_request(BUF + 8, vec![])),
    ] {
        assert_eq!(answer_in_kernel(step), (MALFORMED, INVALID_INPUT), "{what}");
    }
}

/// Runs `steps` after registering the GHCB; returns the vCPU's exits up
/// to and including the first that is not an I/O exit, answering each
/// `IN` with `0x55` bytes.
fn exits_of(steps: Vec<Action>) -> Vec<VmExit> {
    let mut all = vec![register(GHCB)];
    all.extend(steps);
    let (_vm, mut vcpu, _mem) = launched(KernelModelConfig::default(), all);
    let mut exits = Vec::new();
    loop {
        let exit = vcpu.run().unwrap();
        exits.push(exit.clone());
        match exit {
            VmExit::IoIn { size, .. } => vcpu.complete_io_in(&vec![0x55; size.into()]).unwrap(),
            VmExit::IoOut { .. } => {}
            _ => return exits,
        }
    }
}

#[test]
fn kernel_model_port_io_exits_carry_the_port_the_size_and_the_data() {
    let port = |p: u64| p << 16;
    let rax = || vec![(ghcb::RAX, 0x1122_3344)];
    let exits = exits_of(vec![
        gexit(IOIO, (port(0x1234) | (1 << 6) | 1, 0), vec![], vec![], 0),
        gexit(IOIO, (port(0x60) | (1 << 5) | 1, 0), vec![], vec![], 0),
        gexit(IOIO, (port(0x61) | 1, 0), vec![], vec![], 0),
        gexit(IOIO, (port(0x5e8) | (1 << 6), 0), rax(), vec![], 0),
        gexit(IOIO, (port(0x5e9) | (1 << 5), 0), rax(), vec![], 0),
        gexit(IOIO, (port(0x5ea), 0), rax(), vec![], 0),
        terminate(),
    ]);
    assert_eq!(
        exits,
        [
            VmExit::IoIn {
                port: 0x1234,
                size: 4
            },
            VmExit::IoIn {
                port: 0x60,
                size: 2
            },
            VmExit::IoIn {
                port: 0x61,
                size: 1
            },
            VmExit::IoOut {
                port: 0x5e8,
                data: crate::PioData::from_slice(&[0x44, 0x33, 0x22, 0x11])
            },
            VmExit::IoOut {
                port: 0x5e9,
                data: crate::PioData::from_slice(&[0x44, 0x33])
            },
            VmExit::IoOut {
                port: 0x5ea,
                data: crate::PioData::from_slice(&[0x44])
            },
            VmExit::Terminated {
                reason_set: 0,
                reason_code: 0
            },
        ]
    );
}

#[test]
fn kernel_model_termination_reasons_through_the_ghcb_and_the_msr() {
    // GHCB: SW_EXITINFO1 reason set in bits 3:0, code in bits 15:8.
    let through_ghcb = gexit(0x8000_00fe, (0xff_45f3, 0), vec![], vec![], 0);
    // MSR protocol: set in bits 15:12, code in bits 23:16.
    let through_msr: Action = Box::new(|cpu, _| {
        cpu.ghcb_msr = (0xff << 24) | (0x45 << 16) | (0x3 << 12) | 0x100;
        GuestStop::Vmgexit
    });
    for (what, step) in [("GHCB", through_ghcb), ("MSR", through_msr)] {
        assert_eq!(
            exits_of(vec![step]),
            [VmExit::Terminated {
                reason_set: 3,
                reason_code: 0x45
            }],
            "{what}"
        );
    }
}

/// A step that records the GHCB MSR as the guest finds it, then makes
/// `next`.
fn msr_seen(seen: &Arc<Mutex<Vec<u64>>>, mut next: Action) -> Action {
    let seen = Arc::clone(seen);
    Box::new(move |cpu, mem| {
        seen.lock().unwrap().push(cpu.ghcb_msr);
        next(cpu, mem)
    })
}

/// The MSR protocol's page-state change request for the page at `gfn`.
fn psc(gfn: u64, op: u64) -> Action {
    Box::new(move |cpu, _| {
        cpu.ghcb_msr = (op << 52) | (gfn << 12) | 0x014;
        GuestStop::Vmgexit
    })
}

#[test]
fn kernel_model_msr_protocol_registration_and_page_state_changes() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gfn = (1 << 39) | 0x12345;
    let (_vm, mut vcpu, _mem) = launched(
        KernelModelConfig::default(),
        vec![
            register(GHCB),
            msr_seen(&seen, psc(gfn, 1)),
            msr_seen(&seen, psc(0x20, 2)),
            msr_seen(&seen, psc(0x20, 3)),
            msr_seen(&seen, terminate()),
        ],
    );
    let private = vcpu.run().unwrap();
    assert_eq!(
        private,
        VmExit::MapGpaRange {
            gpa: gfn << 12,
            npages: 1,
            private: true
        }
    );
    vcpu.complete_hypercall(0).unwrap();
    assert_eq!(
        vcpu.run().unwrap(),
        VmExit::MapGpaRange {
            gpa: 0x20000,
            npages: 1,
            private: false
        }
    );
    vcpu.complete_hypercall(libc::EINVAL as u64).unwrap();
    // Op 3 is no page-state change: answered in the kernel.
    assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
    let psc_error = (0xf << 32) | 0x015;
    assert_eq!(
        *seen.lock().unwrap(),
        [GHCB | 0x013, 0x015, psc_error, psc_error],
        "the registration's answer, then each change's"
    );
}

#[test]
fn kernel_model_busy_and_eio_become_the_guests_vmm_errors() {
    for (completion, info_2) in [
        (SnpCertsCompletion::busy(), 2 << 32),
        (SnpCertsCompletion::guest_fault(), 0xffff_ffff << 32),
    ] {
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let (_vm, mut vcpu, _mem) = launched(
            KernelModelConfig::default(),
            vec![
                register(GHCB),
                ext_request(5, 1),
                observe(&seen, terminate()),
            ],
        );
        assert!(matches!(vcpu.run().unwrap(), VmExit::SnpReqCerts(_)));
        vcpu.complete_snp_req_certs(completion).unwrap();
        assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
        assert_eq!(seen.lock().unwrap()[0].1, info_2, "{completion:?}");
    }
}

#[test]
fn kernel_model_a_guest_request_gets_firmwares_answer_in_the_ghcb() {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let (_vm, mut vcpu, mem) = launched(
        KernelModelConfig::default(),
        vec![
            register(GHCB),
            gexit(GUEST_REQUEST, (REQ, RESP), vec![], vec![], 0),
            observe(&seen, terminate()),
        ],
    );
    mem.write_obj(u64::MAX, GuestAddress(GHCB + ghcb::SW_EXIT_INFO_1))
        .unwrap();
    assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
    assert_eq!(
        seen.lock().unwrap()[0],
        (0, u64::from(super::SEV_RET_INVALID_PARAM), 0)
    );
    let memory: &GuestMemoryMmap = &mem;
    let mut resp = [0xffu8; 8];
    memory.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
    assert_eq!(resp, [0; 8], "the response page, written by firmware");
}

#[test]
fn kernel_model_reading_the_ghcb_clears_its_valid_bitmap_and_nothing_else() {
    let out = gexit(
        IOIO,
        ((0x5e8 << 16) | (1 << 6), 0),
        vec![(ghcb::RAX, 7)],
        vec![],
        0,
    );
    let (_vm, mut vcpu, mem) = launched(KernelModelConfig::default(), vec![register(GHCB), out]);
    mem.write_slice(&[0xee; 0x1000], GuestAddress(GHCB - 0x1000))
        .unwrap();
    assert!(matches!(
        vcpu.run().unwrap(),
        VmExit::IoOut { port: 0x5e8, .. }
    ));
    let mut bitmap = [0xffu8; 16];
    mem.read_slice(&mut bitmap, GuestAddress(GHCB + ghcb::VALID_BITMAP))
        .unwrap();
    assert_eq!(bitmap, [0; 16], "cleared (sev_es_sync_from_ghcb)");
    let mut before = vec![0u8; 0x1000];
    mem.read_slice(&mut before, GuestAddress(GHCB - 0x1000))
        .unwrap();
    assert!(
        before.iter().all(|b| *b == 0xee),
        "nothing outside the GHCB"
    );
}

#[test]
fn kernel_model_without_the_certificate_exit_a_request_offering_no_pages_gets_nothing_written() {
    let (_vm, mut vcpu, mem) = super::tests::launched_with(
        KernelModelConfig::default(),
        vec![
            register(GHCB),
            ext_request(5, 1),
            Box::new(|cpu, mem| {
                // The second request offers no pages.
                mem.write_slice(&[0xee; 32], GuestAddress(BUF)).unwrap();
                let mut next = ext_request(5, 0);
                next(cpu, mem)
            }),
            terminate(),
        ],
        false,
    );
    mem.write_slice(&[0xee; 32], GuestAddress(BUF)).unwrap();
    // No exit to the VMM: KVM answers both itself.
    assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
    let mut buffer = [0u8; 32];
    mem.read_slice(&mut buffer, GuestAddress(BUF)).unwrap();
    assert_eq!(buffer, [0xee; 32], "no pages offered: nothing written");
}

#[test]
fn kernel_model_without_the_certificate_exit_a_buffer_gets_24_zero_bytes() {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let (_vm, mut vcpu, mem) = super::tests::launched_with(
        KernelModelConfig::default(),
        vec![
            register(GHCB),
            ext_request(5, 1),
            observe(&seen, terminate()),
        ],
        false,
    );
    mem.write_slice(&[0xee; 32], GuestAddress(BUF)).unwrap();
    assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
    let mut buffer = [0u8; 32];
    mem.read_slice(&mut buffer, GuestAddress(BUF)).unwrap();
    assert_eq!(buffer[..24], [0; 24]);
    assert_eq!(buffer[24..], [0xee; 8]);
}

#[test]
fn kernel_model_the_firmware_call_writes_the_ghcb_inside_the_immediate_exit_run() {
    let (_vm, mut vcpu, mem) = launched(
        KernelModelConfig::default(),
        vec![register(GHCB), ext_request(5, 1)],
    );
    assert!(matches!(vcpu.run().unwrap(), VmExit::SnpReqCerts(_)));
    assert_eq!(
        super::tests::ghcb_field(&mem, ghcb::SW_EXIT_INFO_1),
        REQ,
        "as the guest left it"
    );
    vcpu.complete_snp_req_certs(SnpCertsCompletion::ok())
        .unwrap();
    vcpu.set_immediate_exit(true);
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    assert_eq!(super::tests::ghcb_field(&mem, ghcb::SW_EXIT_INFO_1), 0);
    assert_eq!(
        super::tests::ghcb_field(&mem, ghcb::SW_EXIT_INFO_2),
        u64::from(super::SEV_RET_INVALID_PARAM)
    );
}
