//! An SNP VM's private memory on KVM: guest_memfd-backed memory slots, the
//! private/shared attributes and the page-conversion exit (see
//! [`crate::snp_interface`] for the launch order; the launch commands
//! themselves are built in [`crate::sev_commands`]).
//!
//! * Each memory region of an SNP VM gets its own guest_memfd
//!   (`KVM_CREATE_GUEST_MEMFD`) and is registered with
//!   `KVM_SET_USER_MEMORY_REGION2` carrying both the guest_memfd (private
//!   memory) and the VMM's shared userspace mapping (shared memory); the
//!   whole range is then made private (`KVM_SET_MEMORY_ATTRIBUTES`), the
//!   state a guest starts in.
//! * `KVM_CAP_EXIT_HYPERCALL` sends `KVM_HC_MAP_GPA_RANGE` to userspace,
//!   so the guest's page-state changes reach the VMM.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::{
    KVM_MEM_GUEST_MEMFD, KVM_MEMORY_ATTRIBUTE_PRIVATE, kvm_create_guest_memfd, kvm_enable_cap,
    kvm_memory_attributes, kvm_userspace_memory_region2,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::errno::Error as Errno;

use super::snp::{KVM_CAP_EXIT_HYPERCALL, KVM_HC_MAP_GPA_RANGE};
use crate::HypervisorError;

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

/// `KVM_SET_MEMORY_ATTRIBUTES`: `len` bytes at `gpa` become private or
/// shared.
pub(super) fn set_attributes(
    vm: &VmFd,
    gpa: u64,
    len: u64,
    private: bool,
) -> Result<(), HypervisorError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmType;
    use crate::kvm::KvmHypervisor;

    /// Needs `/dev/kvm` (named `kvm_*`, as every such test).
    #[test]
    fn kvm_the_page_state_exit_is_accepted() {
        let hv = KvmHypervisor::new().unwrap_or_else(|e| {
            panic!("this test needs a usable /dev/kvm: scripts/test.sh skips the kvm_* tests where it is not ({e})")
        });
        let vm = hv.create_kvm_vm(VmType::Default).unwrap();
        enable_map_gpa_range_exit(vm.vm_fd()).unwrap();
    }
}
