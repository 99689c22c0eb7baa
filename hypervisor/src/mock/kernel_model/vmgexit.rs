//! The runtime side of the model: what KVM does with an SNP guest's
//! VMGEXITs and with the VMM's answers (`arch/x86/kvm/svm/sev.c`).
//!
//! * `sev_handle_vmgexit`: an MSR-protocol request (low 12 bits of the
//!   GHCB MSR set) goes to `sev_handle_vmgexit_msr_protocol`: GHCB
//!   registration answered in the kernel, a page state change becomes
//!   `KVM_HC_MAP_GPA_RANGE` (`snp_begin_psc_msr`, completed by
//!   `snp_complete_psc_msr`), a termination request the SEV_TERM system
//!   event. Otherwise the MSR holds the GHCB's address, which must be the
//!   registered one, or `KVM_RUN` fails with `EINVAL`.
//! * `sev_es_sync_from_ghcb` reads the fields whose valid bit is set and
//!   clears the bitmap; `sev_es_validate_vmgexit` refuses a GHCB usage
//!   other than 0, missing fields and bad guest-request pages with "bad
//!   input" in `SW_EXITINFO1`/`2`; `sev_es_sync_to_ghcb` writes RAX, RBX,
//!   RCX and RDX back when the guest resumes.
//! * `snp_handle_ext_guest_req`: only a request whose message header says
//!   `SNP_MSG_REPORT_REQ` (byte 0x34 of the request page) looks at RAX
//!   (page-aligned) and RBX; with the exit enabled it becomes exit 43,
//!   else KVM zeroes 24 bytes of the buffer. Every request then goes to
//!   firmware through `sev->fd` (`snp_handle_guest_req`): a closed or
//!   replaced fd fails `KVM_RUN`.
//! * `snp_complete_req_certs`, run at the start of the next `KVM_RUN`
//!   (immediate exit or not, before the `EINTR`): 0 → the firmware call;
//!   `ENOSPC` → RBX = `npages`; `EAGAIN`, `EIO` → their VMM errors; any
//!   other value fails that `KVM_RUN` with `EINVAL`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::errno::Error as Errno;

use super::KernelModel;
use crate::VmExit;
use crate::mock::sev_guest::{PvalidateAnswer, SevCpu};

/// GHCB save-area offsets (`struct ghcb_save_area`, `arch/x86/include/asm/svm.h`).
pub mod ghcb {
    /// RAX.
    pub const RAX: u64 = 0x1f8;
    /// RCX.
    pub const RCX: u64 = 0x308;
    /// RDX.
    pub const RDX: u64 = 0x310;
    /// RBX.
    pub const RBX: u64 = 0x318;
    /// `SW_EXITCODE`.
    pub const SW_EXIT_CODE: u64 = 0x390;
    /// `SW_EXITINFO1`.
    pub const SW_EXIT_INFO_1: u64 = 0x398;
    /// `SW_EXITINFO2`.
    pub const SW_EXIT_INFO_2: u64 = 0x3a0;
    /// The valid bitmap (16 bytes).
    pub const VALID_BITMAP: u64 = 0x3f0;
    /// `ghcb_usage` (`u32`).
    pub const GHCB_USAGE: u64 = 0xffc;

