//! The attestation guest as 16-bit real-mode machine code.
//!
//! An independent implementation of the algorithm that
//! [`super::AttestMachine`] describes, assembled with iced-x86's code
//! assembler. Conventions:
//!
//! * Real mode, every segment base 0 (`cs = ds = es = 0`, set again on
//!   entry). All data lies below 64 KiB, so plain 16-bit offsets reach it;
//!   32-bit registers and `out dx, eax` come with operand-size prefixes.
//! * No stack, no calls, interrupts off (`cli`), direction flag clear.
//! * The request in progress lives in the report itself: `seq`, `npages`
//!   (the pages asked for) and `busy_retries` are updated in place, the
//!   other fields are zero until the request ends. So each request starts
//!   by clearing the report but `seq`.
//! * Parameters are immediates; a zero pause is left out at assembly time.
//! * Registers in the table check: `ebx` buffer size, `si` header length
//!   so far (offset of the entry), `edi` largest `offset + length`, `ebp`
//!   entry count. In the checksum: `eax` hash, `ebx` FNV prime, `si` byte
//!   pointer, `ecx` bytes left.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::layout::{
    BUFFER_FILL, BUFFER_GPA, BUFFER_PAGES, BUFFER_SIZE, CODE_GPA, CODE_MAX_SIZE, MAILBOX_GPA,
    REPORT_GPA, RET_UNANSWERED,
};
use super::{AttestParams, GuestError};
use vmm::doorbell::{DOORBELL_PORT, MAILBOX_GPA as MB_GPA, MAILBOX_NPAGES, MAILBOX_RET};

use crate::report::{DELAY_PORT, FNV_OFFSET, FNV_PRIME, REPORT_PORT, ReportStatus};

/// Report fields, as indexes of its eight `u32`s.
const SEQ: u32 = 0;
const RET: u32 = 1;
const NPAGES: u32 = 2;
const BUSY_RETRIES: u32 = 3;
const ENTRIES: u32 = 4;
const TABLE_LEN: u32 = 5;
const CHECKSUM: u32 = 6;
const STATUS: u32 = 7;

/// `ret` values (`libc` errno numbers, as KVM passes them).
const ENOSPC: u32 = libc::ENOSPC as u32;
const EAGAIN: u32 = libc::EAGAIN as u32;

/// All addresses fit in 16 bits (checked in `layout`).
const BUFFER: u32 = BUFFER_GPA as u32;

/// Four fill bytes, for `rep stosd`.
const FILL: u32 = u32::from_ne_bytes([BUFFER_FILL; 4]);
/// [`RET_UNANSWERED`] as low and high dwords.
const UNANSWERED: [u32; 2] = [RET_UNANSWERED as u32, (RET_UNANSWERED >> 32) as u32];

/// A report field.
fn report(field: u32) -> AsmMemoryOperand {
    dword_ptr(REPORT_GPA as u32 + 4 * field)
}

/// A dword of the mailbox: `offset` is a field offset (+4 for its high
/// half).
fn mailbox(offset: u64) -> AsmMemoryOperand {
    dword_ptr((MAILBOX_GPA + offset) as u32)
}

/// A dword of the table entry at `si`.
fn entry(offset: u32) -> AsmMemoryOperand {
    dword_ptr(si + (BUFFER + offset))
}

/// Assembles the guest for `params`, to be loaded at [`CODE_GPA`].
pub fn program(params: &AttestParams) -> Result<Vec<u8>, GuestError> {
    let code = assemble(params).map_err(GuestError::Assemble)?;
    if code.len() > CODE_MAX_SIZE {
        return Err(GuestError::ProgramTooLarge {
            size: code.len(),
            max: CODE_MAX_SIZE,
        });
    }
    Ok(code)
}

/// `out DELAY_PORT, ms`, left out for a zero pause.
fn delay(a: &mut CodeAssembler, ms: u32) -> Result<(), IcedError> {
    if ms > 0 {
        a.mov(dx, DELAY_PORT as u32)?;
        a.mov(eax, ms)?;
        a.out(dx, eax)?;
    }
    Ok(())
}

