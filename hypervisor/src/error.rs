//! The crate's error type.

use std::path::PathBuf;

use vmm_sys_util::errno::Error as Errno;

/// Everything that can go wrong in a backend.
///
/// Variants carrying an [`Errno`] expose it as their `#[source]`; use
/// [`HypervisorError::errno`] to get the raw number.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` is missing or cannot be opened; callers may fall back to
    /// the mock backend.
    #[error("KVM is not available at {}", path.display())]
    KvmUnavailable {
        /// The device path that was tried.
        path: PathBuf,
        /// Why opening it failed.
        #[source]
        source: Errno,
    },
    /// The host cannot run SEV-SNP VMs (or lacks the asked-for SNP feature).
    #[error("Host does not support SEV-SNP: {reason}")]
    SnpUnsupported {
        /// What is missing.
        reason: &'static str,
        /// The kernel's answer, when there was one.
        #[source]
        source: Option<Errno>,
    },
    /// The SEV device an SNP VM needs could not be opened read-write.
    #[error(
        "Cannot open {} read-write: an SNP VM sends its launch commands and guest requests to firmware through it",
        path.display()
    )]
    SevDeviceUnavailable {
        /// The device path that was tried.
        path: PathBuf,
        /// Why opening it failed.
        #[source]
        source: std::io::Error,
    },
    /// The SNP certificate-request attribute query failed unexpectedly.
    #[error("Failed to query SNP certificate-request support")]
    ProbeSnpReqCerts(#[source] Errno),
    /// `KVM_CREATE_VM` failed.
    #[error("Failed to create VM")]
    CreateVm(#[source] Errno),
    /// `KVM_SEV_INIT2` on a new SNP VM failed.
    #[error("Failed to initialise the SEV-SNP context")]
    SnpInit(#[source] Errno),
    /// Registering a guest memory region failed.
    #[error("Failed to map guest memory at {gpa:#x} ({size:#x} bytes)")]
    MapMemory {
        /// Guest physical address of the region.
        gpa: u64,
        /// Size of the region in bytes.
        size: u64,
        /// The kernel's answer.
        #[source]
        source: Errno,
    },
    /// The SNP certificate-request exit was asked for on a VM that is not an
    /// SEV-SNP VM.
    #[error("VM is not an SEV-SNP VM")]
    NotSnpVm,
    /// The SNP certificate-request exit was asked for after a vCPU had been
    /// created; KVM only allows it before.
    #[error("SNP certificate requests must be enabled before any vCPU is created")]
    VcpusAlreadyCreated,
    /// KVM refused `KVM_SEV_SNP_ENABLE_REQ_CERTS` with `EINVAL` (a kernel
    /// without the feature, or a VM it considers unsuitable).
    #[error("KVM refused to enable SNP certificate requests")]
    SnpReqCertsRejected(#[source] Errno),
    /// `KVM_SEV_SNP_ENABLE_REQ_CERTS` failed for another reason.
    #[error("Failed to enable SNP certificate requests")]
    EnableSnpReqCerts(#[source] Errno),
    /// `KVM_CREATE_VCPU` failed.
    #[error("Failed to create vCPU {id}")]
    CreateVcpu {
        /// The vCPU number.
        id: u8,
        /// The kernel's answer.
        #[source]
        source: Errno,
    },
    /// Installing the kick signal handler failed.
    #[error("Failed to install the vCPU kick signal handler")]
    KickHandler(#[source] Errno),
    /// Reading or writing vCPU registers failed.
    #[error("Failed to access vCPU registers")]
    Registers(#[source] Errno),
    /// `KVM_RUN` failed with something other than `EINTR`.
    #[error("Failed to run vCPU")]
    Run(#[source] Errno),
    /// A completion was given without a matching pending exit.
    #[error("No {0} exit is pending")]
    NoPendingExit(&'static str),
    /// The data given for an `IN` has the wrong length.
    #[error("IN on port {port:#x} needs {expected} bytes, got {got}")]
    IoInLength {
        /// The port the guest read.
        port: u16,
        /// Bytes the guest expects.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The `ret` of an SNP certificate completion is not one KVM accepts
    /// (KVM would fail the next `KVM_RUN` with `EINVAL`).
    #[error("Invalid SNP certificate request result {0}")]
    InvalidSnpRet(u64),
    /// The kernel's `IN` buffer lies outside the `kvm_run` mapping.
    #[error("KVM reported an I/O buffer outside kvm_run")]
    BadIoBuffer,
    /// An SNP launch step came out of the order the kernel requires.
    #[error("SNP launch out of order: {0}")]
    SnpLaunchOrder(&'static str),
    /// An SNP launch command failed.
    #[error("{command} failed (firmware error {fw_error:#x})")]
    SnpCommand {
        /// The command, such as `KVM_SEV_SNP_LAUNCH_UPDATE`.
        command: &'static str,
        /// The firmware's error code (0: none reported).
        fw_error: u32,
        /// The kernel's answer.
        #[source]
        source: Errno,
    },
    /// `KVM_CREATE_GUEST_MEMFD` or `KVM_SET_USER_MEMORY_REGION2` failed.
    #[error("Failed to back guest memory at {gpa:#x} with guest_memfd")]
    GuestMemfd {
        /// Guest physical address of the region.
        gpa: u64,
        /// The kernel's answer.
        #[source]
        source: Errno,
    },
    /// `KVM_SET_MEMORY_ATTRIBUTES` failed.
    #[error("Failed to make {len:#x} bytes at {gpa:#x} {what}")]
    MemoryAttributes {
        /// First address.
        gpa: u64,
        /// Bytes.
        len: u64,
        /// `private` or `shared`.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: Errno,
    },
    /// `pthread_kill` failed while kicking a vCPU thread.
    #[error("Failed to signal the vCPU thread")]
    Kick(#[source] Errno),
}

impl HypervisorError {
    /// The errno behind this error, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::KvmUnavailable { source, .. }
            | Self::MapMemory { source, .. }
            | Self::CreateVcpu { source, .. }
            | Self::SnpCommand { source, .. }
            | Self::GuestMemfd { source, .. }
            | Self::MemoryAttributes { source, .. } => Some(source.errno()),
            Self::SnpUnsupported { source, .. } => source.map(|e| e.errno()),
            Self::SevDeviceUnavailable { source, .. } => source.raw_os_error(),
            Self::ProbeSnpReqCerts(e)
            | Self::CreateVm(e)
            | Self::SnpInit(e)
            | Self::SnpReqCertsRejected(e)
            | Self::EnableSnpReqCerts(e)
            | Self::KickHandler(e)
            | Self::Registers(e)
            | Self::Run(e)
            | Self::Kick(e) => Some(e.errno()),
            Self::NotSnpVm
            | Self::SnpLaunchOrder(_)
            | Self::VcpusAlreadyCreated
            | Self::NoPendingExit(_)
            | Self::IoInLength { .. }
            | Self::InvalidSnpRet(_)
            | Self::BadIoBuffer => None,
        }
    }
}