    /// Writes `(offset, value)` fields into the GHCB at `ghcb_gpa` and
    /// marks each valid in the valid bitmap (bit = offset / 8), as a guest
    /// does before a VMGEXIT; the bitmap holds exactly these fields.
    pub fn write_valid_fields(
        mem: &super::GuestMemoryMmap,
        ghcb_gpa: u64,
        fields: &[(u64, u64)],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        use vm_memory::{Bytes, GuestAddress};
        let mut bitmap = [0u64; 2];
        for &(offset, value) in fields {
            mem.write_obj(value, GuestAddress(ghcb_gpa + offset))?;
            let bit = offset / 8;
            bitmap[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        mem.write_obj(bitmap[0], GuestAddress(ghcb_gpa + VALID_BITMAP))?;
        mem.write_obj(bitmap[1], GuestAddress(ghcb_gpa + VALID_BITMAP + 8))
    }
}

/// Exit codes (`arch/x86/include/uapi/asm/svm.h`).
const SVM_EXIT_IOIO: u64 = 0x7b;
const SVM_VMGEXIT_EXT_GUEST_REQUEST: u64 = 0x8000_0012;
const SVM_VMGEXIT_GUEST_REQUEST: u64 = 0x8000_0011;
const SVM_VMGEXIT_TERM_REQUEST: u64 = 0x8000_00fe;
/// `SW_EXITINFO1` answers (`GHCB_HV_RESP_*`) and bad-input reasons
/// (`GHCB_ERR_*`, `arch/x86/include/asm/sev-common.h`).
const HV_RESP_MALFORMED_INPUT: u64 = 2;
const GHCB_ERR_INVALID_USAGE: u64 = 2;
const GHCB_ERR_MISSING_INPUT: u64 = 4;
const GHCB_ERR_INVALID_INPUT: u64 = 5;
const GHCB_ERR_INVALID_EVENT: u64 = 6;
/// MSR protocol (`sev-common.h`).
const MSR_INFO_MASK: u64 = 0xfff;
const MSR_REG_GPA_REQ: u64 = 0x012;
const MSR_REG_GPA_RESP: u64 = 0x013;
const MSR_PSC_REQ: u64 = 0x014;
const MSR_PSC_RESP: u64 = 0x015;
/// `GHCB_MSR_PSC_RESP_ERROR`: the response with a non-zero error.
const MSR_PSC_RESP_ERROR: u64 = (0xf << 32) | MSR_PSC_RESP;
const MSR_TERM_REQ: u64 = 0x100;
/// `SNP_MSG_REPORT_REQ` and the offset of `msg_type` in `struct
/// snp_guest_msg_hdr`.
const SNP_MSG_REPORT_REQ: u8 = 5;
const MSG_TYPE_OFFSET: u64 = 0x34;
/// `SNP_GUEST_VMM_ERR_INVALID_LEN`, `_BUSY` and KVM's generic error.
const VMM_ERR_INVALID_LEN: u64 = 1;
const VMM_ERR_BUSY: u64 = 2;
const VMM_ERR_GENERIC: u64 = 0xffff_ffff;
/// PVALIDATE's `FAIL_INPUT` and `FAIL_SIZEMISMATCH`.
const PVALIDATE_FAIL_INPUT: u32 = 1;
const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;

/// What the GHCB gets when the guest resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GhcbOut {
    gpa: u64,
    info_1: u64,
    info_2: u64,
    regs: [u64; 4],
}

/// The exit waiting for the VMM's answer (`complete_userspace_io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    ReqCerts { req: u64, resp: u64 },
    Io { is_in: bool },
}

/// The VMM's answer to the pending exit, as it left it in `kvm_run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAnswer {
    /// Nothing written (KVM set `ret` to 0 at the exit).
    Nothing,
    /// `kvm_run.snp_req_certs.{ret, npages}`.
    ReqCerts {
        /// `ret`.
        ret: u64,
        /// `npages`.
        npages: u64,
    },
    /// `kvm_run.hypercall.ret`.
    Hypercall(u64),
    /// The data of an `IN`.
    IoIn(Vec<u8>),
}

/// What handling a VMGEXIT led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled in the kernel: the guest runs on.
    Resume,
    /// An exit to the VMM.
    Exit(VmExit),
    /// `KVM_RUN` fails with this errno.
    Error(Errno),
}

