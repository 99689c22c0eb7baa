//! The SNP guest in Rust: the twin of the machine code ([`super::program`])
//! for the mock backend.
//!
//! [`MockSnpGuest`] is an [`SevGuest`]: it does what the machine code
//! does, step for step, through the same interfaces, so the kernel model
//! answers it exactly as it answers the machine code run in an emulator
//! (the tests compare the two):
//!
//! 1. for each of [`SHARED_PAGES`]: PVALIDATE rescinding the page through
//!    the private alias, then a page state change to shared through the
//!    GHCB MSR; after the first page, the GHCB registration;
//! 2. then [`AttestMachine`]'s steps: for each extended guest request the
//!    buffer filled (when `npages > 0`), the request page's message header
//!    written, and the GHCB exit; a pause or a report is an `OUT` through
//!    the GHCB; the answer read from `SW_EXITINFO2` and, for "too small",
//!    the pages needed from the GHCB's RBX;
//! 3. the termination request, for ever.
//!
//! Any failure of the protocol itself terminates with its reason, as the
//! machine code does.

use hypervisor::VmExit;
use hypervisor::mock::{GuestStop, MockCompletion, MockGuest, SevCpu, SevGuest};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ghcb::{
    self, EXT_GUEST_REQUEST, GHCB_VERSION, INFO_MASK, IOIO, PSC_RESP, TERM_DONE, TERM_GHCB,
    TERM_PSC, TERM_PVALIDATE, TERM_REGISTER, TERM_SET_GENERAL, decode_ext_result, ioio_out, msg,
    psc_request, register_request, register_response, termination_request, valid_bitmap,
};
use super::layout::{
    BUFFER_GPA, BUFFER_SIZE, FW_ERROR_OFFSET, GHCB_GPA, PRIVATE_ALIAS, REPORT_GPA, REQUEST_GPA,
    RESPONSE_GPA, SHARED_PAGES,
};
use crate::attest::{AttestMachine, AttestParams, BUFFER_FILL, Step};
use crate::report::{DELAY_PORT, REPORT_PORT, write_report};

/// Where the guest is: what it is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// About to rescind page `n`'s validation.
    Rescind(usize),
    /// PVALIDATE of page `n` done; about to ask for it to be shared.
    Rescinded(usize),
    /// The page state change of page `n` was asked for.
    Shared(usize),
    /// The GHCB registration was asked for.
    Registered,
    /// An extended guest request with this many pages was made.
    Asked(u64),
    /// An `OUT` was made.
    Out,
    /// Terminated with this reason code.
    Terminated(u8),
}

/// The SNP guest's Rust twin (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct MockSnpGuest {
    machine: AttestMachine,
    phase: Phase,
    /// The firmware error of the last request passed on (the report's
    /// ninth word).
    last_fw_error: u32,
}

impl MockSnpGuest {
    /// A guest that will run with `params`.
    pub fn new(params: AttestParams) -> Self {
        Self {
            machine: AttestMachine::new(params),
            phase: Phase::Rescind(0),
            last_fw_error: 0,
        }
    }

    fn terminate(&mut self, cpu: &mut SevCpu, reason_code: u8) -> GuestStop {
        self.phase = Phase::Terminated(reason_code);
        cpu.ghcb_msr = termination_request(TERM_SET_GENERAL, reason_code);
        GuestStop::Vmgexit
    }

