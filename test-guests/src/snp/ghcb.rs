//! The GHCB protocol as the SNP guest speaks it: the MSR protocol
//! requests, the GHCB fields it fills, and what the results mean.
//!
//! # The MSR protocol
//!
//! The guest writes a request into the GHCB MSR ([`GHCB_MSR`]) and exits
//! with VMGEXIT (`rep vmmcall`, `f3 0f 01 d9`); the hypervisor answers in
//! the same MSR. Bits 11:0 say what the value is, the rest is data (GHCB
//! specification, AMD pub. 56421, "GHCB MSR Protocol"; Linux
//! `arch/x86/include/asm/sev-common.h`):
//!
//! * GHCB GPA registration: request [`REG_GPA_REQ`] with the GHCB's frame
//!   number in bits 63:12, answered [`REG_GPA_RESP`] with the same frame
//!   number ([`register_request`], [`register_response`]). KVM handles it
//!   in the kernel: the VMM sees no exit.
//! * SNP page state change: request [`PSC_REQ`] with the frame number in
//!   bits 51:12 and the operation in bits 55:52 ([`PSC_OP_SHARED`]),
//!   answered [`PSC_RESP`] with an error code in bits 63:32, 0 on success
//!   ([`psc_request`]). KVM turns each into one `KVM_HC_MAP_GPA_RANGE`
//!   exit to the VMM ([`hypervisor::VmExit::MapGpaRange`]).
//! * Termination: [`TERM_REQ`] with the reason set in bits 15:12 and the
//!   reason code in bits 23:16 ([`termination_request`]). KVM stops the
//!   vCPU with `KVM_SYSTEM_EVENT_SEV_TERM`
//!   ([`hypervisor::VmExit::Terminated`]); nothing returns.
//!
//! # Exits through the GHCB
//!
//! For everything else the guest fills the GHCB (its shared page, once
//! registered), sets the valid bitmap bit of each field it filled (bit =
//! field offset / 8), puts the GHCB's GPA in the MSR and exits. The
//! offsets ([`RAX`], [`RBX`], [`SW_EXIT_CODE`], [`SW_EXIT_INFO_1`],
//! [`SW_EXIT_INFO_2`], [`VALID_BITMAP`], [`PROTOCOL_VERSION`],
//! [`GHCB_USAGE`]) are those of the GHCB specification's save area (Linux
//! `struct ghcb_save_area`, `struct ghcb` in `arch/x86/include/asm/svm.h`).
//! The low 32 bits of `SW_EXITINFO1` are 0 after a successful exit.
//!
//! * The extended guest request ([`EXT_GUEST_REQUEST`], `0x8000_0012`):
//!   `SW_EXITINFO1` the request message page (its header written first:
//!   [`msg`], VMPCK 0, `msg_type` 5, the attestation report request; the
//!   body is not encrypted, so firmware refuses the message after the
//!   certificate exit), `SW_EXITINFO2` the response
//!   page, RAX the certificate buffer, RBX its pages. The result comes back
//!   in `SW_EXITINFO2` ([`decode_ext_result`]): the upper 32 bits are the
//!   hypervisor's error (1: the buffer is too small, RBX holds the pages
//!   needed; 2: busy, retry later; `0xffff_ffff`: failed), the lower 32 the
//!   firmware's (Linux `SNP_GUEST_ERR()`, `SNP_GUEST_VMM_ERR_*` in
//!   `include/uapi/linux/sev-guest.h`). KVM asks the VMM for the
//!   certificates first (`KVM_EXIT_SNP_REQ_CERTS`) and maps its answer
//!   onto these ([`kvm_exit_info_2`]).
//! * Port I/O ([`IOIO`], `0x7b`): `SW_EXITINFO1` encodes the access
//!   ([`ioio_out`]: port in bits 31:16, bit 0 clear for OUT, operand size
//!   and address size bits as the CPU reports them on an intercept; AMD APM
//!   vol. 2 "IOIO Intercepts", Linux `vc_ioio_exitinfo`), RAX holds the
//!   value written.

use hypervisor::SnpCertsCompletion;

/// The GHCB MSR (`MSR_AMD64_SEV_ES_GHCB`, Linux `msr-index.h`).
pub const GHCB_MSR: u32 = 0xc001_0130;

/// MSR protocol: GHCB GPA registration request.
pub const REG_GPA_REQ: u64 = 0x012;
/// MSR protocol: GHCB GPA registration response.
pub const REG_GPA_RESP: u64 = 0x013;
/// MSR protocol: SNP page state change request.
pub const PSC_REQ: u64 = 0x014;
/// MSR protocol: SNP page state change response.
pub const PSC_RESP: u64 = 0x015;
/// MSR protocol: termination request.
pub const TERM_REQ: u64 = 0x100;
/// Page state change operation: make the page shared
/// (`SNP_PAGE_STATE_SHARED`).
pub const PSC_OP_SHARED: u64 = 2;
/// The bits of an MSR protocol value that say what it is.
pub const INFO_MASK: u64 = 0xfff;