/// The kernel's state of one SNP vCPU.
#[derive(Debug, Default)]
pub struct SevVcpuModel {
    /// The state shared with the guest.
    pub cpu: SevCpu,
    /// `ghcb_registered_gpa`.
    registered: Option<u64>,
    pending: Option<(Pending, GhcbOut)>,
    psc_pending: bool,
    out: Option<GhcbOut>,
    /// The guest's CR3 (its PML4), for PVALIDATE's translation.
    pub page_table: u64,
}

fn read_u64(memory: &GuestMemoryMmap, gpa: u64) -> Option<u64> {
    memory.read_obj::<u64>(GuestAddress(gpa)).ok()
}

impl SevVcpuModel {
    /// `sev_es_unmap_ghcb` / `sev_es_sync_to_ghcb`: before the guest runs
    /// again, the GHCB gets its answer.
    pub fn resume(&mut self, memory: &GuestMemoryMmap) {
        let Some(out) = self.out.take() else {
            return;
        };
        let fields = [
            (ghcb::SW_EXIT_INFO_1, out.info_1),
            (ghcb::SW_EXIT_INFO_2, out.info_2),
            (ghcb::RAX, out.regs[0]),
            (ghcb::RBX, out.regs[1]),
            (ghcb::RCX, out.regs[2]),
            (ghcb::RDX, out.regs[3]),
        ];
        for (offset, value) in fields {
            if memory
                .write_obj(value, GuestAddress(out.gpa + offset))
                .is_err()
            {
                log::debug!("model: GHCB at {:#x} cannot be written", out.gpa);
            }
        }
    }

    /// The start of `KVM_RUN`: the pending exit's completion
    /// (`complete_userspace_io`), before any immediate exit.
    pub fn complete(
        &mut self,
        model: &KernelModel,
        memory: &GuestMemoryMmap,
        answer: VmmAnswer,
    ) -> Result<(), Errno> {
        if self.psc_pending {
            self.psc_pending = false;
            // snp_complete_psc_msr.
            let ret = match answer {
                VmmAnswer::Hypercall(ret) => ret,
                _ => 0,
            };
            self.cpu.ghcb_msr = if ret == 0 {
                MSR_PSC_RESP
            } else {
                MSR_PSC_RESP_ERROR
            };
            return Ok(());
        }
        let Some((pending, mut out)) = self.pending.take() else {
            return Ok(());
        };
        match pending {
            Pending::ReqCerts { req, resp } => {
                let (ret, npages) = match answer {
                    VmmAnswer::ReqCerts { ret, npages } => (ret, npages),
                    _ => (0, 0),
                };
                // snp_complete_req_certs.
                match ret {
                    0 => {
                        self.out = Some(out);
                        return self.guest_request(model, memory, req, resp);
                    }
                    r if r == libc::ENOSPC as u64 => {
                        out.regs[1] = npages;
                        out.info_2 = VMM_ERR_INVALID_LEN << 32;
                    }
                    r if r == libc::EAGAIN as u64 => out.info_2 = VMM_ERR_BUSY << 32,
                    r if r == libc::EIO as u64 => out.info_2 = VMM_ERR_GENERIC << 32,
                    _ => {
                        // The exit stays pending: KVM_RUN fails each time.
                        self.pending = Some((pending, out));
                        return Err(Errno::new(libc::EINVAL));
                    }
                }
            }
            Pending::Io { is_in } => {
                if let (true, VmmAnswer::IoIn(data)) = (is_in, answer) {
                    let mut bytes = [0u8; 8];
                    let n = data.len().min(8);
                    bytes[..n].copy_from_slice(&data[..n]);
                    out.regs[0] = u64::from_le_bytes(bytes);
                }
            }
        }
        self.out = Some(out);
        Ok(())
    }

