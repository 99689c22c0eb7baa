//! Typed vCPU exits and the typed answer to an SNP certificate request.

use crate::HypervisorError;

/// The kind of VM to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VmType {
    /// An ordinary VM.
    #[default]
    Default,
    /// An SEV-SNP VM (`KVM_X86_SNP_VM`).
    Snp,
}

/// A guest's request for the certificate table (exit
/// `KVM_EXIT_SNP_REQ_CERTS`).
///
/// Both fields come verbatim from the guest (GHCB RAX and RBX) and are
/// untrusted: `npages` may be 0 (a size query) or huge, `gpa` may point
/// anywhere. KVM only checks that `gpa` is 4 KiB aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnpCertsRequest {
    /// Guest physical address of the guest's buffer.
    pub gpa: u64,
    /// Size of the guest's buffer in 4 KiB pages.
    pub npages: u64,
}

/// The VMM's answer to an [`SnpCertsRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnpCertsCompletion {
    /// One of [`Self::RET_OK`], [`Self::RET_ENOSPC`], [`Self::RET_EAGAIN`]
    /// or [`Self::RET_EIO`]; anything else is refused.
    pub ret: u64,
    /// With `ENOSPC`: the number of 4 KiB pages the guest needs. KVM ignores
    /// it for the other results.
    pub npages: u64,
}

impl SnpCertsCompletion {
    /// Success: the table is in the guest's buffer.
    pub const RET_OK: u64 = 0;
    /// The buffer is too small; `npages` says how many pages are needed.
    pub const RET_ENOSPC: u64 = libc::ENOSPC as u64;
    /// The host is busy; the guest sleeps and retries.
    pub const RET_EAGAIN: u64 = libc::EAGAIN as u64;
    /// A permanent fault of the guest's own making. The guest disables its
    /// attestation key for the rest of its life: use sparingly.
    pub const RET_EIO: u64 = libc::EIO as u64;

    /// Success (`ret` 0).
    pub const fn ok() -> Self {
        Self {
            ret: Self::RET_OK,
            npages: 0,
        }
    }

    /// Buffer too small: the guest needs `npages` pages (`ENOSPC`).
    pub const fn need_pages(npages: u64) -> Self {
        Self {
            ret: Self::RET_ENOSPC,
            npages,
        }
    }

    /// Host busy, retry later (`EAGAIN`).
    pub const fn busy() -> Self {
        Self {
            ret: Self::RET_EAGAIN,
            npages: 0,
        }
    }

    /// Permanent guest fault (`EIO`).
    pub const fn guest_fault() -> Self {
        Self {
            ret: Self::RET_EIO,
            npages: 0,
        }
    }

    /// Checks that `ret` is one KVM accepts.
    pub fn validate(&self) -> Result<(), HypervisorError> {
        match self.ret {
            Self::RET_OK | Self::RET_ENOSPC | Self::RET_EAGAIN | Self::RET_EIO => Ok(()),
            other => Err(HypervisorError::InvalidSnpRet(other)),
        }
    }
}

/// The bytes of a port write: inline for single accesses (1, 2 or 4 bytes,
/// so an exit allocates nothing), on the heap only for string
/// instructions.
pub type PioData = smallvec::SmallVec<[u8; 8]>;

/// Why [`crate::Vcpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VmExit {
    /// The guest wrote `data` to I/O `port` (`out`; several accesses'
    /// worth of bytes for string instructions). Nothing to complete.
    ///
    /// Note: on PVM hosts RIP already points past the instruction here,
    /// elsewhere it may not; do not rely on RIP at exit time.
    IoOut {
        /// The I/O port.
        port: u16,
        /// The bytes written.
        data: PioData,
    },
    /// The guest reads `size` bytes from I/O `port` (`in`); answer with
    /// [`crate::Vcpu::complete_io_in`] before the next run.
    IoIn {
        /// The I/O port.
        port: u16,
        /// Number of bytes expected (1, 2 or 4 for a single access).
        size: u8,
    },
    /// The guest executed `hlt`.
    Hlt,
    /// The guest triple-faulted or otherwise shut down.
    Shutdown,
    /// The guest asks for the SNP certificate table; answer with
    /// [`crate::Vcpu::complete_snp_req_certs`] before the next run.
    SnpReqCerts(SnpCertsRequest),
    /// The run was cut short (immediate exit set, vCPU kicked, or `KVM_RUN`
    /// returned `EINTR`). Any pending completion has been applied.
    Interrupted,
    /// An SEV-SNP guest asks to convert `npages` pages from `gpa` between
    /// private and shared (`KVM_HC_MAP_GPA_RANGE`, after a page-state change
    /// request in its GHCB); answer with [`crate::Vcpu::complete_hypercall`]
    /// after converting them.
    MapGpaRange {
        /// First guest-physical address (page aligned).
        gpa: u64,
        /// Number of 4 KiB pages.
        npages: u64,
        /// `true`: make them private; `false`: shared.
        private: bool,
    },
    /// The guest touched memory whose private/shared attribute does not
    /// match its access (`KVM_EXIT_MEMORY_FAULT`): convert the range to
    /// what the guest used, then run again. Nothing to complete.
    MemoryFault {
        /// Guest-physical address of the range.
        gpa: u64,
        /// Size of the range in bytes.
        size: u64,
        /// Whether the guest accessed it as private memory.
        private: bool,
    },
    /// An SEV-ES/SNP guest asked to be terminated through the GHCB MSR
    /// protocol (`KVM_SYSTEM_EVENT_SEV_TERM`).
    Terminated {
        /// The GHCB termination reason set (0: general, 1: the guest's OS).
        reason_set: u8,
        /// The reason code within the set.
        reason_code: u8,
    },
    /// Any other exit, described for logs.
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_values_match_the_kernel_abi() {
        assert_eq!(SnpCertsCompletion::RET_OK, 0);
        assert_eq!(SnpCertsCompletion::RET_ENOSPC, 28);
        assert_eq!(SnpCertsCompletion::RET_EAGAIN, 11);
        assert_eq!(SnpCertsCompletion::RET_EIO, 5);
        assert_eq!(SnpCertsCompletion::need_pages(3).npages, 3);
    }

    #[test]
    fn validate_accepts_only_the_four_results() {
        for c in [
            SnpCertsCompletion::ok(),
            SnpCertsCompletion::need_pages(4),
            SnpCertsCompletion::busy(),
            SnpCertsCompletion::guest_fault(),
        ] {
            assert!(c.validate().is_ok(), "{c:?}");
        }
        for ret in [1, 22, 12, u64::MAX] {
            let c = SnpCertsCompletion { ret, npages: 0 };
            assert!(matches!(
                c.validate(),
                Err(HypervisorError::InvalidSnpRet(r)) if r == ret
            ));
        }
    }
}
