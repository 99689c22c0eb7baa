//! The machine code, decoded instruction by instruction and walked in
//! order with the constants each register holds, checked against what the
//! protocol needs: the MSR protocol exchanges, PVALIDATE before each page
//! state change, the GHCB fields of each GHCB exit, and the terminations.

use std::collections::HashMap;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::super::ghcb::{
    self, EXT_GUEST_REQUEST, GHCB_MSR, IOIO, TERM_DONE, TERM_GHCB, TERM_PSC, TERM_PVALIDATE,
    TERM_REGISTER, ioio_out, psc_request, register_request, termination_request, valid_bitmap,
};
use super::super::layout::{
    BUFFER_GPA, CODE_GPA, GHCB_GPA, PRIVATE_ALIAS, REPORT_GPA, REQUEST_GPA, RESPONSE_GPA,
    SHARED_PAGES,
};
use super::super::program;
use crate::attest::AttestParams;
use crate::report::{DELAY_PORT, REPORT_PORT};

/// What a register holds at a point of the straight-line walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    Const(u64),
    /// Loaded from this absolute address.
    Load(u64),
    Unknown,
}

/// One effect that matters to the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    /// `wrmsr` of `ecx`, `edx:eax`, and whether VMGEXIT follows at once.
    Wrmsr {
        msr: Val,
        value: Option<u64>,
        then_vmgexit: bool,
    },
    /// PVALIDATE with rax, ecx, edx, and whether `jc` follows at once.
    Pvalidate {
        rax: Val,
        ecx: Val,
        edx: Val,
        then_jc: bool,
    },
    /// A store of `val` (`size` bytes) to the absolute address `addr`.
    Store {
        addr: u64,
        size: usize,
        val: Val,
    },
    Vmgexit,
}

fn decode(code: &[u8]) -> Vec<Instruction> {
    let decoder = Decoder::with_ip(64, code, CODE_GPA, DecoderOptions::NONE);
    let all: Vec<Instruction> = decoder.into_iter().collect();
    assert!(
        all.iter().all(|i| i.code() != Code::INVALID),
        "undecodable bytes"
    );
    all
}

/// The 64-bit register a 32-bit one is the low half of (a 32-bit write
/// zero-extends), for the registers the guest uses.
fn full(r: Register) -> Register {
    match r {
        Register::EAX => Register::RAX,
        Register::EBX => Register::RBX,
        Register::ECX => Register::RCX,
        Register::EDX => Register::RDX,
        Register::ESI => Register::RSI,
        Register::EDI => Register::RDI,
        Register::EBP => Register::RBP,
        other => other,
    }
}

fn absolute(i: &Instruction) -> Option<u64> {
    (i.memory_base() == Register::None && i.memory_index() == Register::None)
        .then(|| i.memory_displacement64())
}

/// Walks the code in order, tracking constants in registers (jumps are
/// not followed: every check is about straight-line code).
fn effects(code: &[Instruction]) -> Vec<Effect> {
    let mut regs: HashMap<Register, Val> = HashMap::new();
    let get =
        |regs: &HashMap<Register, Val>, r: Register| *regs.get(&full(r)).unwrap_or(&Val::Unknown);
    let mut out = Vec::new();
    for (n, i) in code.iter().enumerate() {
        let next = code.get(n + 1).map(|i| i.mnemonic());
        match i.mnemonic() {
            Mnemonic::Wrmsr => {
                let value = match (get(&regs, Register::RDX), get(&regs, Register::RAX)) {
                    (Val::Const(hi), Val::Const(lo)) => Some((hi << 32) | (lo & 0xffff_ffff)),
                    _ => None,
                };
                out.push(Effect::Wrmsr {
                    msr: get(&regs, Register::RCX),
                    value,
                    then_vmgexit: next == Some(Mnemonic::Vmgexit),
                });
                continue;
            }
            Mnemonic::Vmgexit => {
                out.push(Effect::Vmgexit);
                continue;
            }
            Mnemonic::Pvalidate => {
                out.push(Effect::Pvalidate {
                    rax: get(&regs, Register::RAX),
                    ecx: get(&regs, Register::RCX),
                    edx: get(&regs, Register::RDX),
                    then_jc: next == Some(Mnemonic::Jb),
                });
                regs.insert(Register::RAX, Val::Unknown);
                continue;
            }
            Mnemonic::Rdmsr => {
                regs.insert(Register::RAX, Val::Unknown);
                regs.insert(Register::RDX, Val::Unknown);
                continue;
            }
            _ => {}
        }
        if i.op_count() == 0 {
            continue;
        }
        let src = || match i.op_kind(1) {
            OpKind::Register => get(&regs, i.op_register(1)),
            OpKind::Memory => absolute(i).map_or(Val::Unknown, Val::Load),
            _ => i.try_immediate(1).map_or(Val::Unknown, Val::Const),
        };
        match (i.op_kind(0), i.mnemonic()) {
            (OpKind::Memory, Mnemonic::Mov) => {
                if let Some(addr) = absolute(i) {
                    out.push(Effect::Store {
                        addr,
                        size: i.memory_size().size(),
                        val: src(),
                    });
                }
            }
            (OpKind::Register, m) => {
                let dst = full(i.op_register(0));
                let value = match m {
                    Mnemonic::Mov if i.op_count() == 2 => src(),
                    Mnemonic::Xor if i.op_register(1) == i.op_register(0) => Val::Const(0),
                    Mnemonic::Shr => match (get(&regs, dst), src()) {
                        (Val::Const(v), Val::Const(s)) => Val::Const(v >> s),
                        _ => Val::Unknown,
                    },
                    _ => Val::Unknown,
                };
                regs.insert(dst, value);
            }
            _ => {}
        }
    }
    out
}

