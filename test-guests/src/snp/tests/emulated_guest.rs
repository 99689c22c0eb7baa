//! The SNP guest's real machine code, run in an x86-64 emulator (Unicorn,
//! a test-only dependency) as an [`SevGuest`] of the kernel model.
//!
//! The emulator runs the bytes in 64-bit mode on a flat view of guest
//! memory (addresses are the guest's identity mapping). What an SNP CPU
//! does beyond plain x86 is done here, per the GHCB specification: `rdmsr`
//! and `wrmsr` of the GHCB MSR (0xC001_0130) read and write
//! [`SevCpu::ghcb_msr`]; VMGEXIT (`f3 0f 01 d9`) stops with
//! [`GuestStop::Vmgexit`]; PVALIDATE (`f2 0f 01 ff`) stops with its
//! operands and takes the model's answer (EAX, CF) when it runs on. Any
//! other MSR, and every instruction that raises #VC in an SNP guest
//! without a handler (`cpuid`, `in`, `out`, `hlt`), is a fault.
//!
//! Unicorn is not `Send`, so it lives on a thread of its own; guest
//! memory is copied in before each run and out after it (the VMM only
//! touches guest memory while the vCPU is stopped).

use std::sync::mpsc::{Receiver, Sender, channel};

use hypervisor::VmExit;
use hypervisor::mock::{GuestStop, MockCompletion, MockGuest, PvalidateAnswer, SevCpu, SevGuest};
use unicorn_engine::unicorn_const::{Arch, Mode, Prot};
use unicorn_engine::{RegisterX86, Unicorn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::ghcb::GHCB_MSR;
use super::super::layout::{CODE_GPA, MIN_MEMORY};

/// Instructions run per emulator start before the run counts as a hang.
const MAX_INSTRUCTIONS: usize = 50_000_000;

struct Request {
    cpu: SevCpu,
    memory: Vec<u8>,
}

struct Reply {
    cpu: SevCpu,
    memory: Vec<u8>,
    stop: GuestStop,
}

/// The guest's machine code in the emulator.
pub struct EmulatedGuest {
    to: Sender<Request>,
    from: Receiver<Reply>,
    /// Code written over the loaded program before the first run (the
    /// tests' mutated guests).
    code: Option<Vec<u8>>,
}

impl EmulatedGuest {
    /// Runs whatever guest memory holds at `CODE_GPA` (the loaded program).
    pub fn new() -> EmulatedGuest {
        let (to, requests) = channel::<Request>();
        let (replies, from) = channel::<Reply>();
        std::thread::spawn(move || emulator(requests, replies));
        EmulatedGuest {
            to,
            from,
            code: None,
        }
    }

    /// Runs `code` instead of the loaded program.
    pub fn with_code(code: Vec<u8>) -> EmulatedGuest {
        EmulatedGuest {
            code: Some(code),
            ..EmulatedGuest::new()
        }
    }
}

fn emulator(requests: Receiver<Request>, replies: Sender<Reply>) {
    let Ok(mut uc) = Unicorn::new_with_data(Arch::X86, Mode::MODE_64, None::<u64>) else {
        return;
    };
    if uc.mem_map(0, MIN_MEMORY, Prot::ALL).is_err() {
        return;
    }
    // Stop before every instruction the emulator must not run itself.
    let hooked = uc.add_code_hook(0, u64::MAX, |uc, addr, _size| {
        let mut b = [0u8; 4];
        if uc.mem_read(addr, &mut b).is_ok() && special(&b).is_some() {
            *uc.get_data_mut() = Some(addr);
            let _ = uc.emu_stop();
        }
    });
    if hooked.is_err() || uc.reg_write(RegisterX86::RIP, CODE_GPA).is_err() {
        return;
    }
    let mut pvalidating = false;
    while let Ok(Request {
        mut cpu,
        mut memory,
    }) = requests.recv()
    {
        let stop =
            run(&mut uc, &mut cpu, &mut memory, &mut pvalidating).unwrap_or_else(GuestStop::Fault);
        if replies.send(Reply { cpu, memory, stop }).is_err() {
            return;
        }
    }
}

/// The instruction the bytes start with, if it is one the emulator handles.
fn special(b: &[u8; 4]) -> Option<(&'static str, u64)> {
    match b {
        [0x0f, 0x30, ..] => Some(("wrmsr", 2)),
        [0x0f, 0x32, ..] => Some(("rdmsr", 2)),
        [0xf3, 0x0f, 0x01, 0xd9] => Some(("vmgexit", 4)),
        [0xf2, 0x0f, 0x01, 0xff] => Some(("pvalidate", 4)),
        [0x0f, 0xa2, ..] => Some(("cpuid", 2)),
        [0xf4, ..] => Some(("hlt", 1)),
        [0xe4..=0xe7 | 0xec..=0xef, ..] => Some(("in/out", 1)),
        _ => None,
    }
}

fn run(
    uc: &mut Unicorn<'_, Option<u64>>,
    cpu: &mut SevCpu,
    memory: &mut [u8],
    pvalidating: &mut bool,
) -> Result<GuestStop, String> {
    let e = |e| format!("emulator: {e:?}");
    uc.mem_write(0, memory).map_err(e)?;
    if std::mem::take(pvalidating) {
        let answer = cpu.pvalidate.unwrap_or(PvalidateAnswer {
            eax: 1,
            no_update: false,
        });
        uc.reg_write(RegisterX86::RAX, u64::from(answer.eax))
            .map_err(e)?;
        let flags = uc.reg_read(RegisterX86::EFLAGS).map_err(e)?;
        let flags = if answer.no_update {
            flags | 1
        } else {
            flags & !1
        };
        uc.reg_write(RegisterX86::EFLAGS, flags).map_err(e)?;
    }
    let stop = loop {
        *uc.get_data_mut() = None;
        let rip = uc.reg_read(RegisterX86::RIP).map_err(e)?;
        let result = uc.emu_start(rip, u64::MAX, 0, MAX_INSTRUCTIONS);
        let at = uc.reg_read(RegisterX86::RIP).map_err(e)?;
        if *uc.get_data() != Some(at) {
            break GuestStop::Fault(format!("stopped at {at:#x}: {result:?}"));
        }
        let mut b = [0u8; 4];
        uc.mem_read(at, &mut b).map_err(e)?;
        let Some((name, len)) = special(&b) else {
            break GuestStop::Fault(format!("stopped at {at:#x}"));
        };
        let reg = |uc: &Unicorn<'_, Option<u64>>, r| uc.reg_read(r).map_err(e);
        match name {
            "wrmsr" | "rdmsr" => {
                let msr = reg(uc, RegisterX86::RCX)? as u32;
                if msr != GHCB_MSR {
                    break GuestStop::Fault(format!("{name} of MSR {msr:#x} at {at:#x}"));
                }
                if name == "wrmsr" {
                    let lo = reg(uc, RegisterX86::RAX)? & 0xffff_ffff;
                    let hi = reg(uc, RegisterX86::RDX)? & 0xffff_ffff;
                    cpu.ghcb_msr = (hi << 32) | lo;
                } else {
                    uc.reg_write(RegisterX86::RAX, cpu.ghcb_msr & 0xffff_ffff)
                        .map_err(e)?;
                    uc.reg_write(RegisterX86::RDX, cpu.ghcb_msr >> 32)
                        .map_err(e)?;
                }
                uc.reg_write(RegisterX86::RIP, at + len).map_err(e)?;
            }
            "vmgexit" => {
                uc.reg_write(RegisterX86::RIP, at + len).map_err(e)?;
                break GuestStop::Vmgexit;
            }
            "pvalidate" => {
                uc.reg_write(RegisterX86::RIP, at + len).map_err(e)?;
                *pvalidating = true;
                cpu.pvalidate = None;
                break GuestStop::Pvalidate {
                    vaddr: reg(uc, RegisterX86::RAX)?,
                    huge: reg(uc, RegisterX86::RCX)? & 1 != 0,
                    validate: reg(uc, RegisterX86::RDX)? & 1 != 0,
                };
            }
            other => break GuestStop::Fault(format!("{other} at {at:#x} raises #VC")),
        }
    };
    uc.mem_read(0, memory).map_err(e)?;
    Ok(stop)
}

impl SevGuest for EmulatedGuest {
    fn run(&mut self, cpu: &mut SevCpu, memory: &GuestMemoryMmap) -> GuestStop {
        if let Some(code) = self.code.take() {
            if let Err(e) = memory.write_slice(&code, GuestAddress(CODE_GPA)) {
                return GuestStop::Fault(format!("cannot load the code: {e}"));
            }
        }
        let mut bytes = vec![0u8; MIN_MEMORY as usize];
        if let Err(e) = memory.read_slice(&mut bytes, GuestAddress(0)) {
            return GuestStop::Fault(format!("guest memory: {e}"));
        }
        let sent = self.to.send(Request {
            cpu: *cpu,
            memory: bytes,
        });
        let Ok(reply) = sent
            .map_err(|_| ())
            .and_then(|()| self.from.recv().map_err(|_| ()))
        else {
            return GuestStop::Fault("the emulator thread is gone".to_owned());
        };
        *cpu = reply.cpu;
        if let Err(e) = memory.write_slice(&reply.memory, GuestAddress(0)) {
            return GuestStop::Fault(format!("guest memory: {e}"));
        }
        reply.stop
    }
}

impl MockGuest for EmulatedGuest {
    fn next_exit(&mut self, _last: &MockCompletion, _memory: &GuestMemoryMmap) -> VmExit {
        VmExit::Other("the emulated SNP guest runs only on an SNP VM".to_owned())
    }

    fn sev_guest(&mut self) -> Option<&mut dyn SevGuest> {
        Some(self)
    }
}
