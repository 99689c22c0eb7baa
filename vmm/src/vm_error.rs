//! Why a VM could not be created or booted: the error of [`crate::vm`] and
//! of the launch sequence ([`crate::snp_launch_sequence`]), in a module of
//! its own so that neither imports the other.

use hypervisor::HypervisorError;

use crate::payload::PayloadError;

/// Why a VM could not be created or booted.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is structurally invalid.
    #[error("Invalid VM configuration")]
    Config(#[from] vmm_api::ConfigError),
    /// The certs configuration was refused.
    #[error("Invalid certs configuration")]
    Certs(#[from] snp_certs::config::ConfigError),
    /// The payload could not be built, loaded or attached.
    #[error("Payload refused")]
    Payload(#[from] PayloadError),
    /// The payload and `platform.sev_snp` disagree.
    #[error("The {payload} payload runs {}", if *.snp { "only in SEV-SNP VMs: add --platform sev_snp=on (platform.sev_snp)" } else { "only in VMs without SEV-SNP (it asks through the emulated doorbell)" })]
    PlatformMismatch {
        /// The payload.
        payload: &'static str,
        /// Whether it needs an SNP VM.
        snp: bool,
    },
    /// The payload needs the doorbell on this host.
    #[error(
        "The {0} payload needs snp doorbell=on: this VM has no other way to ask for certificates"
    )]
    DoorbellNeeded(&'static str),
    /// Memory is too small for the payload.
    #[error("Memory size must be at least {size} bytes for the {payload} payload")]
    MemoryTooSmall {
        /// The payload.
        payload: &'static str,
        /// The least size.
        size: u64,
    },
    /// A certs file was given for an SNP VM on a host without the exit.
    #[error(
        "This host's KVM cannot send SNP certificate requests to the VMM (KVM_SEV_SNP_ENABLE_REQ_CERTS, Linux 7.0+): a certs file cannot be served"
    )]
    NoCertsExit,
    /// Guest memory could not be allocated.
    #[error("Cannot allocate guest memory")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    /// A hypervisor call failed.
    #[error("Hypervisor call failed")]
    Hypervisor(#[from] HypervisorError),
    /// A vCPU thread could not be started.
    #[error("Cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
}