    /// `sev_handle_vmgexit`.
    pub fn vmgexit(&mut self, model: &KernelModel, memory: &GuestMemoryMmap) -> Outcome {
        let msr = self.cpu.ghcb_msr;
        if msr & MSR_INFO_MASK != 0 {
            return self.msr_protocol(model, msr);
        }
        if msr == 0 {
            // "Without a GHCB, just return right back to the guest".
            return Outcome::Resume;
        }
        let mut page = vec![0u8; 4096];
        if memory.read_slice(&mut page, GuestAddress(msr)).is_err() {
            return Outcome::Resume;
        }
        let field = |o: u64| {
            let o = o as usize;
            u64::from_le_bytes(page[o..o + 8].try_into().unwrap_or([0; 8]))
        };
        let low = field(ghcb::VALID_BITMAP);
        let high = field(ghcb::VALID_BITMAP + 8);
        let valid = |o: u64| {
            let bit = o / 8;
            if bit < 64 {
                low & (1 << bit) != 0
            } else {
                high & (1 << (bit - 64)) != 0
            }
        };
        let get = |o: u64| if valid(o) { field(o) } else { 0 };
        // sev_es_sync_from_ghcb: registers and exit information, then the
        // bitmap is cleared.
        let regs = [
            get(ghcb::RAX),
            get(ghcb::RBX),
            get(ghcb::RCX),
            get(ghcb::RDX),
        ];
        let exit_code = field(ghcb::SW_EXIT_CODE);
        let info_1 = field(ghcb::SW_EXIT_INFO_1);
        let info_2 = field(ghcb::SW_EXIT_INFO_2);
        let usage = u32::from_le_bytes(page[0xffc..0x1000].try_into().unwrap_or([0; 4]));
        if memory
            .write_slice(&[0u8; 16], GuestAddress(msr + ghcb::VALID_BITMAP))
            .is_err()
        {
            return Outcome::Resume;
        }
        if self.registered != Some(msr) {
            // "SEV-SNP guest requires that the GHCB GPA must be registered".
            return Outcome::Error(Errno::new(libc::EINVAL));
        }
        let mut out = GhcbOut {
            gpa: msr,
            info_1: 0,
            info_2: 0,
            regs,
        };
        let bad = |out: &mut GhcbOut, reason| {
            out.info_1 = HV_RESP_MALFORMED_INPUT;
            out.info_2 = reason;
        };
        // sev_es_validate_vmgexit.
        if usage != 0 {
            bad(&mut out, GHCB_ERR_INVALID_USAGE);
        } else if !valid(ghcb::SW_EXIT_CODE)
            || !valid(ghcb::SW_EXIT_INFO_1)
            || !valid(ghcb::SW_EXIT_INFO_2)
        {
            bad(&mut out, GHCB_ERR_MISSING_INPUT);
        } else {
            match exit_code {
                SVM_EXIT_IOIO => {
                    let is_in = info_1 & 1 != 0;
                    if info_1 & (1 << 2) != 0 || (!is_in && !valid(ghcb::RAX)) {
                        bad(&mut out, GHCB_ERR_MISSING_INPUT);
                    } else {
                        return self.ioio(out, info_1, is_in);
                    }
                }
                SVM_VMGEXIT_GUEST_REQUEST | SVM_VMGEXIT_EXT_GUEST_REQUEST => {
                    if info_1 % 4096 != 0 || info_2 % 4096 != 0 || info_1 == info_2 {
                        bad(&mut out, GHCB_ERR_MISSING_INPUT);
                    } else if exit_code == SVM_VMGEXIT_GUEST_REQUEST {
                        self.out = Some(out);
                        return self.request_outcome(model, memory, info_1, info_2);
                    } else {
                        return self.ext_guest_request(
                            model,
                            memory,
                            out,
                            valid(ghcb::RAX) && valid(ghcb::RBX),
                            info_1,
                            info_2,
                        );
                    }
                }
                SVM_VMGEXIT_TERM_REQUEST => {
                    return Outcome::Exit(VmExit::Terminated {
                        reason_set: (info_1 & 0xf) as u8,
                        reason_code: ((info_1 >> 8) & 0xff) as u8,
                    });
                }
                other => {
                    log::debug!("model: GHCB exit {other:#x} is not modelled");
                    bad(&mut out, GHCB_ERR_INVALID_EVENT);
                }
            }
        }
        self.out = Some(out);
        Outcome::Resume
    }

