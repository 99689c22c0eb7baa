//! The SEV-SNP certificate-request ABI of Linux KVM, in one place.
//!
//! kvm-bindings 0.14 and kvm-ioctls 0.25 predate the feature (merged for
//! Linux 7.0), so its numbers and the exit structure are defined here.
//! Re-check them against the target kernel's `include/uapi/linux/kvm.h` and
//! `arch/x86/include/uapi/asm/kvm.h` before relying on them on new hardware.
//!
//! * Probe: `KVM_HAS_DEVICE_ATTR` / `KVM_GET_DEVICE_ATTR` on the `/dev/kvm`
//!   fd, group [`KVM_X86_GRP_SEV`], attribute [`KVM_X86_SEV_SNP_REQ_CERTS`];
//!   value 1 means supported. (There is no capability: the early
//!   `KVM_CAP_EXIT_SNP_REQ_CERTS` = 239 was dropped and 239 now means an
//!   unrelated Arm capability; it must never be used.)
//! * Enable: `KVM_MEMORY_ENCRYPT_OP` sub-command
//!   [`KVM_SEV_SNP_ENABLE_REQ_CERTS`] on an SNP VM after `KVM_SEV_INIT2` and
//!   before any vCPU exists (else `EINVAL`).
//! * Exit: [`KVM_EXIT_SNP_REQ_CERTS`] with a [`KvmExitSnpReqCerts`] at the
//!   start of the `kvm_run` exit union.

use std::mem::{offset_of, size_of};

use kvm_bindings::{kvm_run, kvm_run__bindgen_ty_1};

/// Exit reason of a guest certificate request.
///
/// Mainline Linux (7.0) uses 43. The v7 patch series itself said 42 and
/// earlier revisions 40; a kernel built from those would need this changed.
pub const KVM_EXIT_SNP_REQ_CERTS: u32 = 43;

/// Device-attribute group of SEV attributes on `/dev/kvm`.
pub const KVM_X86_GRP_SEV: u32 = 1;

/// SEV attribute: the SNP certificate-request exit is supported.
pub const KVM_X86_SEV_SNP_REQ_CERTS: u64 = 2;

/// `KVM_MEMORY_ENCRYPT_OP` sub-command that enables the exit (after
/// `KVM_SEV_SNP_LAUNCH_START` 100, `_UPDATE` 101, `_FINISH` 102). No data.
pub const KVM_SEV_SNP_ENABLE_REQ_CERTS: u32 = 103;

/// `KVM_MEMORY_ENCRYPT_OP` sub-command that initialises an SEV, SEV-ES or
/// SNP VM created with a VM type (`sev_cmd_id_KVM_SEV_INIT2`).
pub const KVM_SEV_INIT2: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_INIT2;

/// `KVM_CREATE_VM` type of an SEV-SNP VM.
pub const KVM_X86_SNP_VM: u64 = kvm_bindings::KVM_X86_SNP_VM as u64;

/// `KVM_CHECK_EXTENSION` capability listing the supported VM types as a
/// bit mask (`KVM_CAP_VM_TYPES`).
pub const KVM_CAP_VM_TYPES: u64 = kvm_bindings::KVM_CAP_VM_TYPES as u64;

/// The hypercall an SEV guest's page-state change becomes
/// (`KVM_HC_MAP_GPA_RANGE`, `include/uapi/linux/kvm_para.h`): KVM exits to
/// userspace with it once `KVM_CAP_EXIT_HYPERCALL` enables it, and the VMM
/// converts the pages with `KVM_SET_MEMORY_ATTRIBUTES`.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;

/// Attribute bit of `KVM_HC_MAP_GPA_RANGE`'s third argument: the pages
/// become private (encrypted); clear, shared.
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;

/// `KVM_CAP_EXIT_HYPERCALL`: its argument is the mask of hypercalls KVM
/// sends to userspace.
pub const KVM_CAP_EXIT_HYPERCALL: u32 = kvm_bindings::KVM_CAP_EXIT_HYPERCALL;

/// `KVM_CHECK_EXTENSION` capability: `KVM_SET_USER_MEMORY_REGION2` (the
/// memory-slot ioctl that can bind a guest_memfd) exists. kvm-bindings
/// 0.14 has it (231).
pub const KVM_CAP_USER_MEMORY2: u64 = kvm_bindings::KVM_CAP_USER_MEMORY2 as u64;

/// `KVM_CHECK_EXTENSION` capability: `KVM_SET_MEMORY_ATTRIBUTES` exists;
/// the answer is the mask of supported attributes, which must contain
/// [`KVM_MEMORY_ATTRIBUTE_PRIVATE`] for SNP private/shared conversions.
/// kvm-bindings 0.14 has it (233).
pub const KVM_CAP_MEMORY_ATTRIBUTES: u64 = kvm_bindings::KVM_CAP_MEMORY_ATTRIBUTES as u64;

/// `KVM_CHECK_EXTENSION` capability: `KVM_CREATE_GUEST_MEMFD` exists (the
/// private memory of SNP guests). kvm-bindings 0.14 has it (234).
pub const KVM_CAP_GUEST_MEMFD: u64 = kvm_bindings::KVM_CAP_GUEST_MEMFD as u64;

/// Memory attribute bit: the range is private to the guest. Bit 3, as in
/// kvm-bindings 0.14.
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64;