    fn step(&mut self, cpu: &mut SevCpu, memory: &GuestMemoryMmap) -> Result<GuestStop, String> {
        let step = match self.phase {
            Phase::Rescind(n) => {
                self.phase = Phase::Rescinded(n);
                return Ok(GuestStop::Pvalidate {
                    vaddr: PRIVATE_ALIAS + SHARED_PAGES[n],
                    huge: false,
                    validate: false,
                });
            }
            Phase::Rescinded(n) => {
                match cpu.pvalidate.take() {
                    Some(a) if a.eax == 0 && !a.no_update => {}
                    _ => return Ok(self.terminate(cpu, TERM_PVALIDATE)),
                }
                self.phase = Phase::Shared(n);
                cpu.ghcb_msr = psc_request(SHARED_PAGES[n]);
                return Ok(GuestStop::Vmgexit);
            }
            Phase::Shared(n) => {
                let answer = cpu.ghcb_msr;
                if answer & INFO_MASK != PSC_RESP || answer >> 32 != 0 {
                    return Ok(self.terminate(cpu, TERM_PSC));
                }
                if n == 0 {
                    self.phase = Phase::Registered;
                    cpu.ghcb_msr = register_request(GHCB_GPA);
                    return Ok(GuestStop::Vmgexit);
                }
                if n + 1 < SHARED_PAGES.len() {
                    self.phase = Phase::Rescind(n + 1);
                    return self.step(cpu, memory);
                }
                self.machine.resume()
            }
            Phase::Registered => {
                if cpu.ghcb_msr != register_response(GHCB_GPA) {
                    return Ok(self.terminate(cpu, TERM_REGISTER));
                }
                self.phase = Phase::Rescind(1);
                return self.step(cpu, memory);
            }
            Phase::Out => {
                if !exit_ok(memory)? {
                    return Ok(self.terminate(cpu, TERM_GHCB));
                }
                self.machine.resume()
            }
            Phase::Asked(npages) => {
                if !exit_ok(memory)? {
                    return Ok(self.terminate(cpu, TERM_GHCB));
                }
                self.answered(npages, memory)?
            }
            Phase::Terminated(code) => return Ok(self.terminate(cpu, code)),
        };
        self.perform(step, cpu, memory)
    }

    /// What the guest decides from `SW_EXITINFO2` (and RBX) after its
    /// request for `npages` pages.
    fn answered(&mut self, npages: u64, memory: &GuestMemoryMmap) -> Result<Step, String> {
        let result = decode_ext_result(read(memory, GHCB_GPA + ghcb::SW_EXIT_INFO_2)?);
        let rbx = if result.ret == libc::ENOSPC as u64 {
            read(memory, GHCB_GPA + ghcb::RBX)?
        } else {
            npages
        };
        let mut buffer = Vec::new();
        if result.ret == 0 {
            self.last_fw_error = result.fw_error;
            buffer.resize(BUFFER_SIZE as usize, 0);
            memory
                .read_slice(&mut buffer, GuestAddress(BUFFER_GPA))
                .map_err(|e| format!("buffer: {e}"))?;
        }
        Ok(self.machine.answer(result.ret, rbx, &buffer))
    }

    fn perform(
        &mut self,
        step: Step,
        cpu: &mut SevCpu,
        memory: &GuestMemoryMmap,
    ) -> Result<GuestStop, String> {
        let write = |gpa: u64, bytes: &[u8]| {
            memory
                .write_slice(bytes, GuestAddress(gpa))
                .map_err(|e| format!("{gpa:#x}: {e}"))
        };
        let (port, value) = match step {
            Step::Ring { npages } => {
                if npages > 0 {
                    write(BUFFER_GPA, &[BUFFER_FILL; BUFFER_SIZE as usize])?;
                }
                write(
                    REQUEST_GPA + msg::ALGO_OFFSET,
                    &msg::ALGO_WORD.to_le_bytes(),
                )?;
                write(
                    REQUEST_GPA + msg::MSG_TYPE_OFFSET,
                    &msg::MSG_TYPE_WORD.to_le_bytes(),
                )?;
                write(REQUEST_GPA + msg::VMPCK_OFFSET, &[0])?;
                let seq = u64::from(self.machine.seq());
                write(REQUEST_GPA + msg::SEQNO_OFFSET, &seq.to_le_bytes())?;
                self.phase = Phase::Asked(npages);
                ghcb_exit(
                    cpu,
                    memory,
                    EXT_GUEST_REQUEST,
                    REQUEST_GPA,
                    RESPONSE_GPA,
                    BUFFER_GPA,
                    Some(npages),
                )?;
                return Ok(GuestStop::Vmgexit);
            }
            Step::Delay { ms } => (DELAY_PORT, ms),
            Step::Report(report) => {
                write_report(memory, REPORT_GPA, &report).map_err(|e| format!("report: {e}"))?;
                let fw_error = std::mem::take(&mut self.last_fw_error);
                write(REPORT_GPA + FW_ERROR_OFFSET, &fw_error.to_le_bytes())?;
                (REPORT_PORT, REPORT_GPA as u32)
            }
            Step::Halt => return Ok(self.terminate(cpu, TERM_DONE)),
        };
        self.phase = Phase::Out;
        ghcb_exit(cpu, memory, IOIO, ioio_out(port), 0, u64::from(value), None)?;
        Ok(GuestStop::Vmgexit)
    }
}

