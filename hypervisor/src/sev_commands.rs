//! The `KVM_MEMORY_ENCRYPT_OP` commands of an SNP VM, built in one place
//! for every backend.
//!
//! [`SnpCommands`] fills each command's structure and hands it, with the
//! VM's `sev_fd`, to a [`MemoryEncryptOp`]: the KVM VM fd (which wraps
//! them into `kvm_sev_cmd` and issues the ioctl) or the mock backend's
//! kernel model (which checks them as `arch/x86/kvm/svm/sev.c` does). So
//! the very code that launches a guest on KVM runs on `--hypervisor
//! mock-snp` and in the conformance tests.
//!
//! * Every command carries the VM's open `/dev/sev` ([`crate::SevDevice`]).
//! * `KVM_SEV_SNP_LAUNCH_UPDATE` may process part of the range: the
//!   kernel writes back `gfn_start`, `len` and `uaddr` (`snp_launch_update`)
//!   or fails with `EAGAIN`; it is issued again until `len` is 0, as QEMU's
//!   `sev_snp_launch_update` does.
//! * When firmware refuses a CPUID page (`EIO`), the kernel has copied the
//!   page firmware rewrote back into the VMM's buffer
//!   (`sev_gmem_post_populate`); each entry it changed is logged.

use kvm_bindings::{
    kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::errno::Error as Errno;

use crate::{HypervisorError, SnpPageType, snp_cpuid};

/// `KVM_SEV_INIT2` (`sev_cmd_id_KVM_SEV_INIT2`).
pub const KVM_SEV_INIT2: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_INIT2;
/// `KVM_SEV_SNP_LAUNCH_START`.
pub const KVM_SEV_SNP_LAUNCH_START: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_START;
/// `KVM_SEV_SNP_LAUNCH_UPDATE`.
pub const KVM_SEV_SNP_LAUNCH_UPDATE: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE;
/// `KVM_SEV_SNP_LAUNCH_FINISH`.
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH;
/// `KVM_SEV_SNP_ENABLE_REQ_CERTS` (after `LAUNCH_FINISH`; no data).
pub const KVM_SEV_SNP_ENABLE_REQ_CERTS: u32 = KVM_SEV_SNP_LAUNCH_FINISH + 1;

/// How many `EAGAIN`s or zero-progress answers in a row one launch update
/// tolerates before it gives up (the kernel makes progress or fails; this
/// only keeps a broken kernel from hanging the VMM).
const MAX_STALLS: u32 = 10_000;

/// One SEV command and its data, as `kvm_sev_cmd.id` and `.data` carry
/// them.
#[derive(Debug)]
pub enum SevCommand<'a> {
    /// `KVM_SEV_INIT2`.
    Init2(&'a mut kvm_sev_init),
    /// `KVM_SEV_SNP_LAUNCH_START`.
    LaunchStart(&'a mut kvm_sev_snp_launch_start),
    /// `KVM_SEV_SNP_LAUNCH_UPDATE` (the kernel writes progress back).
    LaunchUpdate(&'a mut kvm_sev_snp_launch_update),
    /// `KVM_SEV_SNP_LAUNCH_FINISH`.
    LaunchFinish(&'a mut kvm_sev_snp_launch_finish),
    /// `KVM_SEV_SNP_ENABLE_REQ_CERTS`.
    EnableReqCerts,
}

impl SevCommand<'_> {
    /// The sub-command number (`kvm_sev_cmd.id`).
    pub fn id(&self) -> u32 {
        match self {
            SevCommand::Init2(_) => KVM_SEV_INIT2,
            SevCommand::LaunchStart(_) => KVM_SEV_SNP_LAUNCH_START,
            SevCommand::LaunchUpdate(_) => KVM_SEV_SNP_LAUNCH_UPDATE,
            SevCommand::LaunchFinish(_) => KVM_SEV_SNP_LAUNCH_FINISH,
            SevCommand::EnableReqCerts => KVM_SEV_SNP_ENABLE_REQ_CERTS,
        }
    }

    /// The command's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            SevCommand::Init2(_) => "KVM_SEV_INIT2",
            SevCommand::LaunchStart(_) => "KVM_SEV_SNP_LAUNCH_START",
            SevCommand::LaunchUpdate(_) => "KVM_SEV_SNP_LAUNCH_UPDATE",
            SevCommand::LaunchFinish(_) => "KVM_SEV_SNP_LAUNCH_FINISH",
            SevCommand::EnableReqCerts => "KVM_SEV_SNP_ENABLE_REQ_CERTS",
        }
    }
}

/// How a command failed: the kernel's errno and the firmware's error
/// (`kvm_sev_cmd.error`, 0 when none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevCommandError {
    /// The kernel's answer.
    pub errno: Errno,
    /// The firmware's error code.
    pub fw_error: u32,
}