/// `struct kvm_exit_snp_req_certs`: member `snp_req_certs` of the `kvm_run`
/// exit union.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmExitSnpReqCerts {
    /// Guest buffer (4 KiB aligned; checked by KVM), verbatim from the guest.
    pub gpa: u64,
    /// Guest buffer size in pages, verbatim from the guest; written by the
    /// VMM with the pages needed when `ret` is `ENOSPC`.
    pub npages: u64,
    /// Written by the VMM: 0, `ENOSPC`, `EAGAIN` or `EIO`. KVM sets it to 0
    /// at exit.
    pub ret: u64,
}

/// Byte offset of the exit union (and so of [`KvmExitSnpReqCerts`]) in
/// `struct kvm_run`.
pub const KVM_RUN_EXIT_UNION_OFFSET: usize = offset_of!(kvm_run, __bindgen_anon_1);

// The overlay must sit at byte 32 of kvm_run and fit in the exit union.
const _: () = assert!(KVM_RUN_EXIT_UNION_OFFSET == 32);
const _: () = assert!(size_of::<KvmExitSnpReqCerts>() <= size_of::<kvm_run__bindgen_ty_1>());
const _: () = assert!(offset_of!(KvmExitSnpReqCerts, gpa) == 0);
const _: () = assert!(offset_of!(KvmExitSnpReqCerts, npages) == 8);
const _: () = assert!(offset_of!(KvmExitSnpReqCerts, ret) == 16);

/// Pointer to the certificate-request overlay in a `kvm_run`.
///
/// Computing the pointer is safe; dereferencing it is valid whenever `run`
/// is (the overlay lies inside the exit union, 8-byte aligned because
/// `kvm_run` is).
pub(crate) fn snp_req_certs_ptr(run: *mut kvm_run) -> *mut KvmExitSnpReqCerts {
    run.cast::<u8>()
        .wrapping_add(KVM_RUN_EXIT_UNION_OFFSET)
        .cast::<KvmExitSnpReqCerts>()
}

/// The device-attribute ioctls, issued on the `/dev/kvm` fd (kvm-ioctls
/// only wraps them for VM, vCPU and device fds).
pub(crate) mod ioctls {
    use kvm_bindings::{KVMIO, kvm_device_attr};

    vmm_sys_util::ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
    vmm_sys_util::ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, KVMIO, 0xe3, kvm_device_attr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_offsets_in_kvm_run() {
        let base = offset_of!(kvm_run, __bindgen_anon_1);
        assert_eq!(base, 32);
        assert_eq!(base + offset_of!(KvmExitSnpReqCerts, gpa), 32);
        assert_eq!(base + offset_of!(KvmExitSnpReqCerts, npages), 40);
        assert_eq!(base + offset_of!(KvmExitSnpReqCerts, ret), 48);
        assert_eq!(size_of::<KvmExitSnpReqCerts>(), 24);
        assert_eq!(size_of::<kvm_run__bindgen_ty_1>(), 256);
    }

    #[test]
    fn overlay_reads_and_writes_through_kvm_run() {
        // SAFETY: kvm_run is plain old data; all-zero is a valid value.
        let mut run: kvm_run = unsafe { std::mem::zeroed() };
        let p = snp_req_certs_ptr(&mut run);
        // SAFETY: `p` points inside `run`, which is live and aligned.
        unsafe {
            p.write(KvmExitSnpReqCerts {
                gpa: 0x1000,
                npages: 4,
                ret: 28,
            })
        };
        // SAFETY: reading the bytes just written through the raw view.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts((&run as *const kvm_run).cast::<u8>(), size_of::<kvm_run>())
        };
        assert_eq!(
            u64::from_ne_bytes(bytes[32..40].try_into().unwrap()),
            0x1000
        );
        assert_eq!(u64::from_ne_bytes(bytes[40..48].try_into().unwrap()), 4);
        assert_eq!(u64::from_ne_bytes(bytes[48..56].try_into().unwrap()), 28);
    }

    #[test]
    fn abi_numbers() {
        assert_eq!(ioctls::KVM_GET_DEVICE_ATTR(), 0x4018_aee2);
        assert_eq!(ioctls::KVM_HAS_DEVICE_ATTR(), 0x4018_aee3);
        assert_eq!(KVM_EXIT_SNP_REQ_CERTS, 43);
        assert_eq!(KVM_X86_GRP_SEV, 1);
        assert_eq!(KVM_X86_SEV_SNP_REQ_CERTS, 2);
        assert_eq!(KVM_SEV_SNP_ENABLE_REQ_CERTS, 103);
        assert_eq!(
            KVM_SEV_SNP_ENABLE_REQ_CERTS,
            kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH + 1
        );
        assert_eq!(KVM_SEV_INIT2, 22);
        assert_eq!(KVM_X86_SNP_VM, 4);
        assert_eq!(KVM_CAP_VM_TYPES, 235);
        assert_eq!(KVM_CAP_USER_MEMORY2, 231);
        assert_eq!(KVM_CAP_MEMORY_ATTRIBUTES, 233);
        assert_eq!(KVM_CAP_GUEST_MEMFD, 234);
        assert_eq!(KVM_MEMORY_ATTRIBUTE_PRIVATE, 1 << 3);
        // include/uapi/linux/kvm_para.h.
        assert_eq!(KVM_HC_MAP_GPA_RANGE, 12);
        assert_eq!(KVM_MAP_GPA_RANGE_ENCRYPTED, 0x10);
        // Exit 43 is not taken by anything kvm-bindings knows.
        const { assert!(kvm_bindings::KVM_EXIT_MEMORY_FAULT < KVM_EXIT_SNP_REQ_CERTS) };
    }
}
