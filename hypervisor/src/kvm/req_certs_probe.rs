//! Probing `/dev/kvm` for the SNP certificate-request exit
//! (`KVM_HAS_DEVICE_ATTR` / `KVM_GET_DEVICE_ATTR`, group
//! `KVM_X86_GRP_SEV`, attribute `KVM_X86_SEV_SNP_REQ_CERTS`).
//!
//! The numbers and structures live in [`super::snp`]; the SEV commands of
//! a VM in [`crate::sev_commands`].

use kvm_bindings::kvm_device_attr;
use kvm_ioctls::Kvm;
use vmm_sys_util::errno::Error as Errno;
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::snp::{
    KVM_X86_GRP_SEV, KVM_X86_SEV_SNP_REQ_CERTS,
    ioctls::{KVM_GET_DEVICE_ATTR, KVM_HAS_DEVICE_ATTR},
};
use crate::HypervisorError;

/// Errnos meaning "this host has no such attribute": no SEV support at all
/// (`ENXIO`, as on PVM hosts), no device-attribute ioctls on the system fd
/// (`ENOTTY`), or an older kernel rejecting the attribute (`EINVAL`).
fn means_unsupported(e: Errno) -> bool {
    matches!(e.errno(), libc::ENXIO | libc::ENOTTY | libc::EINVAL)
}

/// What `/dev/kvm` answered about `KVM_X86_SEV_SNP_REQ_CERTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqCertsAnswer {
    /// The attribute exists; its value (1: supported).
    Value(u64),
    /// The kernel says it has no such attribute, with the errno it gave.
    Unsupported(Errno),
}

/// Asks `/dev/kvm` whether `KVM_X86_SEV_SNP_REQ_CERTS` is supported.
pub(super) fn probe_req_certs(kvm: &Kvm) -> Result<bool, HypervisorError> {
    Ok(query_req_certs(kvm)? == ReqCertsAnswer::Value(1))
}

/// Queries `KVM_X86_SEV_SNP_REQ_CERTS` on `/dev/kvm`, keeping the errno of
/// a "no such attribute" answer for the host check.
pub(super) fn query_req_certs(kvm: &Kvm) -> Result<ReqCertsAnswer, HypervisorError> {
    let mut value: u64 = 0;
    let attr = kvm_device_attr {
        flags: 0,
        group: KVM_X86_GRP_SEV,
        attr: KVM_X86_SEV_SNP_REQ_CERTS,
        addr: &mut value as *mut u64 as u64,
    };
    // SAFETY: `kvm` is an open /dev/kvm fd; the kernel reads exactly one
    // kvm_device_attr from `attr`, which lives across the call, and we check
    // the result.
    let ret = unsafe { ioctl_with_ref(kvm, KVM_HAS_DEVICE_ATTR(), &attr) };
    if ret < 0 {
        let e = Errno::last();
        return if means_unsupported(e) {
            log::debug!("KVM_HAS_DEVICE_ATTR(SEV, SNP_REQ_CERTS): {e}");
            Ok(ReqCertsAnswer::Unsupported(e))
        } else {
            Err(HypervisorError::ProbeSnpReqCerts(e))
        };
    }
    // SAFETY: as above; in addition the kernel writes one u64 to
    // `attr.addr`, which points at `value`, alive and writable until after
    // the call.
    let ret = unsafe { ioctl_with_ref(kvm, KVM_GET_DEVICE_ATTR(), &attr) };
    if ret < 0 {
        let e = Errno::last();
        return if means_unsupported(e) {
            Ok(ReqCertsAnswer::Unsupported(e))
        } else {
            Err(HypervisorError::ProbeSnpReqCerts(e))
        };
    }
    Ok(ReqCertsAnswer::Value(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_no_such_attribute_answers_mean_unsupported() {
        for errno in [libc::ENXIO, libc::ENOTTY, libc::EINVAL] {
            assert!(means_unsupported(Errno::new(errno)), "{errno}");
        }
        for errno in [libc::EBADF, libc::EPERM, libc::EFAULT] {
            assert!(!means_unsupported(Errno::new(errno)), "{errno}");
        }
    }
}
