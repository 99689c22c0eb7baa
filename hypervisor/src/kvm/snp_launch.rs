//! The SNP launch on KVM: guest_memfd-backed memory, the page-conversion
//! exit, and the `KVM_SEV_SNP_LAUNCH_*` commands (see
//! [`crate::snp_launch`] for the order).
//!
//! * Each memory region of an SNP VM gets its own guest_memfd
//!   (`KVM_CREATE_GUEST_MEMFD`) and is registered with
//!   `KVM_SET_USER_MEMORY_REGION2` carrying both the guest_memfd (private
//!   memory) and the VMM's shared userspace mapping (shared memory); the
//!   whole range is then made private (`KVM_SET_MEMORY_ATTRIBUTES`), the
//!   state a guest starts in.
//! * `KVM_CAP_EXIT_HYPERCALL` sends `KVM_HC_MAP_GPA_RANGE` to userspace,
//!   so the guest's page-state changes reach the VMM.
//! * Launch updates take their bytes from the shared mapping (`uaddr`);
//!   KVM copies them into the guest_memfd and firmware encrypts and
//!   measures them.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::{
    KVM_MEM_GUEST_MEMFD, KVM_MEMORY_ATTRIBUTE_PRIVATE, kvm_create_guest_memfd, kvm_enable_cap,
    kvm_memory_attributes, kvm_sev_cmd, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::errno::Error as Errno;

use super::KvmVm;
use super::snp::{KVM_CAP_EXIT_HYPERCALL, KVM_HC_MAP_GPA_RANGE};
use crate::{CpuidLeaf, HypervisorError, SnpLaunch, SnpPageType};

/// `KVM_SEV_SNP_LAUNCH_*` sub-commands of `KVM_MEMORY_ENCRYPT_OP`.
const LAUNCH_START: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_START;
const LAUNCH_UPDATE: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE;
const LAUNCH_FINISH: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH;

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

/// Lets the guest's page-state changes reach userspace.
pub(super) fn enable_map_gpa_range_exit(vm: &VmFd) -> Result<(), HypervisorError> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_EXIT_HYPERCALL,
        ..Default::default()
    };
    cap.args[0] = 1 << KVM_HC_MAP_GPA_RANGE;
    vm.enable_cap(&cap)
        .map_err(|source| HypervisorError::SnpCommand {
            command: "KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)",
            fw_error: 0,
            source,
        })
}

/// Registers `memory` with guest_memfd backing, in slots from
/// `first_slot`, and makes it private; returns the guest_memfds, which must
/// live as long as the VM.
pub(super) fn map_private(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    first_slot: u32,
) -> Result<Vec<File>, HypervisorError> {
    let files = bind_guest_memfd(vm, memory, first_slot)?;
    for region in memory.iter() {
        set_attributes(vm, region.start_addr().0, region.len(), true)?;
    }
    Ok(files)
}

/// Registers `memory` with guest_memfd backing (`KVM_CREATE_GUEST_MEMFD`,
/// `KVM_SET_USER_MEMORY_REGION2`), in slots from `first_slot`, leaving its
/// attributes alone.
pub(super) fn bind_guest_memfd(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    first_slot: u32,
) -> Result<Vec<File>, HypervisorError> {
    let mut files = Vec::new();
    for (slot, region) in (first_slot..).zip(memory.iter()) {
        let gpa = region.start_addr().0;
        let size = region.len();
        let gmem = kvm_create_guest_memfd {
            size,
            ..Default::default()
        };
        let fd = vm
            .create_guest_memfd(gmem)
            .map_err(|source| HypervisorError::GuestMemfd { gpa, source })?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new descriptor that
        // nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let guest_memfd =
            u32::try_from(file.as_raw_fd()).map_err(|_| HypervisorError::GuestMemfd {
                gpa,
                source: Errno::new(libc::EBADF),
            })?;
        let region2 = kvm_userspace_memory_region2 {
            slot,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: region.as_ptr() as u64,
            guest_memfd_offset: 0,
            guest_memfd,
            ..Default::default()
        };
        // SAFETY: the shared mapping is a live host mapping of `size`
        // bytes kept alive by the VM (the caller stores the `Arc`), and the
        // guest_memfd is kept in `files`, stored with the VM.
        unsafe { vm.set_user_memory_region2(region2) }
            .map_err(|source| HypervisorError::GuestMemfd { gpa, source })?;
        files.push(file);
    }
    Ok(files)
}

