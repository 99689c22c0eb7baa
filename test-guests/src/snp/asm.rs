//! The SNP guest as 64-bit machine code.
//!
//! An independent implementation of the decisions
//! [`AttestMachine`](crate::attest::AttestMachine) describes, speaking the
//! GHCB protocol of [`super::ghcb`], assembled with iced-x86. Conventions:
//!
//! * 64-bit long mode, the image's identity mapping (see
//!   [`super::layout`]); every address is an absolute 32-bit displacement.
//! * No stack, no calls, no interrupts (`cli`), direction flag clear. Every
//!   GHCB exit is emitted in place, so each VMGEXIT has its fields written
//!   just before it; no instruction that would raise #VC (`out`, `hlt`,
//!   `cpuid`) is used.
//! * The request in progress lives in the report itself, as in the
//!   real-mode guest: `seq`, `npages` and `busy_retries` are updated in
//!   place, the other fields (and the firmware error word) are cleared when
//!   a request starts.
//! * Any failure of the protocol itself (PVALIDATE, a page state change,
//!   the registration, a GHCB exit) ends the guest with its termination
//!   reason ([`super::ghcb::TERM_PVALIDATE`] …); the normal end is
//!   [`super::ghcb::TERM_DONE`].

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::SnpError;
use super::ghcb::msg;
use super::ghcb::{
    EXT_GUEST_REQUEST, GHCB_MSR, GHCB_USAGE, GHCB_VERSION, INFO_MASK, IOIO, PROTOCOL_VERSION,
    PSC_RESP, RAX, RBX, SW_EXIT_CODE, SW_EXIT_INFO_1, SW_EXIT_INFO_2, TERM_DONE, TERM_GHCB,
    TERM_PSC, TERM_PVALIDATE, TERM_REGISTER, TERM_SET_GENERAL, VALID_BITMAP, VMM_ERR_BUSY,
    VMM_ERR_GENERIC, VMM_ERR_INVALID_LEN, ioio_out, psc_request, register_request,
    register_response, termination_request, valid_bitmap,
};
use super::layout::{
    BUFFER_GPA, BUFFER_PAGES, BUFFER_SIZE, CODE_GPA, CODE_MAX_SIZE, FW_ERROR_OFFSET, GHCB_GPA,
    PRIVATE_ALIAS, REPORT_GPA, REQUEST_GPA, RESPONSE_GPA, SHARED_PAGES,
};
use crate::attest::{AttestParams, BUFFER_FILL};
use crate::report::{DELAY_PORT, FNV_OFFSET, FNV_PRIME, REPORT_PORT, ReportStatus};

/// Report fields, as indexes of its `u32`s (the ninth is the firmware
/// error).
const SEQ: u32 = 0;
const RET: u32 = 1;
const NPAGES: u32 = 2;
const BUSY_RETRIES: u32 = 3;
const ENTRIES: u32 = 4;
const TABLE_LEN: u32 = 5;
const CHECKSUM: u32 = 6;
const STATUS: u32 = 7;
const FW_ERROR: u32 = (FW_ERROR_OFFSET / 4) as u32;

/// `ret` values as the report holds them (errno numbers).
const ENOSPC: u32 = libc::ENOSPC as u32;
const EAGAIN: u32 = libc::EAGAIN as u32;
const EIO: u32 = libc::EIO as u32;

/// All addresses fit in 32 bits (checked in `layout`).
const BUFFER: u32 = BUFFER_GPA as u32;
/// Eight fill bytes, for `rep stosq`.
const FILL: u64 = u64::from_ne_bytes([BUFFER_FILL; 8]);

/// A report field.
fn report(field: u32) -> AsmMemoryOperand {
    dword_ptr(REPORT_GPA as u32 + 4 * field)
}

/// A 64-bit GHCB field.
fn ghcb(offset: u64) -> AsmMemoryOperand {
    qword_ptr((GHCB_GPA + offset) as u32)
}

/// A dword of the table entry at `rsi`.
fn entry(offset: u32) -> AsmMemoryOperand {
    dword_ptr(rsi + (BUFFER + offset))
}

