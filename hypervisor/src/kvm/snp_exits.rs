//! The exits an SEV-SNP guest causes besides its certificate request,
//! decoded from what KVM reports in `kvm_run` (as kvm-ioctls hands it
//! over), as pure functions so that every rule can be tested without an
//! SNP host:
//!
//! * a page-state change becomes the hypercall `KVM_HC_MAP_GPA_RANGE`
//!   (`KVM_EXIT_HYPERCALL`, once `KVM_CAP_EXIT_HYPERCALL` enabled it):
//!   arguments GPA, page count and attributes, private when
//!   `KVM_MAP_GPA_RANGE_ENCRYPTED` is set (the kernel's
//!   `snp_begin_psc`/`__snp_handle_page_state_change`);
//! * a guest access to a page in the other state becomes
//!   `KVM_EXIT_MEMORY_FAULT`, private when `KVM_MEMORY_EXIT_FLAG_PRIVATE`
//!   is set;
//! * the guest's termination request (GHCB MSR protocol or NAE event)
//!   becomes `KVM_EXIT_SYSTEM_EVENT` of type `KVM_SYSTEM_EVENT_SEV_TERM`,
//!   whose first datum is the GHCB MSR value: reason set in bits 12..16,
//!   reason code in bits 16..24 (GHCB specification, "Termination
//!   Request").

use super::snp::{KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED};
use crate::VmExit;

/// The page-state change a `KVM_EXIT_HYPERCALL` carries, or `None` for a
/// hypercall other than `KVM_HC_MAP_GPA_RANGE`.
pub(super) fn map_gpa_range(nr: u64, args: &[u64; 6]) -> Option<VmExit> {
    (nr == KVM_HC_MAP_GPA_RANGE).then(|| VmExit::MapGpaRange {
        gpa: args[0],
        npages: args[1],
        private: args[2] & KVM_MAP_GPA_RANGE_ENCRYPTED != 0,
    })
}

/// A `KVM_EXIT_MEMORY_FAULT` of `size` bytes at `gpa`.
pub(super) fn memory_fault(flags: u64, gpa: u64, size: u64) -> VmExit {
    VmExit::MemoryFault {
        gpa,
        size,
        private: flags & u64::from(kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE) != 0,
    }
}

/// The guest's termination request a `KVM_EXIT_SYSTEM_EVENT` carries, or
/// `None` for a system event of another type.
pub(super) fn sev_termination(kind: u32, data: &[u64]) -> Option<VmExit> {
    (kind == kvm_bindings::KVM_SYSTEM_EVENT_SEV_TERM).then(|| {
        let msr = data.first().copied().unwrap_or_default();
        VmExit::Terminated {
            reason_set: ((msr >> 12) & 0xf) as u8,
            reason_code: ((msr >> 16) & 0xff) as u8,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_map_gpa_range_is_a_page_state_change() {
        let args = [0x7000, 3, KVM_MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0];
        assert_eq!(
            map_gpa_range(KVM_HC_MAP_GPA_RANGE, &args),
            Some(VmExit::MapGpaRange {
                gpa: 0x7000,
                npages: 3,
                private: true
            })
        );
        for nr in [0, 1, KVM_HC_MAP_GPA_RANGE - 1, KVM_HC_MAP_GPA_RANGE + 1] {
            assert_eq!(map_gpa_range(nr, &args), None, "hypercall {nr}");
        }
    }

    #[test]
    fn a_page_state_change_is_private_only_with_the_encrypted_attribute() {
        let private = |attributes: u64| match map_gpa_range(
            KVM_HC_MAP_GPA_RANGE,
            &[0x1000, 1, attributes, 0, 0, 0],
        ) {
            Some(VmExit::MapGpaRange { private, .. }) => private,
            other => panic!("{other:?}"),
        };
        assert!(!private(0));
        assert!(private(KVM_MAP_GPA_RANGE_ENCRYPTED));
        // Other attribute bits (the page size, bit 0) say nothing of it.
        assert!(!private(!KVM_MAP_GPA_RANGE_ENCRYPTED));
        assert!(private(u64::MAX));
    }

    #[test]
    fn a_memory_fault_is_private_only_with_the_private_flag() {
        let flag = u64::from(kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE);
        assert_eq!(
            memory_fault(flag, 0x5000, 0x1000),
            VmExit::MemoryFault {
                gpa: 0x5000,
                size: 0x1000,
                private: true
            }
        );
        let private = |flags| {
            matches!(
                memory_fault(flags, 0, 1),
                VmExit::MemoryFault { private: true, .. }
            )
        };
        assert!(!private(0));
        assert!(!private(!flag));
        assert!(private(u64::MAX));
    }

    #[test]
    fn a_termination_request_carries_the_ghcb_reason_set_and_code() {
        let kind = kvm_bindings::KVM_SYSTEM_EVENT_SEV_TERM;
        // GHCB MSR termination request: code 0x100, set 3, reason 0x45.
        let msr = 0x45_3100;
        assert_eq!(
            sev_termination(kind, &[msr]),
            Some(VmExit::Terminated {
                reason_set: 3,
                reason_code: 0x45
            })
        );
        // Only the reason's bits count.
        assert_eq!(
            sev_termination(kind, &[!0xff_f000 | msr]),
            Some(VmExit::Terminated {
                reason_set: 3,
                reason_code: 0x45
            })
        );
        assert_eq!(
            sev_termination(kind, &[]),
            Some(VmExit::Terminated {
                reason_set: 0,
                reason_code: 0
            })
        );
        for other in [
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET,
            kind + 1,
        ] {
            assert_eq!(sev_termination(other, &[msr]), None, "type {other}");
        }
    }
}