/// Something that executes `KVM_MEMORY_ENCRYPT_OP`: a KVM VM fd, or the
/// mock backend's kernel model.
pub trait MemoryEncryptOp: Send + Sync {
    /// Issues `command` with `kvm_sev_cmd.sev_fd` = `sev_fd`.
    fn memory_encrypt_op(
        &self,
        sev_fd: u32,
        command: SevCommand<'_>,
    ) -> Result<(), SevCommandError>;
}

/// The SEV commands of one VM: its [`MemoryEncryptOp`] and its `sev_fd`.
#[derive(Clone, Copy)]
pub struct SnpCommands<'a> {
    target: &'a dyn MemoryEncryptOp,
    sev_fd: u32,
}

impl std::fmt::Debug for SnpCommands<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpCommands")
            .field("sev_fd", &self.sev_fd)
            .finish_non_exhaustive()
    }
}

fn page_type(t: SnpPageType) -> u8 {
    let value = match t {
        SnpPageType::Normal => kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_NORMAL,
        SnpPageType::Zero => kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_ZERO,
        SnpPageType::Unmeasured => kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_UNMEASURED,
        SnpPageType::Secrets => kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_SECRETS,
        SnpPageType::Cpuid => kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_CPUID,
    };
    // The page types are small numbers (1..=6).
    value as u8
}

/// The VMM's address (`uaddr`) of `len` bytes at `gpa`, which must lie in
/// one region of `memory`.
pub fn user_address(memory: &GuestMemoryMmap, gpa: u64, len: u64) -> Option<u64> {
    let region = memory.find_region(GuestAddress(gpa))?;
    let offset = gpa.checked_sub(region.start_addr().0)?;
    if offset.checked_add(len)? > region.len() {
        return None;
    }
    (region.as_ptr() as u64).checked_add(offset)
}