fn assemble(p: &AttestParams) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    let mut next_request = a.create_label();
    let mut ring = a.create_label();
    let mut filled = a.create_label();
    let mut got_ok = a.create_label();
    let mut got_busy = a.create_label();
    let mut got_enospc = a.create_label();
    let mut too_big = a.create_label();
    let mut too_big_huge = a.create_label();
    let mut failed = a.create_label();
    let mut gave_up = a.create_label();
    let mut check_table = a.create_label();
    let mut walk = a.create_label();
    let mut not_longer = a.create_label();
    let mut terminator = a.create_label();
    let mut header_shorter = a.create_label();
    let mut fnv = a.create_label();
    let mut bad_table = a.create_label();
    let mut send_report = a.create_label();
    let mut halt = a.create_label();

    // Flat real mode whatever the loader left in the data segments.
    a.cli()?;
    a.cld()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(report(SEQ), 0u32)?;

    // A new request: stop after the last one, else bump `seq` and clear
    // the other seven fields (npages 0: the size query).
    a.set_label(&mut next_request)?;
    a.mov(eax, report(SEQ))?;
    a.cmp(eax, p.requests)?;
    a.jae(halt)?;
    a.inc(eax)?;
    a.mov(report(SEQ), eax)?;
    a.xor(eax, eax)?;
    a.mov(di, REPORT_GPA as u32 + 4)?;
    a.mov(cx, 7u32)?;
    a.rep().stosd()?;

    // Ring with the current npages. With npages > 0 first fill the whole
    // buffer with BUFFER_FILL, so a table that never arrives is noticed.
    a.set_label(&mut ring)?;
    a.mov(eax, report(NPAGES))?;
    a.test(eax, eax)?;
    a.jz(filled)?;
    a.mov(di, BUFFER)?;
    a.mov(cx, (BUFFER_SIZE / 4) as u32)?;
    a.mov(eax, FILL)?;
    a.rep().stosd()?;
    a.set_label(&mut filled)?;
    // Mailbox {gpa: BUFFER_GPA, npages, ret: RET_UNANSWERED}, as LE dwords.
    a.mov(mailbox(MB_GPA), BUFFER)?;
    a.mov(mailbox(MB_GPA + 4), 0u32)?;
    a.mov(eax, report(NPAGES))?;
    a.mov(mailbox(MAILBOX_NPAGES), eax)?;
    a.mov(mailbox(MAILBOX_NPAGES + 4), 0u32)?;
    a.mov(mailbox(MAILBOX_RET), UNANSWERED[0])?;
    a.mov(mailbox(MAILBOX_RET + 4), UNANSWERED[1])?;
    a.mov(dx, DOORBELL_PORT as u32)?;
    a.mov(eax, MAILBOX_GPA as u32)?;
    a.out(dx, eax)?;

    // The answer is in the mailbox now. Keep the low half of ret; a set
    // high half is no value KVM knows: failed.
    a.mov(eax, mailbox(MAILBOX_RET))?;
    a.mov(report(RET), eax)?;
    a.cmp(mailbox(MAILBOX_RET + 4), 0u32)?;
    a.jne(failed)?;
    a.test(eax, eax)?;
    a.jz(got_ok)?;
    a.cmp(eax, EAGAIN)?;
    a.je(got_busy)?;
    a.cmp(eax, ENOSPC)?;
    a.je(got_enospc)?;
    a.jmp(failed)?;

    // Busy: give up once the budget is spent, else count, pause, ring again.
    a.set_label(&mut got_busy)?;
    a.mov(eax, report(BUSY_RETRIES))?;
    a.cmp(eax, p.max_busy_retries)?;
    a.jae(gave_up)?;
    a.inc(eax)?;
    a.mov(report(BUSY_RETRIES), eax)?;
    delay(&mut a, p.retry_ms)?;
    a.jmp(ring)?;

    // ENOSPC with the pages needed (u64): more than the buffer -> too big
    // (reporting the count, saturated to u32); no more than asked -> the
    // VMM contradicts itself: failed; else ask again with that count.
    a.set_label(&mut got_enospc)?;
    a.cmp(mailbox(MAILBOX_NPAGES + 4), 0u32)?;
    a.jne(too_big_huge)?;
    a.mov(eax, mailbox(MAILBOX_NPAGES))?;
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

    // ret 0. To the size query it means "no table": ask with one page.
    a.set_label(&mut got_ok)?;
    a.mov(eax, report(NPAGES))?;
    a.test(eax, eax)?;
    a.jnz(check_table)?;
    a.mov(report(NPAGES), 1u32)?;
    a.jmp(ring)?;

    // Walk the entries within the pages offered (ebx bytes).
    a.set_label(&mut check_table)?;
    a.shl(eax, 12)?;
    a.mov(ebx, eax)?;
    a.xor(esi, esi)?;
    a.xor(edi, edi)?;
    a.xor(ebp, ebp)?;
    a.set_label(&mut walk)?;
    // The whole entry must lie inside the buffer.
    a.mov(eax, esi)?;
    a.add(eax, 24u32)?;
    a.cmp(eax, ebx)?;
    a.ja(bad_table)?;
    // All 24 bytes zero: the terminator.
    a.mov(eax, entry(0))?;
    for offset in [4, 8, 12, 16, 20] {
        a.or(eax, entry(offset))?;
    }
    a.jz(terminator)?;
    // end = offset + length: no carry and within the buffer.
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

    // table_len = max(header length, largest end); store the counts.
    a.set_label(&mut terminator)?;
    a.add(esi, 24u32)?;
    a.cmp(esi, edi)?;
    a.jbe(header_shorter)?;
    a.mov(edi, esi)?;
    a.set_label(&mut header_shorter)?;
    a.mov(report(ENTRIES), ebp)?;
    a.mov(report(TABLE_LEN), edi)?;

    // FNV-1a 32 over the first table_len (>= 24) bytes of the buffer.
    a.mov(eax, FNV_OFFSET)?;
    a.mov(ebx, FNV_PRIME)?;
    a.mov(si, BUFFER)?;
    a.mov(ecx, edi)?;
    a.set_label(&mut fnv)?;
    a.movzx(edx, byte_ptr(si))?;
    a.xor(eax, edx)?;
    a.imul_2(eax, ebx)?;
    a.inc(si)?;
    a.dec(ecx)?;
    a.jnz(fnv)?;
    a.mov(report(CHECKSUM), eax)?;
    // Status Ok is the 0 the report was cleared with.
    a.jmp(send_report)?;

    a.set_label(&mut bad_table)?;
    a.mov(report(STATUS), ReportStatus::BadTable as u32)?;

    // Announce the report; unless that was the last request, pause and go
    // on with the next.
    a.set_label(&mut send_report)?;
    a.mov(dx, REPORT_PORT as u32)?;
    a.mov(eax, REPORT_GPA as u32)?;
    a.out(dx, eax)?;
    a.cmp(report(SEQ), p.requests)?;
    a.jae(halt)?;
    delay(&mut a, p.interval_ms)?;
    a.jmp(next_request)?;

    // Done: stay halted even if woken.
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;

    a.assemble(CODE_GPA)
}