/// GHCB save area offsets (bytes from the GHCB's start).
pub const RAX: u64 = 0x1f8;
/// RBX.
pub const RBX: u64 = 0x318;
/// `SW_EXITCODE`.
pub const SW_EXIT_CODE: u64 = 0x390;
/// `SW_EXITINFO1`.
pub const SW_EXIT_INFO_1: u64 = 0x398;
/// `SW_EXITINFO2`.
pub const SW_EXIT_INFO_2: u64 = 0x3a0;
/// The 16-byte valid bitmap.
pub const VALID_BITMAP: u64 = 0x3f0;
/// The protocol version (`u16`).
pub const PROTOCOL_VERSION: u64 = 0xffa;
/// The GHCB usage (`u32`, 0: the standard layout).
pub const GHCB_USAGE: u64 = 0xffc;

/// The GHCB protocol version the guest writes: 2, the first with SNP
/// (GHCB specification; KVM's SNP VMs use version 2 unless the VMM asks
/// otherwise at `KVM_SEV_INIT2`). The guest does not negotiate it.
pub const GHCB_VERSION: u16 = 2;

/// Exit code of the extended guest request (`SVM_VMGEXIT_EXT_GUEST_REQUEST`,
/// Linux `arch/x86/include/uapi/asm/svm.h`).
pub const EXT_GUEST_REQUEST: u64 = 0x8000_0012;
/// Exit code of port I/O (`SVM_EXIT_IOIO`).
pub const IOIO: u64 = 0x7b;
/// IOIO `SW_EXITINFO1`: 32-bit operand (`IOIO_DATA_32`).
pub const IOIO_DATA_32: u64 = 1 << 6;
/// IOIO `SW_EXITINFO1`: 64-bit address size (`IOIO_ADDR_64`).
pub const IOIO_ADDR_64: u64 = 1 << 9;

/// `SW_EXITINFO2` upper half: the buffer is too small
/// (`SNP_GUEST_VMM_ERR_INVALID_LEN`).
pub const VMM_ERR_INVALID_LEN: u32 = 1;
/// `SW_EXITINFO2` upper half: busy (`SNP_GUEST_VMM_ERR_BUSY`).
pub const VMM_ERR_BUSY: u32 = 2;
/// `SW_EXITINFO2` upper half: failed (`SNP_GUEST_VMM_ERR_GENERIC`).
pub const VMM_ERR_GENERIC: u32 = 0xffff_ffff;

/// Termination reason set 0: the GHCB specification's general set.
pub const TERM_SET_GENERAL: u8 = 0;
/// Reason codes of this guest, in set 0. Codes 0 to 2 of set 0 are the
/// specification's own (general request, protocol unsupported, SNP
/// unsupported); this guest's start at 0x80 to stay clear of them.
///
/// All requests done and reported: the normal end.
pub const TERM_DONE: u8 = 0x80;
/// The GHCB GPA registration was refused.
pub const TERM_REGISTER: u8 = 0x81;
/// A page state change failed.
pub const TERM_PSC: u8 = 0x82;
/// PVALIDATE failed (or changed nothing).
pub const TERM_PVALIDATE: u8 = 0x83;
/// A GHCB exit came back with an error in `SW_EXITINFO1`.
pub const TERM_GHCB: u8 = 0x84;

/// The guest request message header (`struct snp_guest_msg_hdr`, Linux
/// `arch/x86/include/asm/sev.h`), at the start of the request page: KVM
/// reads `msg_type` at [`MSG_TYPE_OFFSET`] to decide whether the request
/// asks for an attestation report, the only kind that brings the
/// certificate exit (`snp_handle_ext_guest_req`).
pub mod msg {
    /// `msg_seqno` (`u64`).
    pub const SEQNO_OFFSET: u64 = 0x20;
    /// `algo`, `hdr_version`, `hdr_sz` (`u8`, `u8`, `u16`).
    pub const ALGO_OFFSET: u64 = 0x30;
    /// `msg_type`, `msg_version`, `msg_sz` (`u8`, `u8`, `u16`).
    pub const MSG_TYPE_OFFSET: u64 = 0x34;
    /// `msg_vmpck` (`u8`).
    pub const VMPCK_OFFSET: u64 = 0x3c;
    /// `SNP_AEAD_AES_256_GCM`.
    pub const ALGO_AES_256_GCM: u8 = 1;
    /// `MSG_HDR_VER`.
    pub const HDR_VERSION: u8 = 1;
    /// `sizeof(struct snp_guest_msg_hdr)`.
    pub const HDR_SIZE: u16 = 0x60;
    /// `SNP_MSG_REPORT_REQ`.
    pub const MSG_REPORT_REQ: u8 = 5;
    /// The report request's message version.
    pub const MSG_VERSION: u8 = 1;
    /// `sizeof(struct snp_report_req)`: user data (64), VMPL (4),
    /// reserved (28).
    pub const REPORT_REQ_SIZE: u16 = 96;
    /// The `u32` at [`ALGO_OFFSET`]: algorithm, header version and size.
    pub const ALGO_WORD: u32 = u32::from_le_bytes([
        ALGO_AES_256_GCM,
        HDR_VERSION,
        HDR_SIZE.to_le_bytes()[0],
        HDR_SIZE.to_le_bytes()[1],
    ]);
    /// The `u32` at [`MSG_TYPE_OFFSET`]: type, version and size.
    pub const MSG_TYPE_WORD: u32 = u32::from_le_bytes([
        MSG_REPORT_REQ,
        MSG_VERSION,
        REPORT_REQ_SIZE.to_le_bytes()[0],
        REPORT_REQ_SIZE.to_le_bytes()[1],
    ]);
}