impl<'a> SnpCommands<'a> {
    /// The commands of a VM executed by `target`, all with `sev_fd`.
    pub fn new(target: &'a dyn MemoryEncryptOp, sev_fd: u32) -> SnpCommands<'a> {
        SnpCommands { target, sev_fd }
    }

    fn issue(&self, command: SevCommand<'_>) -> Result<(), HypervisorError> {
        let name = command.name();
        self.target
            .memory_encrypt_op(self.sev_fd, command)
            .map_err(|e| HypervisorError::SnpCommand {
                command: name,
                fw_error: e.fw_error,
                source: e.errno,
            })
    }

    /// `KVM_SEV_INIT2` with default features: `ghcb_version` 0 (KVM
    /// makes it 2 for SNP) and no extra VMSA features (`__sev_guest_init`).
    pub fn init2(&self) -> Result<(), HypervisorError> {
        let mut init = kvm_sev_init::default();
        self.target
            .memory_encrypt_op(self.sev_fd, SevCommand::Init2(&mut init))
            .map_err(|e| {
                log::debug!(
                    "KVM_SEV_INIT2 failed: {} (firmware error {:#x})",
                    e.errno,
                    e.fw_error
                );
                HypervisorError::SnpInit(e.errno)
            })
    }

    /// `KVM_SEV_SNP_ENABLE_REQ_CERTS` (`snp_enable_certs`).
    pub fn enable_req_certs(&self) -> Result<(), HypervisorError> {
        self.target
            .memory_encrypt_op(self.sev_fd, SevCommand::EnableReqCerts)
            .map_err(|e| match e.errno.errno() {
                libc::EINVAL => HypervisorError::SnpReqCertsRejected(e.errno),
                libc::ENOTTY => HypervisorError::SnpUnsupported {
                    reason: "KVM has no memory-encryption commands",
                    source: Some(e.errno),
                },
                _ => HypervisorError::EnableSnpReqCerts(e.errno),
            })
    }

    /// `KVM_SEV_SNP_LAUNCH_START` with the guest `policy`.
    pub fn launch_start(&self, policy: u64) -> Result<(), HypervisorError> {
        let mut start = kvm_sev_snp_launch_start {
            policy,
            ..Default::default()
        };
        self.issue(SevCommand::LaunchStart(&mut start))
    }

    /// `KVM_SEV_SNP_LAUNCH_UPDATE` of `len` bytes at `gpa` as `page_type`,
    /// the bytes taken from `memory` (the VMM's shared mapping), issued
    /// until the kernel has processed the whole range.
    pub fn launch_update(
        &self,
        memory: &GuestMemoryMmap,
        gpa: u64,
        len: u64,
        page_type_: SnpPageType,
    ) -> Result<(), HypervisorError> {
        let uaddr = user_address(memory, gpa, len).ok_or(HypervisorError::SnpLaunchOrder(
            "LAUNCH_UPDATE of a range outside guest memory",
        ))?;
        let end = gpa.checked_add(len).ok_or(HypervisorError::SnpLaunchOrder(
            "LAUNCH_UPDATE of a range that overflows",
        ))?;
        let cpuid_before = (page_type_ == SnpPageType::Cpuid)
            .then(|| read_page(memory, gpa))
            .flatten();
        let mut update = kvm_sev_snp_launch_update {
            gfn_start: gpa >> 12,
            uaddr,
            len,
            type_: page_type(page_type_),
            ..Default::default()
        };
        let mut stalls = 0;
        while update.len > 0 {
            let before = update.len;
            match self
                .target
                .memory_encrypt_op(self.sev_fd, SevCommand::LaunchUpdate(&mut update))
            {
                Ok(()) if update.len < before => stalls = 0,
                Ok(()) => stalls += 1,
                Err(e) if e.errno.errno() == libc::EAGAIN => stalls += 1,
                Err(e) => {
                    if let Some(before) = &cpuid_before {
                        log_cpuid_refusal(memory, gpa, before, e.fw_error);
                    }
                    return Err(HypervisorError::SnpCommand {
                        command: "KVM_SEV_SNP_LAUNCH_UPDATE",
                        fw_error: e.fw_error,
                        source: e.errno,
                    });
                }
            }
            if stalls > MAX_STALLS {
                return Err(HypervisorError::SnpLaunchOrder(
                    "LAUNCH_UPDATE makes no progress",
                ));
            }
        }
        if update.gfn_start.checked_mul(4096) != Some(end) {
            return Err(HypervisorError::SnpLaunchOrder(
                "LAUNCH_UPDATE ended somewhere other than the end of its range",
            ));
        }
        Ok(())
    }

    /// `KVM_SEV_SNP_LAUNCH_FINISH` with the 32 bytes of `host_data`.
    pub fn launch_finish(&self, host_data: [u8; 32]) -> Result<(), HypervisorError> {
        let mut finish = kvm_sev_snp_launch_finish {
            host_data,
            ..Default::default()
        };
        self.issue(SevCommand::LaunchFinish(&mut finish))
    }
}

fn read_page(memory: &GuestMemoryMmap, gpa: u64) -> Option<Vec<u8>> {
    let mut page = vec![0; 4096];
    memory.read_slice(&mut page, GuestAddress(gpa)).ok()?;
    Some(page)
}

/// Logs each CPUID entry firmware rewrote when it refused the page.
fn log_cpuid_refusal(memory: &GuestMemoryMmap, gpa: u64, provided: &[u8], fw_error: u32) {
    let Some(after) = read_page(memory, gpa) else {
        return;
    };
    let changed = snp_cpuid::mismatches(provided, &after);
    log::error!(
        "firmware refused the CPUID page at {gpa:#x} (firmware error {fw_error:#x}); {} entries differ from what it expects",
        changed.len()
    );
    for (p, e) in changed {
        log::error!(
            "CPUID {:#x}.{:#x}: provided eax {:#010x} ebx {:#010x} ecx {:#010x} edx {:#010x}; firmware expects eax {:#010x} ebx {:#010x} ecx {:#010x} edx {:#010x}",
            p.eax_in,
            p.ecx_in,
            p.eax,
            p.ebx,
            p.ecx,
            p.edx,
            e.eax,
            e.ebx,
            e.ecx,
            e.edx
        );
    }
}

#[cfg(test)]
#[path = "sev_commands_tests.rs"]
mod tests;