fn params() -> AttestParams {
    AttestParams {
        requests: 2,
        interval_ms: 5,
        retry_ms: 9,
        max_busy_retries: 3,
    }
}

/// The MSR writes that go to the GHCB MSR and are followed by VMGEXIT.
fn msr_exits(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Wrmsr {
                msr: Val::Const(m),
                value: Some(v),
                then_vmgexit: true,
            } if *m == u64::from(GHCB_MSR) => Some(*v),
            _ => None,
        })
        .collect()
}

#[test]
fn every_wrmsr_is_a_known_ghcb_msr_request_followed_by_vmgexit() {
    let e = effects(&decode(&program(&params()).unwrap()));
    let all_wrmsr = e
        .iter()
        .filter(|e| matches!(e, Effect::Wrmsr { .. }))
        .count();
    let exits = msr_exits(&e);
    assert_eq!(exits.len(), all_wrmsr, "{e:?}");
    assert_eq!(
        e.iter().filter(|e| **e == Effect::Vmgexit).count(),
        all_wrmsr,
        "a VMGEXIT without its wrmsr"
    );
    // The start: share the GHCB, register it, share the rest.
    let mut start = vec![psc_request(SHARED_PAGES[0]), register_request(GHCB_GPA)];
    start.extend(SHARED_PAGES[1..].iter().map(|&p| psc_request(p)));
    assert_eq!(exits[..start.len()], start[..]);
    // Then only GHCB exits (MSR = the GHCB's GPA) and terminations.
    let terms: Vec<u64> = [
        TERM_DONE,
        TERM_REGISTER,
        TERM_PSC,
        TERM_PVALIDATE,
        TERM_GHCB,
    ]
    .iter()
    .map(|&c| termination_request(0, c))
    .collect();
    let rest = &exits[start.len()..];
    assert!(
        rest.iter().all(|v| *v == GHCB_GPA || terms.contains(v)),
        "{rest:x?}"
    );
    for t in &terms {
        assert_eq!(rest.iter().filter(|v| *v == t).count(), 1, "{t:#x}");
    }
}

#[test]
fn pvalidate_rescinds_each_page_right_before_its_page_state_change() {
    let e = effects(&decode(&program(&params()).unwrap()));
    for &page in &SHARED_PAGES {
        let psc = e
            .iter()
            .position(
                |x| matches!(x, Effect::Wrmsr { value: Some(v), .. } if *v == psc_request(page)),
            )
            .unwrap();
        let before = e[..psc]
            .iter()
            .rev()
            .find(|x| matches!(x, Effect::Pvalidate { .. } | Effect::Wrmsr { .. }))
            .unwrap();
        assert_eq!(
            *before,
            Effect::Pvalidate {
                rax: Val::Const(PRIVATE_ALIAS + page),
                ecx: Val::Const(0),
                edx: Val::Const(0),
                then_jc: true,
            },
            "page {page:#x}"
        );
    }
}

/// The stores to the GHCB between the previous VMGEXIT and each GHCB exit,
/// as `offset -> (size, value)`.
fn ghcb_exits(e: &[Effect]) -> Vec<HashMap<u64, (usize, Val)>> {
    let mut exits = Vec::new();
    let mut stores = HashMap::new();
    for x in e {
        match x {
            Effect::Store { addr, size, val } if (GHCB_GPA..GHCB_GPA + 4096).contains(addr) => {
                stores.insert(addr - GHCB_GPA, (*size, *val));
            }
            Effect::Wrmsr {
                value: Some(v),
                then_vmgexit: true,
                ..
            } if *v == GHCB_GPA => exits.push(std::mem::take(&mut stores)),
            Effect::Vmgexit => stores.clear(),
            _ => {}
        }
    }
    exits
}

