//! VMM and VM status: `GET vmm.ping` and `GET vm.info`.

use serde::{Deserialize, Serialize};

use super::certs::SnpCertsInfo;
use super::config::VmConfig;

/// `GET vmm.ping`: Cloud Hypervisor's four fields, then ours.
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
    /// What this VMM can do: the backend (`kvm` or `mock`), and
    /// [`FEATURE_SNP_REQ_CERTS`] when the host delivers the certificate
    /// exit.
    pub features: Vec<String>,
    /// The hypervisor backend: `kvm` or `mock`.
    pub hypervisor: String,
    /// Whether this host delivers real SNP certificate exits
    /// (`KVM_EXIT_SNP_REQ_CERTS`).
    pub snp_req_certs_supported: bool,
}

/// The `features` entry of a host that delivers `KVM_EXIT_SNP_REQ_CERTS`.
pub const FEATURE_SNP_REQ_CERTS: &str = "snp-req-certs";

/// A VM's lifecycle state, named as in Cloud Hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Created, not booted yet.
    Created,
    /// Booted; vCPUs run.
    Running,
    /// Shut down; it can be deleted.
    Shutdown,
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
