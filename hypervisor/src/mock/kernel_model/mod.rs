//! A conformance model of KVM's SEV-SNP interface: the checks
//! `arch/x86/kvm/svm/sev.c` (and the code it calls) makes of a VMM, so
//! that the mock-snp backend refuses what a real SNP host refuses.
//!
//! Each rule cites the kernel function it mirrors; `docs/snp-hosts.md`
//! lists them with the test that checks each one.
//!
//! | rule | kernel function |
//! | --- | --- |
//! | `KVM_SEV_INIT2` on an SNP-type VM, before any vCPU, once | `sev_guest_init2`, `__sev_guest_init` |
//! | only SNP commands once INIT2 made the VM an SNP VM | `sev_mem_enc_ioctl` |
//! | `sev_fd` an open `/dev/sev` on every firmware command | `__sev_issue_cmd`, `sev_issue_cmd_external_user` |
//! | `KVM_SEV_SNP_ENABLE_REQ_CERTS` on an SNP VM before any vCPU | `snp_enable_certs` |
//! | LAUNCH_START once, policy with bit 17 and only known bits; keeps `sev_fd` | `snp_launch_start`, `snp_context_create` |
//! | LAUNCH_UPDATE: after START, whole pages, known type, guest_memfd slot, private pages, each page once; may stop part-way (writes back `gfn_start`, `len`, `uaddr`) | `snp_launch_update`, `kvm_gmem_populate` |
//! | the CPUID page checked by firmware, refused with the corrected page written back | `sev_gmem_post_populate` |
//! | LAUNCH_FINISH encrypts every vCPU's save area; registers are then read-only | `snp_launch_finish`, `snp_launch_update_vmsa`, `kvm_arch_vcpu_ioctl_set_regs` |
//! | runtime rules (GHCB, exit 43, completions) | see [`vmgexit`] |
//!
//! What the model does not do: encrypt, measure, or check CPUID values
//! against a real CPU (its firmware applies QEMU's masks instead).

mod cpuid;
mod device;
mod launch;
pub mod vmgexit;

use std::collections::BTreeSet;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::errno::Error as Errno;

pub use cpuid::SEV_RET_INVALID_PARAM;
pub use device::ModelSevDevice;

use crate::VmType;
use crate::sev_commands::{MemoryEncryptOp, SevCommand, SevCommandError};

/// Knobs of the model: choices the kernel is allowed to make that tests
/// want to force, and the answers of the (absent) firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelModelConfig {
    /// Most pages one `LAUNCH_UPDATE` processes before returning with the
    /// rest written back (`kvm_gmem_populate` stops early when a signal is
    /// pending); `None`: the whole range.
    pub launch_update_max_pages: Option<u64>,
    /// How many `LAUNCH_UPDATE`s fail with `EAGAIN` before any runs.
    pub launch_update_eagain: u32,
    /// The C-bit position the host reports (CPUID `0x8000_001F`).
    pub c_bit: u8,
    /// The firmware's status for each guest request it is given. Real
    /// firmware refuses the test guest's unencrypted message; this stands
    /// in for its error.
    pub guest_request_fw_error: u32,
}

impl Default for KernelModelConfig {
    fn default() -> Self {
        KernelModelConfig {
            launch_update_max_pages: None,
            launch_update_eagain: 0,
            c_bit: 51,
            guest_request_fw_error: SEV_RET_INVALID_PARAM,
        }
    }
}

/// One memory slot: where the VMM mapped guest memory, and whether it is
/// bound to a guest_memfd (`KVM_MEM_GUEST_MEMFD`).
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub gpa: u64,
    pub size: u64,
    pub uaddr: u64,
    pub memory: Arc<GuestMemoryMmap>,
    pub guest_memfd: bool,
}

/// The kernel's state of one VM.
#[derive(Debug)]
pub struct KernelModel {
    pub(crate) config: KernelModelConfig,
    pub(crate) device: ModelSevDevice,
    pub(crate) vm_type: VmType,
    /// `sev->active` (INIT2 done).
    pub(crate) sev_active: bool,
    /// `kvm->created_vcpus`.
    pub(crate) created_vcpus: usize,
    /// `sev->snp_certs_enabled`.
    pub(crate) certs_enabled: bool,
    /// `KVM_CAP_EXIT_HYPERCALL` has `KVM_HC_MAP_GPA_RANGE`.
    pub(crate) exit_map_gpa_range: bool,
    /// `sev->snp_context` exists (LAUNCH_START done).
    pub(crate) snp_context: bool,
    /// `sev->fd`: the `sev_fd` of LAUNCH_START, used by every later
    /// firmware call of the VM.
    pub(crate) launch_fd: Option<u32>,
    /// `guest_state_protected` / `pre_fault_allowed`: LAUNCH_FINISH done.
    pub(crate) finished: bool,
    pub(crate) slots: Vec<Slot>,
    /// Frame numbers with `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
    pub(crate) private: BTreeSet<u64>,
    /// Frame numbers populated by LAUNCH_UPDATE (assigned in the RMP).
    pub(crate) populated: BTreeSet<u64>,
    /// Frame numbers validated in the RMP (launched pages, PVALIDATE).
    pub(crate) validated: BTreeSet<u64>,
    /// `EAGAIN`s still to give.
    eagain_left: u32,
    /// The SEV commands issued, in order, with the `sev_fd` of each.
    pub(crate) commands: Vec<(&'static str, u32)>,
}

impl KernelModel {
    /// The kernel's state of a new VM of `vm_type`.
    pub fn new(vm_type: VmType, config: KernelModelConfig) -> Result<KernelModel, Errno> {
        Ok(KernelModel {
            config,
            device: ModelSevDevice::new()?,
            vm_type,
            sev_active: false,
            created_vcpus: 0,
            certs_enabled: false,
            exit_map_gpa_range: false,
            snp_context: false,
            launch_fd: None,
            finished: false,
            slots: Vec::new(),
            private: BTreeSet::new(),
            populated: BTreeSet::new(),
            validated: BTreeSet::new(),
            eagain_left: config.launch_update_eagain,
            commands: Vec::new(),
        })
    }

