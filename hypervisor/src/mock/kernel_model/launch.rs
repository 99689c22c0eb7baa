//! The launch commands as `arch/x86/kvm/svm/sev.c` checks them.

use kvm_bindings::{
    kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::errno::Error as Errno;

use super::{KernelModel, cpuid};
use crate::VmType;
use crate::sev_commands::SevCommandError;

/// SNP guest policy bits (`SNP_POLICY_MASK_*` in sev.c): ABI minor and
/// major, SMT, the reserved must-be-one bit 17, debug, single socket.
const POLICY_VALID: u64 = 0xffff | (1 << 16) | (1 << 17) | (1 << 19) | (1 << 20);
/// `SNP_POLICY_MASK_RSVD_MBO`.
const POLICY_RSVD_MBO: u64 = 1 << 17;
/// `GHCB_VERSION_MAX`.
const GHCB_VERSION_MAX: u16 = 2;
/// `KVM_SEV_SNP_PAGE_TYPE_ZERO` and `_CPUID`.
const PAGE_TYPE_ZERO: u8 = kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_ZERO as u8;
const PAGE_TYPE_CPUID: u8 = kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_CPUID as u8;

fn errno(e: i32) -> SevCommandError {
    SevCommandError {
        errno: Errno::new(e),
        fw_error: 0,
    }
}

impl KernelModel {
    /// `sev_guest_init2` + `__sev_guest_init`: an SEV-type VM, not yet
    /// initialised, no vCPU, no flags, GHCB version at most 2, no VMSA
    /// feature KVM does not offer (the model offers none).
    pub(super) fn init2(&mut self, init: &mut kvm_sev_init) -> Result<(), i32> {
        if self.vm_type != VmType::Snp || self.sev_active {
            return Err(libc::EINVAL);
        }
        if self.created_vcpus > 0
            || init.flags != 0
            || init.vmsa_features != 0
            || init.ghcb_version > GHCB_VERSION_MAX
        {
            return Err(libc::EINVAL);
        }
        self.sev_active = true;
        Ok(())
    }

    /// `snp_enable_certs`: an SNP VM with no vCPU yet.
    pub(super) fn enable_certs(&mut self) -> Result<(), i32> {
        if self.created_vcpus > 0 || !self.is_snp() {
            return Err(libc::EINVAL);
        }
        self.certs_enabled = true;
        Ok(())
    }

    /// `snp_launch_start` (and `snp_context_create`, the GCTX_CREATE it
    /// issues through the same `sev_fd`): once, with a valid policy; the
    /// fd is kept for every later firmware call (`sev->fd`).
    pub(super) fn launch_start(
        &mut self,
        sev_fd: u32,
        start: &mut kvm_sev_snp_launch_start,
    ) -> Result<(), SevCommandError> {
        if !self.is_snp() {
            return Err(errno(libc::ENOTTY));
        }
        if self.snp_context
            || start.flags != 0
            || start.policy & !POLICY_VALID != 0
            || start.policy & POLICY_RSVD_MBO == 0
        {
            return Err(errno(libc::EINVAL));
        }
        // snp_context_create: SNP_GCTX_CREATE through argp->sev_fd; a
        // failure there is reported as ENOTTY.
        if self.device.check(sev_fd).is_err() {
            return Err(errno(libc::ENOTTY));
        }
        self.snp_context = true;
        self.launch_fd = Some(sev_fd);
        Ok(())
    }

    /// `snp_launch_update` over `kvm_gmem_populate` and
    /// `sev_gmem_post_populate`.
    pub(super) fn launch_update(
        &mut self,
        sev_fd: u32,
        update: &mut kvm_sev_snp_launch_update,
    ) -> Result<(), SevCommandError> {
        if !self.is_snp() || !self.snp_context {
            return Err(errno(libc::EINVAL));
        }
        let known_type = (1..=6).contains(&update.type_) && update.type_ != 2;
        if update.len % 4096 != 0 || update.flags != 0 || !known_type {
            return Err(errno(libc::EINVAL));
        }
        // The backing memslot must be a guest_memfd slot.
        let gpa = update
            .gfn_start
            .checked_mul(4096)
            .ok_or(errno(libc::EINVAL))?;
        let Some(slot) = self
            .slots
            .iter()
            .find(|s| s.guest_memfd && gpa >= s.gpa && gpa - s.gpa < s.size)
            .cloned()
        else {
            return Err(errno(libc::EINVAL));
        };
        if self.take_eagain() {
            return Err(errno(libc::EAGAIN));
        }
        let npages = update.len / 4096;
        let room = (slot.gpa + slot.size - gpa) / 4096;
        let todo = npages
            .min(room)
            .min(self.config.launch_update_max_pages.unwrap_or(u64::MAX));
        // kvm_gmem_populate: page by page; an error on the first page is
        // the command's error (always EIO from snp_launch_update), a later
        // one ends the call early with the pages done so far.
        let mut done = 0;
        let mut failure = None;
        while done < todo {
            match self.populate_page(sev_fd, &slot, update, done) {
                Ok(()) => done += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if done == 0 {
            if let Some(fw_error) = failure {
                return Err(SevCommandError {
                    errno: Errno::new(libc::EIO),
                    fw_error,
                });
            }
        }
        update.gfn_start += done;
        update.len -= done * 4096;
        if update.type_ != PAGE_TYPE_ZERO {
            update.uaddr += done * 4096;
        }
        Ok(())
    }

    /// One page of `kvm_gmem_populate` / `sev_gmem_post_populate`: private
    /// (`KVM_MEMORY_ATTRIBUTE_PRIVATE`), not populated before (`-EEXIST`),
    /// then SNP_LAUNCH_UPDATE through `sev_fd`. Errors are the firmware
    /// error to report (0 for the kernel's own).
    fn populate_page(
        &mut self,
        sev_fd: u32,
        slot: &super::Slot,
        update: &kvm_sev_snp_launch_update,
        index: u64,
    ) -> Result<(), u32> {
        let frame = update.gfn_start + index;
        if !self.private.contains(&frame) || self.populated.contains(&frame) {
            return Err(0);
        }
        self.device.check(sev_fd).map_err(|_| 0u32)?;
        if update.type_ == PAGE_TYPE_CPUID {
            // The source page, read where the VMM mapped it.
            let src = update.uaddr + index * 4096;
            let offset = src.checked_sub(slot.uaddr).ok_or(0u32)?;
            let page_gpa = GuestAddress(slot.gpa + offset);
            let mut page = vec![0u8; 4096];
            slot.memory
                .read_slice(&mut page, page_gpa)
                .map_err(|_| 0u32)?;
            if let Some(expected) = cpuid::check_page(&page) {
                // Firmware leaves its expected values; KVM copies them back.
                if slot.memory.write_slice(&expected, page_gpa).is_err() {
                    log::debug!("model: the CPUID page could not be written back");
                }
                return Err(cpuid::SEV_RET_INVALID_PARAM);
            }
        }
        self.populated.insert(frame);
        self.validated.insert(frame);
        Ok(())
    }

    /// `snp_launch_finish` (with `snp_launch_update_vmsa` for every vCPU,
    /// through `sev_fd`, and LAUNCH_FINISH through the kept `sev->fd`).
    pub(super) fn launch_finish(
        &mut self,
        sev_fd: u32,
        finish: &mut kvm_sev_snp_launch_finish,
    ) -> Result<(), SevCommandError> {
        if !self.is_snp() {
            return Err(errno(libc::ENOTTY));
        }
        if !self.snp_context || finish.flags != 0 {
            return Err(errno(libc::EINVAL));
        }
        let bad_fd = |e: Errno| SevCommandError {
            errno: e,
            fw_error: 0,
        };
        if self.created_vcpus > 0 {
            self.device.check(sev_fd).map_err(bad_fd)?;
        }
        if let Some(kept) = self.launch_fd {
            self.device.check(kept).map_err(bad_fd)?;
        }
        self.finished = true;
        Ok(())
    }
}