/// Where a GHCB field's value comes from.
#[derive(Clone, Copy)]
enum Value {
    /// A constant.
    Imm(u64),
    /// A report field (zero-extended).
    Report(u32),
}

/// One exit through the GHCB.
struct GhcbExit {
    exit_code: u64,
    info_1: u64,
    info_2: u64,
    rax: Value,
    rbx: Option<Value>,
}

/// Assembles the guest for `params`, to be loaded at [`CODE_GPA`].
pub fn program(params: &AttestParams) -> Result<Vec<u8>, SnpError> {
    let code = Emitter::assemble(params).map_err(SnpError::Assemble)?;
    if code.len() > CODE_MAX_SIZE {
        return Err(SnpError::ProgramTooLarge {
            size: code.len(),
            max: CODE_MAX_SIZE,
        });
    }
    Ok(code)
}

/// The assembler and the labels every part jumps to.
struct Emitter {
    a: CodeAssembler,
    term_register: CodeLabel,
    term_psc: CodeLabel,
    term_pvalidate: CodeLabel,
    term_ghcb: CodeLabel,
    term_done: CodeLabel,
}

impl Emitter {
    fn assemble(p: &AttestParams) -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut e = Emitter {
            term_register: a.create_label(),
            term_psc: a.create_label(),
            term_pvalidate: a.create_label(),
            term_ghcb: a.create_label(),
            term_done: a.create_label(),
            a,
        };
        e.a.cli()?;
        e.a.cld()?;
        // The GHCB first: shared, then registered; then the other pages.
        e.share(SHARED_PAGES[0])?;
        e.register()?;
        for &page in &SHARED_PAGES[1..] {
            e.share(page)?;
        }
        e.requests(p)?;
        e.terminations()?;
        e.a.assemble(CODE_GPA)
    }

    /// `wrmsr` of `value` to the GHCB MSR, then VMGEXIT.
    fn msr_exit(&mut self, value: u64) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.mov(ecx, GHCB_MSR)?;
        a.mov(rax, value)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32)?;
        a.wrmsr()?;
        a.vmgexit()
    }

    /// [`Self::msr_exit`], then the answer read back into `rax`.
    fn msr_protocol(&mut self, value: u64) -> Result<(), IcedError> {
        self.msr_exit(value)?;
        let a = &mut self.a;
        a.mov(ecx, GHCB_MSR)?;
        a.rdmsr()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)
    }

    /// Rescinds the page's validation through the private alias, then asks
    /// for it to become shared; any failure terminates.
    fn share(&mut self, gpa: u64) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.mov(rax, PRIVATE_ALIAS + gpa)?;
        a.xor(ecx, ecx)?; // 4 KiB page
        a.xor(edx, edx)?; // rescind
        a.pvalidate()?;
        a.jc(self.term_pvalidate)?; // nothing changed
        a.test(eax, eax)?;
        a.jnz(self.term_pvalidate)?;
        self.msr_protocol(psc_request(gpa))?;
        // Response code PSC_RESP, error (bits 63:32) 0.
        let a = &mut self.a;
        a.mov(rbx, rax)?;
        a.and(ebx, INFO_MASK as u32)?;
        a.cmp(ebx, PSC_RESP as u32)?;
        a.jne(self.term_psc)?;
        a.shr(rax, 32)?;
        a.jnz(self.term_psc)
    }

    /// Registers the GHCB's GPA.
    fn register(&mut self) -> Result<(), IcedError> {
        self.msr_protocol(register_request(GHCB_GPA))?;
        let a = &mut self.a;
        a.mov(rbx, register_response(GHCB_GPA))?;
        a.cmp(rax, rbx)?;
        a.jne(self.term_register)
    }

    /// Fills the GHCB for `exit`, exits, and terminates if `SW_EXITINFO1`
    /// reports an error.
    fn ghcb_exit(&mut self, exit: &GhcbExit) -> Result<(), IcedError> {
        let mut fields = vec![
            (SW_EXIT_CODE, Value::Imm(exit.exit_code)),
            (SW_EXIT_INFO_1, Value::Imm(exit.info_1)),
            (SW_EXIT_INFO_2, Value::Imm(exit.info_2)),
            (RAX, exit.rax),
        ];
        if let Some(value) = exit.rbx {
            fields.push((RBX, value));
        }
        let offsets: Vec<u64> = fields.iter().map(|&(o, _)| o).collect();
        let (low, high) = valid_bitmap(&offsets);
        let a = &mut self.a;
        for (offset, value) in fields {
            match value {
                Value::Imm(v) => a.mov(rax, v)?,
                Value::Report(field) => a.mov(eax, report(field))?,
            }
            a.mov(ghcb(offset), rax)?;
        }
        a.mov(rax, low)?;
        a.mov(ghcb(VALID_BITMAP), rax)?;
        a.mov(rax, high)?;
        a.mov(ghcb(VALID_BITMAP + 8), rax)?;
        a.mov(
            word_ptr((GHCB_GPA + PROTOCOL_VERSION) as u32),
            u32::from(GHCB_VERSION),
        )?;
        a.mov(dword_ptr((GHCB_GPA + GHCB_USAGE) as u32), 0u32)?;
        // The MSR holds the GHCB's GPA during a GHCB exit.
        a.mov(ecx, GHCB_MSR)?;
        a.mov(eax, GHCB_GPA as u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.vmgexit()?;
        a.mov(eax, dword_ptr((GHCB_GPA + SW_EXIT_INFO_1) as u32))?;
        a.test(eax, eax)?;
        a.jnz(self.term_ghcb)
    }

    /// A 32-bit `OUT` of `value` to `port`, through the GHCB.
    fn out(&mut self, port: u16, value: u64) -> Result<(), IcedError> {
        self.ghcb_exit(&GhcbExit {
            exit_code: IOIO,
            info_1: ioio_out(port),
            info_2: 0,
            rax: Value::Imm(value),
            rbx: None,
        })
    }

    /// A pause through the delay port; nothing for 0.
    fn delay(&mut self, ms: u32) -> Result<(), IcedError> {
        if ms > 0 {
            self.out(DELAY_PORT, u64::from(ms))?;
        }
        Ok(())
    }

    /// The requests, their decisions and reports (the real-mode guest's
    /// algorithm, over the GHCB).
    fn requests(&mut self, p: &AttestParams) -> Result<(), IcedError> {
        let mut next_request = self.a.create_label();
        let mut ring = self.a.create_label();
        let mut filled = self.a.create_label();
        let mut vmm_ok = self.a.create_label();
        let mut got_ok = self.a.create_label();
        let mut got_busy = self.a.create_label();
        let mut got_enospc = self.a.create_label();
        let mut got_eio = self.a.create_label();
        let mut too_big = self.a.create_label();
        let mut too_big_huge = self.a.create_label();
        let mut failed = self.a.create_label();
        let mut gave_up = self.a.create_label();
        let mut check_table = self.a.create_label();
        let mut send_report = self.a.create_label();
        let done = self.term_done;

        self.a.mov(report(SEQ), 0u32)?;
        // A new request: stop after the last one, else bump `seq` and clear
        // the other fields and the firmware error (npages 0: size query).
        self.a.set_label(&mut next_request)?;
        let a = &mut self.a;
        a.mov(eax, report(SEQ))?;
        a.cmp(eax, p.requests)?;
        a.jae(done)?;
        a.inc(eax)?;
        a.mov(report(SEQ), eax)?;
        a.xor(eax, eax)?;
        a.mov(edi, REPORT_GPA as u32 + 4)?;
        a.mov(ecx, FW_ERROR)?;
        a.rep().stosd()?;

        // With npages > 0 fill the buffer first, so a table that never
        // arrives is noticed.
        a.set_label(&mut ring)?;
        a.mov(eax, report(NPAGES))?;
        a.test(eax, eax)?;
        a.jz(filled)?;
        a.mov(edi, BUFFER)?;
        a.mov(ecx, (BUFFER_SIZE / 8) as u32)?;
        a.mov(rax, FILL)?;
        a.rep().stosq()?;
        a.set_label(&mut filled)?;
        // The message header: an attestation report request (msg_type 5),
        // VMPCK 0, sequence number the request's.
        a.mov(
            dword_ptr((REQUEST_GPA + msg::ALGO_OFFSET) as u32),
            msg::ALGO_WORD,
        )?;
        a.mov(
            dword_ptr((REQUEST_GPA + msg::MSG_TYPE_OFFSET) as u32),
            msg::MSG_TYPE_WORD,
        )?;
        a.mov(byte_ptr((REQUEST_GPA + msg::VMPCK_OFFSET) as u32), 0u32)?;
        a.mov(eax, report(SEQ))?;
        a.mov(qword_ptr((REQUEST_GPA + msg::SEQNO_OFFSET) as u32), rax)?;
        self.ghcb_exit(&GhcbExit {
            exit_code: EXT_GUEST_REQUEST,
            info_1: REQUEST_GPA,
            info_2: RESPONSE_GPA,
            rax: Value::Imm(BUFFER_GPA),
            rbx: Some(Value::Report(NPAGES)),
        })?;

        // SW_EXITINFO2: the hypervisor's error above, firmware's below.
        let a = &mut self.a;
        a.mov(rax, ghcb(SW_EXIT_INFO_2))?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32)?;
        a.jz(vmm_ok)?;
        a.cmp(edx, VMM_ERR_INVALID_LEN)?;
        a.je(got_enospc)?;
        a.cmp(edx, VMM_ERR_BUSY)?;
        a.je(got_busy)?;
        a.cmp(edx, VMM_ERR_GENERIC)?;
        a.je(got_eio)?;
        // Another hypervisor error: failed, reporting it.
        a.mov(report(RET), edx)?;
        a.jmp(failed)?;
        a.set_label(&mut got_eio)?;
        a.mov(report(RET), EIO)?;
        a.jmp(failed)?;
        // Passed on to firmware: keep its error, go on with the table.
        a.set_label(&mut vmm_ok)?;
        a.mov(report(RET), 0u32)?;
        a.mov(report(FW_ERROR), eax)?;
        a.jmp(got_ok)?;

        // Busy: give up once the budget is spent, else count, pause, retry.
        a.set_label(&mut got_busy)?;
        a.mov(report(RET), EAGAIN)?;
        a.mov(eax, report(BUSY_RETRIES))?;
        a.cmp(eax, p.max_busy_retries)?;
        a.jae(gave_up)?;
        a.inc(eax)?;
        a.mov(report(BUSY_RETRIES), eax)?;
        self.delay(p.retry_ms)?;
        self.a.jmp(ring)?;

        // Too small, RBX = pages needed (u64): more than the buffer -> too
        // big; no more than offered -> failed; else ask again with that.
        let a = &mut self.a;
        a.set_label(&mut got_enospc)?;
        a.mov(report(RET), ENOSPC)?;
        a.mov(rax, ghcb(RBX))?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32)?;
        a.jnz(too_big_huge)?;
        a.cmp(eax, BUFFER_PAGES as u32)?;
        a.ja(too_big)?;
        a.cmp(eax, report(NPAGES))?;
        a.jbe(failed)?;
        a.mov(report(NPAGES), eax)?;
        a.jmp(ring)?;
        a.set_label(&mut too_big_huge)?;
        a.mov(eax, u32::MAX)?;
        a.set_label(&mut too_big)?;
        a.mov(report(NPAGES), eax)?;
        a.mov(report(STATUS), ReportStatus::TooBig as u32)?;
        a.jmp(send_report)?;

        a.set_label(&mut failed)?;
        a.mov(report(STATUS), ReportStatus::Failed as u32)?;
        a.jmp(send_report)?;

        a.set_label(&mut gave_up)?;
        a.mov(report(STATUS), ReportStatus::GaveUpBusy as u32)?;
        a.jmp(send_report)?;

        // 0 to the size query: no table configured, ask with one page.
        a.set_label(&mut got_ok)?;
        a.mov(eax, report(NPAGES))?;
        a.test(eax, eax)?;
        a.jnz(check_table)?;
        a.mov(report(NPAGES), 1u32)?;
        a.jmp(ring)?;

        a.set_label(&mut check_table)?;
        self.table_check(&mut send_report)?;

        // Announce the report; unless it was the last, pause and go on.
        self.out(REPORT_PORT, REPORT_GPA)?;
        self.a.cmp(report(SEQ), p.requests)?;
        self.a.jae(done)?;
        self.delay(p.interval_ms)?;
        self.a.jmp(next_request)
    }

    /// Checks the table within the pages offered (`eax`): the entries to
    /// the terminator, each inside the buffer, then the FNV-1a 32 of the
    /// first `table_len` bytes. Falls through to `send_report`, which it
    /// places.
    fn table_check(&mut self, send_report: &mut CodeLabel) -> Result<(), IcedError> {
        let a = &mut self.a;
        let mut walk = a.create_label();
        let mut not_longer = a.create_label();
        let mut terminator = a.create_label();
        let mut header_shorter = a.create_label();
        let mut fnv = a.create_label();
        let mut bad_table = a.create_label();
        // ebx buffer bytes, esi entry offset, edi largest end, ebp entries.
        a.shl(eax, 12)?;
        a.mov(ebx, eax)?;
        a.xor(esi, esi)?;
        a.xor(edi, edi)?;
        a.xor(ebp, ebp)?;
        a.set_label(&mut walk)?;
        a.mov(eax, esi)?;
        a.add(eax, 24u32)?;
        a.cmp(eax, ebx)?;
        a.ja(bad_table)?;
        a.mov(eax, entry(0))?;
        for offset in [4, 8, 12, 16, 20] {
            a.or(eax, entry(offset))?;
        }
        a.jz(terminator)?;
        a.mov(eax, entry(16))?;
        a.add(eax, entry(20))?;
        a.jc(bad_table)?;
        a.cmp(eax, ebx)?;
        a.ja(bad_table)?;
        a.cmp(eax, edi)?;
        a.jbe(not_longer)?;
        a.mov(edi, eax)?;
        a.set_label(&mut not_longer)?;
        a.inc(ebp)?;
        a.add(esi, 24u32)?;
        a.jmp(walk)?;

        a.set_label(&mut terminator)?;
        a.add(esi, 24u32)?;
        a.cmp(esi, edi)?;
        a.jbe(header_shorter)?;
        a.mov(edi, esi)?;
        a.set_label(&mut header_shorter)?;
        a.mov(report(ENTRIES), ebp)?;
        a.mov(report(TABLE_LEN), edi)?;
        a.mov(eax, FNV_OFFSET)?;
        a.mov(ebx, FNV_PRIME)?;
        a.mov(esi, BUFFER)?;
        a.mov(ecx, edi)?;
        a.set_label(&mut fnv)?;
        a.movzx(edx, byte_ptr(rsi))?;
        a.xor(eax, edx)?;
        a.imul_2(eax, ebx)?;
        a.inc(rsi)?;
        a.dec(ecx)?;
        a.jnz(fnv)?;
        a.mov(report(CHECKSUM), eax)?;
        // Status Ok is the 0 the report was cleared with.
        a.jmp(*send_report)?;

        a.set_label(&mut bad_table)?;
        a.mov(report(STATUS), ReportStatus::BadTable as u32)?;
        a.set_label(send_report)
    }

    /// The termination requests, one per reason; none returns (if one
    /// did, it is asked again).
    fn terminations(&mut self) -> Result<(), IcedError> {
        let reasons = [
            (self.term_done, TERM_DONE),
            (self.term_register, TERM_REGISTER),
            (self.term_psc, TERM_PSC),
            (self.term_pvalidate, TERM_PVALIDATE),
            (self.term_ghcb, TERM_GHCB),
        ];
        for (mut label, code) in reasons {
            self.a.set_label(&mut label)?;
            self.msr_exit(termination_request(TERM_SET_GENERAL, code))?;
            self.a.jmp(label)?;
        }
        Ok(())
    }
}