fn q(v: u64) -> (usize, Val) {
    (8, Val::Const(v))
}

#[test]
fn the_extended_guest_request_fills_the_ghcb() {
    let e = effects(&decode(&program(&params()).unwrap()));
    let exits = ghcb_exits(&e);
    let requests: Vec<_> = exits
        .iter()
        .filter(|s| s.get(&ghcb::SW_EXIT_CODE) == Some(&q(EXT_GUEST_REQUEST)))
        .collect();
    assert_eq!(requests.len(), 1);
    let s = requests[0];
    let (low, high) = valid_bitmap(&[ghcb::SW_EXIT_CODE, 0x398, 0x3a0, 0x1f8, 0x318]);
    assert_eq!(s[&ghcb::SW_EXIT_INFO_1], q(REQUEST_GPA));
    assert_eq!(s[&ghcb::SW_EXIT_INFO_2], q(RESPONSE_GPA));
    assert_eq!(s[&ghcb::RAX], q(BUFFER_GPA));
    // RBX: the report's npages, the count being asked with.
    assert_eq!(s[&ghcb::RBX], (8, Val::Load(REPORT_GPA + 8)));
    assert_eq!(s[&ghcb::VALID_BITMAP], q(low));
    assert_eq!(s[&(ghcb::VALID_BITMAP + 8)], q(high));
    assert_eq!(s[&ghcb::PROTOCOL_VERSION], (2, Val::Const(2)));
    assert_eq!(s[&ghcb::GHCB_USAGE], (4, Val::Const(0)));
}

#[test]
fn reports_and_pauses_are_port_io_through_the_ghcb() {
    let p = params();
    let e = effects(&decode(&program(&p).unwrap()));
    let outs: Vec<(u64, u64)> = ghcb_exits(&e)
        .iter()
        .filter(|s| s.get(&ghcb::SW_EXIT_CODE) == Some(&q(IOIO)))
        .map(|s| {
            let (low, high) = valid_bitmap(&[ghcb::SW_EXIT_CODE, 0x398, 0x3a0, 0x1f8]);
            assert_eq!(s[&ghcb::VALID_BITMAP], q(low));
            assert_eq!(s[&(ghcb::VALID_BITMAP + 8)], q(high));
            assert_eq!(s[&ghcb::SW_EXIT_INFO_2], q(0));
            let Val::Const(info) = s[&ghcb::SW_EXIT_INFO_1].1 else {
                panic!("{s:?}")
            };
            let Val::Const(rax) = s[&ghcb::RAX].1 else {
                panic!("{s:?}")
            };
            (info, rax)
        })
        .collect();
    assert_eq!(
        outs,
        [
            (ioio_out(DELAY_PORT), u64::from(p.retry_ms)),
            (ioio_out(REPORT_PORT), REPORT_GPA),
            (ioio_out(DELAY_PORT), u64::from(p.interval_ms)),
        ]
    );
    assert_eq!(ioio_out(REPORT_PORT), 0x05e4_0240);
}

#[test]
fn no_pause_is_made_for_zero_and_nothing_raises_vc() {
    let p = AttestParams {
        retry_ms: 0,
        interval_ms: 0,
        ..params()
    };
    let code = decode(&program(&p).unwrap());
    let e = effects(&code);
    let ioio = ghcb_exits(&e)
        .iter()
        .filter(|s| s.get(&ghcb::SW_EXIT_CODE) == Some(&q(IOIO)))
        .count();
    assert_eq!(ioio, 1, "only the report");
    for i in &code {
        assert!(
            !matches!(
                i.mnemonic(),
                Mnemonic::Out | Mnemonic::In | Mnemonic::Hlt | Mnemonic::Cpuid | Mnemonic::Int
            ),
            "{i}"
        );
    }
}

#[test]
fn each_termination_loops_on_itself() {
    let code = decode(&program(&params()).unwrap());
    let vmgexits: Vec<usize> = (0..code.len())
        .filter(|&n| code[n].mnemonic() == Mnemonic::Vmgexit)
        .collect();
    // The last five VMGEXITs are the terminations: each followed by a jump
    // back to its own request.
    for &n in &vmgexits[vmgexits.len() - 5..] {
        let jmp = &code[n + 1];
        assert_eq!(jmp.mnemonic(), Mnemonic::Jmp);
        let target = jmp.near_branch_target();
        assert!(target < code[n].ip() && target >= code[n - 6].ip(), "{jmp}");
    }
}