    /// `sev_handle_vmgexit_msr_protocol`.
    fn msr_protocol(&mut self, model: &KernelModel, msr: u64) -> Outcome {
        match msr & MSR_INFO_MASK {
            MSR_REG_GPA_REQ => {
                let gfn = msr >> 12;
                self.registered = Some(gfn << 12);
                self.cpu.ghcb_msr = (gfn << 12) | MSR_REG_GPA_RESP;
                Outcome::Resume
            }
            MSR_PSC_REQ => {
                // snp_begin_psc_msr.
                let gpa = ((msr >> 12) & ((1 << 40) - 1)) << 12;
                let op = (msr >> 52) & 0xf;
                if !(op == 1 || op == 2) || !model.exit_map_gpa_range {
                    self.cpu.ghcb_msr = MSR_PSC_RESP_ERROR;
                    return Outcome::Resume;
                }
                self.psc_pending = true;
                Outcome::Exit(VmExit::MapGpaRange {
                    gpa,
                    npages: 1,
                    private: op == 1,
                })
            }
            MSR_TERM_REQ => Outcome::Exit(VmExit::Terminated {
                reason_set: ((msr >> 12) & 0xf) as u8,
                reason_code: ((msr >> 16) & 0xff) as u8,
            }),
            // "Error, keep GHCB MSR value as-is".
            _ => Outcome::Resume,
        }
    }

    fn ioio(&mut self, out: GhcbOut, info_1: u64, is_in: bool) -> Outcome {
        let port = (info_1 >> 16) as u16;
        let size: u8 = if info_1 & (1 << 6) != 0 {
            4
        } else if info_1 & (1 << 5) != 0 {
            2
        } else {
            1
        };
        self.pending = Some((Pending::Io { is_in }, out));
        Outcome::Exit(if is_in {
            VmExit::IoIn { port, size }
        } else {
            VmExit::IoOut {
                port,
                data: crate::PioData::from_slice(&out.regs[0].to_le_bytes()[..usize::from(size)]),
            }
        })
    }

    /// `snp_handle_ext_guest_req`.
    fn ext_guest_request(
        &mut self,
        model: &KernelModel,
        memory: &GuestMemoryMmap,
        mut out: GhcbOut,
        rax_rbx_valid: bool,
        req: u64,
        resp: u64,
    ) -> Outcome {
        let Ok(msg_type) = memory.read_obj::<u8>(GuestAddress(req + MSG_TYPE_OFFSET)) else {
            return Outcome::Error(Errno::new(libc::EIO));
        };
        if msg_type == SNP_MSG_REPORT_REQ {
            let (data_gpa, data_npages) = (out.regs[0], out.regs[1]);
            if !rax_rbx_valid || data_gpa % 4096 != 0 {
                out.info_1 = HV_RESP_MALFORMED_INPUT;
                out.info_2 = GHCB_ERR_INVALID_INPUT;
                self.out = Some(out);
                return Outcome::Resume;
            }
            if model.certs_enabled {
                self.pending = Some((Pending::ReqCerts { req, resp }, out));
                return Outcome::Exit(VmExit::SnpReqCerts(crate::SnpCertsRequest {
                    gpa: data_gpa,
                    npages: data_npages,
                }));
            }
            if data_npages != 0
                && memory
                    .write_slice(&[0u8; 24], GuestAddress(data_gpa))
                    .is_err()
            {
                return Outcome::Error(Errno::new(libc::EIO));
            }
        }
        self.out = Some(out);
        self.request_outcome(model, memory, req, resp)
    }

