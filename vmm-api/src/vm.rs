//! VMM and VM status: `GET vmm.ping` and `GET vm.info`.

use serde::{Deserialize, Serialize};

use super::certs::SnpCertsInfo;
use super::config::VmConfig;

/// `GET vmm.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingResponse {
    /// The VMM's version.
    pub version: String,
    /// The VMM's process id.
    pub pid: u32,
    /// The hypervisor backend: `kvm` or `mock`.
    pub hypervisor: String,
    /// Whether this host delivers real SNP certificate exits
    /// (`KVM_EXIT_SNP_REQ_CERTS`).
    pub snp_req_certs_supported: bool,
}

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