/// The valid-bitmap bit of the field at `offset`.
pub const fn valid_bit(offset: u64) -> u128 {
    1 << (offset / 8)
}

/// The valid bitmap for the fields at `offsets`, as its low and high
/// 64-bit halves (stored at [`VALID_BITMAP`] and 8 bytes on).
pub fn valid_bitmap(offsets: &[u64]) -> (u64, u64) {
    let bits = offsets.iter().fold(0u128, |b, &o| b | valid_bit(o));
    (bits as u64, (bits >> 64) as u64)
}

/// The MSR value registering the GHCB at `gpa`.
pub const fn register_request(gpa: u64) -> u64 {
    ((gpa >> 12) << 12) | REG_GPA_REQ
}

/// The MSR value the hypervisor answers a registration of `gpa` with.
pub const fn register_response(gpa: u64) -> u64 {
    ((gpa >> 12) << 12) | REG_GPA_RESP
}

/// The MSR value asking to make the page at `gpa` shared.
pub const fn psc_request(gpa: u64) -> u64 {
    (PSC_OP_SHARED << 52) | (((gpa >> 12) & ((1 << 40) - 1)) << 12) | PSC_REQ
}

/// The MSR value asking to be terminated.
pub const fn termination_request(reason_set: u8, reason_code: u8) -> u64 {
    ((reason_code as u64) << 16) | (((reason_set & 0xf) as u64) << 12) | TERM_REQ
}

/// `SW_EXITINFO1` of a 32-bit `OUT` to `port` in 64-bit code.
pub const fn ioio_out(port: u16) -> u64 {
    ((port as u64) << 16) | IOIO_DATA_32 | IOIO_ADDR_64
}

/// What the guest makes of `SW_EXITINFO2` after an extended guest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtResult {
    /// The result as the errno KVM was given, the way the real-mode guest
    /// sees it in its mailbox: 0, `ENOSPC`, `EAGAIN`, `EIO`; any other
    /// hypervisor error as `1 << 32 | error` (which the decisions treat as
    /// "other" and report with its low 32 bits, the error).
    pub ret: u64,
    /// The firmware's error when the hypervisor passed the request on
    /// (upper half 0), else 0.
    pub fw_error: u32,
}

/// Decodes `SW_EXITINFO2` after an extended guest request.
pub fn decode_ext_result(exit_info_2: u64) -> ExtResult {
    let vmm = (exit_info_2 >> 32) as u32;
    let ret = match vmm {
        0 => 0,
        VMM_ERR_INVALID_LEN => libc::ENOSPC as u64,
        VMM_ERR_BUSY => libc::EAGAIN as u64,
        VMM_ERR_GENERIC => libc::EIO as u64,
        other => (1 << 32) | u64::from(other),
    };
    let fw_error = if vmm == 0 { exit_info_2 as u32 } else { 0 };
    ExtResult { ret, fw_error }
}

/// What KVM puts in `SW_EXITINFO2` for the VMM's `completion` of a
/// certificate request (`None`: the VMM never answered, and KVM goes on as
/// for 0), when the firmware then answers the passed-on request with
/// `firmware_error` (Linux `snp_complete_req_certs`).
pub fn kvm_exit_info_2(completion: Option<SnpCertsCompletion>, firmware_error: u32) -> u64 {
    let vmm = match completion.map(|c| c.ret) {
        None | Some(SnpCertsCompletion::RET_OK) => return u64::from(firmware_error),
        Some(SnpCertsCompletion::RET_ENOSPC) => VMM_ERR_INVALID_LEN,
        Some(SnpCertsCompletion::RET_EAGAIN) => VMM_ERR_BUSY,
        Some(_) => VMM_ERR_GENERIC,
    };
    u64::from(vmm) << 32
}