    fn request_outcome(
        &mut self,
        model: &KernelModel,
        memory: &GuestMemoryMmap,
        req: u64,
        resp: u64,
    ) -> Outcome {
        match self.guest_request(model, memory, req, resp) {
            Ok(()) => Outcome::Resume,
            Err(e) => Outcome::Error(e),
        }
    }

    /// `snp_handle_guest_req`: the request page to firmware through
    /// `sev->fd`, the response page back, the firmware's status in
    /// `SW_EXITINFO2`.
    fn guest_request(
        &mut self,
        model: &KernelModel,
        memory: &GuestMemoryMmap,
        req: u64,
        resp: u64,
    ) -> Result<(), Errno> {
        let mut page = vec![0u8; 4096];
        memory
            .read_slice(&mut page, GuestAddress(req))
            .map_err(|_| Errno::new(libc::EIO))?;
        let fd = model.launch_fd.ok_or(Errno::new(libc::EBADF))?;
        model.device.check(fd)?;
        let fw_error = model.config.guest_request_fw_error;
        memory
            .write_slice(&[0u8; 4096], GuestAddress(resp))
            .map_err(|_| Errno::new(libc::EIO))?;
        if let Some(out) = &mut self.out {
            // svm_vmgexit_no_action writes the mapped GHCB at once.
            out.info_1 = 0;
            out.info_2 = u64::from(fw_error);
            memory
                .write_obj(0u64, GuestAddress(out.gpa + ghcb::SW_EXIT_INFO_1))
                .and_then(|()| {
                    memory.write_obj(out.info_2, GuestAddress(out.gpa + ghcb::SW_EXIT_INFO_2))
                })
                .map_err(|_| Errno::new(libc::EIO))?;
        }
        Ok(())
    }

    /// PVALIDATE (AMD APM vol. 3): the virtual address translated through
    /// the guest's page tables, which must map it private (C-bit set);
    /// the page must be private and of the asked size; CF when the
    /// validation state does not change.
    pub fn pvalidate(
        &self,
        model: &mut KernelModel,
        memory: &GuestMemoryMmap,
        vaddr: u64,
        huge: bool,
        validate: bool,
    ) -> PvalidateAnswer {
        let fail = |eax| PvalidateAnswer {
            eax,
            no_update: false,
        };
        let Some((gpa, private, leaf_huge)) =
            translate(memory, self.page_table, vaddr, model.config.c_bit)
        else {
            return fail(PVALIDATE_FAIL_INPUT);
        };
        if huge && !leaf_huge {
            return fail(PVALIDATE_FAIL_SIZEMISMATCH);
        }
        let frame = gpa >> 12;
        if !private || !model.private.contains(&frame) {
            return fail(PVALIDATE_FAIL_INPUT);
        }
        let changed = if validate {
            model.validated.insert(frame)
        } else {
            model.validated.remove(&frame)
        };
        PvalidateAnswer {
            eax: 0,
            no_update: !changed,
        }
    }
}

/// A four-level walk of `vaddr` from the PML4 at `cr3`: the physical
/// address, whether the leaf maps it private (its C-bit), and whether the
/// leaf is a 2 MiB page.
fn translate(
    memory: &GuestMemoryMmap,
    cr3: u64,
    vaddr: u64,
    c_bit: u8,
) -> Option<(u64, bool, bool)> {
    let c = 1u64.checked_shl(u32::from(c_bit))?;
    let addr_mask = (c - 1) & !0xfff;
    let mut table = cr3 & addr_mask;
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let entry = read_u64(memory, table + ((vaddr >> shift) & 511) * 8)?;
        if entry & 1 == 0 {
            return None;
        }
        let large = level == 2 && entry & (1 << 7) != 0;
        if level == 3 || large {
            let page_mask = (1u64 << shift) - 1;
            let base = entry & addr_mask & !page_mask;
            return Some((base | (vaddr & page_mask), entry & c != 0, large));
        }
        table = entry & addr_mask;
    }
    None
}
