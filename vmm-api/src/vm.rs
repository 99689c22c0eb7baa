//! VMM and VM status: `GET vmm.ping` and `GET vm.info`.

use serde::{Deserialize, Serialize};

use super::certs::SnpCertsInfo;
use super::config::VmConfig;

/// `GET vmm.ping`: Cloud Hypervisor's four fields, then ours.
///
/// `features` lists, as Cloud Hypervisor's does, the names of what this
/// VMM can do, sorted: the backend ([`FEATURE_KVM`] or [`FEATURE_MOCK`]),
/// [`FEATURE_SEV_SNP`] when SEV-SNP guests can be launched here, and
/// [`FEATURE_SNP_REQ_CERTS`] when the host delivers their certificate
/// requests to the VMM. Cloud Hypervisor names its build features (`kvm`,
/// `sev_snp`, `igvm`, ...); snp-vmm names what works on this host, and
/// never `igvm`, since it cannot load IGVM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingResponse {
    /// The build: the version, and the source revision when the build
    /// knew it (`SNP_VMM_BUILD_VERSION` at compile time).
    pub build_version: String,
    /// The VMM's version.
    pub version: String,
    /// The VMM's process id.
    pub pid: u32,
    /// What this VMM can do here, sorted (see the type's documentation).
    pub features: Vec<String>,
    /// The hypervisor backend: `kvm` or `mock`.
    pub hypervisor: String,
    /// Whether this host delivers real SNP certificate exits
    /// (`KVM_EXIT_SNP_REQ_CERTS`).
    pub snp_req_certs_supported: bool,
}

/// The `features` entry of the KVM backend, as Cloud Hypervisor's.
pub const FEATURE_KVM: &str = "kvm";
/// The `features` entry of the mock backend (`--hypervisor mock` or
/// `mock-snp`).
pub const FEATURE_MOCK: &str = "mock";
/// The `features` entry of a VMM that can launch SEV-SNP guests here, as
/// Cloud Hypervisor's (on the `mock-snp` backend too, which simulates an
/// SNP host).
pub const FEATURE_SEV_SNP: &str = "sev_snp";
/// The `features` entry of a host that delivers `KVM_EXIT_SNP_REQ_CERTS`
/// (ours).
pub const FEATURE_SNP_REQ_CERTS: &str = "snp_req_certs";

/// A VM's lifecycle state, named as in Cloud Hypervisor, with its
/// transitions as seen through the API:
///
/// ```text
/// (no VM) --vm.create--> Created --vm.boot--> Running --vm.shutdown--> Created
///                                              |  the guest ends on its own
///                                              v
///                                           Shutdown --vm.boot--> Running
/// any state --vm.delete--> (no VM)
/// ```
///
/// As in Cloud Hypervisor, `vm.shutdown` leaves the VM `Created`, ready to
/// boot again. `Shutdown` is a VM whose every vCPU ended without being
/// asked (the guest halted or terminated). `Paused` is Cloud Hypervisor's
/// name for a paused VM; snp-vmm has no `vm.pause`, so it never reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Created (or shut down through the API), not running: it can boot.
    Created,
    /// Booted; vCPUs run.
    Running,
    /// Every vCPU ended on its own; it can boot again or be deleted.
    Shutdown,
    /// Paused (Cloud Hypervisor's `vm.pause`); never reported by snp-vmm.
    Paused,
}

/// `GET vm.info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    /// The configuration the VM was created with (its certs part as at
    /// creation; `certs` shows the current one).
    pub config: VmConfig,
    /// Lifecycle state.
    pub state: VmState,
    /// One entry per vCPU.
    pub vcpus: Vec<VcpuInfo>,
    /// The current certs configuration and statistics.
    pub certs: SnpCertsInfo,
}

/// One vCPU in [`VmInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuInfo {
    /// Index from 0.
    pub id: u8,
    /// What it does, in the VMM's words (such as `running`, `halted`).
    pub state: String,
}