    /// The model's `/dev/sev`.
    pub fn device(&self) -> &ModelSevDevice {
        &self.device
    }

    /// Whether INIT2 made this an SNP VM (`sev_snp_guest`).
    pub fn is_snp(&self) -> bool {
        self.sev_active && self.vm_type == VmType::Snp
    }

    /// The SEV commands issued so far, with the `sev_fd` each carried.
    pub fn commands(&self) -> &[(&'static str, u32)] {
        &self.commands
    }

    /// Whether every page of `len` bytes at `gpa` was populated by
    /// LAUNCH_UPDATE.
    pub fn populated(&self, gpa: u64, len: u64) -> bool {
        (gpa >> 12..(gpa + len).div_ceil(4096)).all(|f| self.populated.contains(&f))
    }

    /// `KVM_CREATE_VCPU` (`kvm->created_vcpus`).
    pub fn vcpu_created(&mut self) {
        self.created_vcpus += 1;
    }

    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` with `KVM_HC_MAP_GPA_RANGE`.
    pub fn enable_map_gpa_range_exit(&mut self) {
        self.exit_map_gpa_range = true;
    }

    /// `KVM_SET_USER_MEMORY_REGION2`: a slot at `gpa` mapped at `uaddr`.
    pub(crate) fn add_slot(&mut self, slot: Slot) {
        self.slots.push(slot);
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES` of `len` bytes at `gpa`.
    pub fn set_private(&mut self, gpa: u64, len: u64, private: bool) {
        for frame in gpa >> 12..gpa.saturating_add(len).div_ceil(4096) {
            if private {
                self.private.insert(frame);
            } else {
                self.private.remove(&frame);
                // The RMP entry of a shared page is the hypervisor's:
                // neither assigned nor validated.
                self.validated.remove(&frame);
            }
        }
    }

    /// `sev_mem_enc_ioctl`: one `KVM_MEMORY_ENCRYPT_OP`.
    pub fn encrypt_op(
        &mut self,
        sev_fd: u32,
        command: SevCommand<'_>,
    ) -> Result<(), SevCommandError> {
        self.commands.push((command.name(), sev_fd));
        let fail = |errno: i32| SevCommandError {
            errno: Errno::new(errno),
            fw_error: 0,
        };
        // sev_mem_enc_ioctl: once INIT2 made this an SNP VM, only the SNP
        // commands (ids from KVM_SEV_SNP_LAUNCH_START) are allowed.
        if self.is_snp() && command.id() < crate::sev_commands::KVM_SEV_SNP_LAUNCH_START {
            return Err(fail(libc::EPERM));
        }
        match command {
            SevCommand::Init2(init) => self.init2(init).map_err(fail),
            SevCommand::EnableReqCerts => self.enable_certs().map_err(fail),
            SevCommand::LaunchStart(start) => self.launch_start(sev_fd, start),
            SevCommand::LaunchUpdate(update) => self.launch_update(sev_fd, update),
            SevCommand::LaunchFinish(finish) => self.launch_finish(sev_fd, finish),
        }
    }

    /// Gives one `EAGAIN` if the knob says so.
    fn take_eagain(&mut self) -> bool {
        let take = self.eagain_left > 0;
        self.eagain_left = self.eagain_left.saturating_sub(1);
        take
    }
}

/// A model behind a lock, executing commands: what a mock VM hands to
/// [`crate::sev_commands::SnpCommands`].
impl MemoryEncryptOp for std::sync::Mutex<KernelModel> {
    fn memory_encrypt_op(
        &self,
        sev_fd: u32,
        command: SevCommand<'_>,
    ) -> Result<(), SevCommandError> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .encrypt_op(sev_fd, command)
    }
}

#[cfg(test)]
mod launch_tests;
#[cfg(test)]
mod pvalidate_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vmgexit_tests;