fn set_attributes(vm: &VmFd, gpa: u64, len: u64, private: bool) -> Result<(), HypervisorError> {
    let attr = kvm_memory_attributes {
        address: gpa,
        size: len,
        attributes: if private {
            u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE)
        } else {
            0
        },
        flags: 0,
    };
    vm.set_memory_attributes(attr)
        .map_err(|source| HypervisorError::MemoryAttributes {
            gpa,
            len,
            what: if private { "private" } else { "shared" },
            source,
        })
}

/// Issues one SNP sub-command with `data`.
fn snp_command<T>(
    vm: &VmFd,
    command: &'static str,
    id: u32,
    data: &mut T,
) -> Result<(), HypervisorError> {
    let mut cmd = kvm_sev_cmd {
        id,
        data: std::ptr::from_mut(data) as u64,
        ..Default::default()
    };
    vm.encrypt_op_sev(&mut cmd)
        .map_err(|source| HypervisorError::SnpCommand {
            command,
            fw_error: cmd.error,
            source,
        })
}

impl KvmVm {
    fn shared_address(&self, gpa: u64, len: u64) -> Result<u64, HypervisorError> {
        let memory = self.shared.memory.lock().unwrap_or_else(|e| e.into_inner());
        for mapping in memory.iter() {
            for region in mapping.iter() {
                let start = region.start_addr().0;
                let end = start.saturating_add(region.len());
                let last = gpa.saturating_add(len);
                if gpa >= start && last <= end {
                    return Ok(region.as_ptr() as u64 + (gpa - start));
                }
            }
        }
        Err(HypervisorError::SnpLaunchOrder(
            "LAUNCH_UPDATE of a range outside guest memory",
        ))
    }
}

impl SnpLaunch for KvmVm {
    fn launch_start(&self, policy: u64) -> Result<(), HypervisorError> {
        let mut start = kvm_sev_snp_launch_start {
            policy,
            ..Default::default()
        };
        snp_command(
            &self.shared.fd,
            "KVM_SEV_SNP_LAUNCH_START",
            LAUNCH_START,
            &mut start,
        )
    }

    fn launch_update(
        &self,
        gpa: u64,
        len: u64,
        page_type_: SnpPageType,
    ) -> Result<(), HypervisorError> {
        let mut update = kvm_sev_snp_launch_update {
            gfn_start: gpa / 4096,
            uaddr: self.shared_address(gpa, len)?,
            len,
            type_: page_type(page_type_),
            ..Default::default()
        };
        snp_command(
            &self.shared.fd,
            "KVM_SEV_SNP_LAUNCH_UPDATE",
            LAUNCH_UPDATE,
            &mut update,
        )
    }

    fn launch_finish(&self, host_data: [u8; 32]) -> Result<(), HypervisorError> {
        let mut finish = kvm_sev_snp_launch_finish {
            host_data,
            ..Default::default()
        };
        snp_command(
            &self.shared.fd,
            "KVM_SEV_SNP_LAUNCH_FINISH",
            LAUNCH_FINISH,
            &mut finish,
        )
    }

    fn set_private(&self, gpa: u64, len: u64, private: bool) -> Result<(), HypervisorError> {
        set_attributes(&self.shared.fd, gpa, len, private)
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidLeaf>, HypervisorError> {
        Ok(self.shared.cpuid.clone())
    }
}