fn read(memory: &GuestMemoryMmap, gpa: u64) -> Result<u64, String> {
    memory
        .read_obj(GuestAddress(gpa))
        .map_err(|e| format!("{gpa:#x}: {e}"))
}

/// Whether the last GHCB exit succeeded: `SW_EXITINFO1`'s low half 0.
fn exit_ok(memory: &GuestMemoryMmap) -> Result<bool, String> {
    Ok(read(memory, GHCB_GPA + ghcb::SW_EXIT_INFO_1)? as u32 == 0)
}

/// Fills the GHCB for an exit and puts its address in the MSR.
fn ghcb_exit(
    cpu: &mut SevCpu,
    memory: &GuestMemoryMmap,
    exit_code: u64,
    info_1: u64,
    info_2: u64,
    rax: u64,
    rbx: Option<u64>,
) -> Result<(), String> {
    let mut fields = vec![
        (ghcb::SW_EXIT_CODE, exit_code),
        (ghcb::SW_EXIT_INFO_1, info_1),
        (ghcb::SW_EXIT_INFO_2, info_2),
        (ghcb::RAX, rax),
    ];
    if let Some(rbx) = rbx {
        fields.push((ghcb::RBX, rbx));
    }
    let offsets: Vec<u64> = fields.iter().map(|&(o, _)| o).collect();
    let (low, high) = valid_bitmap(&offsets);
    fields.push((ghcb::VALID_BITMAP, low));
    fields.push((ghcb::VALID_BITMAP + 8, high));
    for (offset, value) in fields {
        memory
            .write_obj(value, GuestAddress(GHCB_GPA + offset))
            .map_err(|e| format!("GHCB: {e}"))?;
    }
    memory
        .write_obj(
            GHCB_VERSION,
            GuestAddress(GHCB_GPA + ghcb::PROTOCOL_VERSION),
        )
        .and_then(|()| memory.write_obj(0u32, GuestAddress(GHCB_GPA + ghcb::GHCB_USAGE)))
        .map_err(|e| format!("GHCB: {e}"))?;
    cpu.ghcb_msr = GHCB_GPA;
    Ok(())
}

impl SevGuest for MockSnpGuest {
    fn run(&mut self, cpu: &mut SevCpu, memory: &GuestMemoryMmap) -> GuestStop {
        self.step(cpu, memory).unwrap_or_else(|e| {
            self.phase = Phase::Terminated(TERM_DONE);
            GuestStop::Fault(format!("SNP twin: {e}"))
        })
    }
}

impl MockGuest for MockSnpGuest {
    fn next_exit(&mut self, _last: &MockCompletion, _memory: &GuestMemoryMmap) -> VmExit {
        VmExit::Other("the SNP twin runs only on an SNP VM of the mock-snp backend".to_owned())
    }

    fn sev_guest(&mut self) -> Option<&mut dyn SevGuest> {
        Some(self)
    }
}
