//! The SNP guest as a payload of the VMM.

use std::sync::Arc;

use hypervisor::mock::MockGuest;
use hypervisor::{GuestMemoryMmap, HypervisorError, Vcpu};
use vm_memory::{Bytes, GuestAddress};
use vmm::payload::{DeviceContext, LaunchRange, Payload, PayloadError, RequestObserver, VcpuStart};
use vmm::pio::PioBus;

use super::layout::{self, CODE_GPA, MIN_MEMORY, PML4_GPA};
use super::{MockSnpGuest, SnpError, program};
use crate::attest::AttestParams;
use crate::devices::ReportDevices;
use crate::report_check::AttestLog;

/// The SNP attestation guest on vCPU 0; the other vCPUs stay idle (they
/// never run, so they need no code, GHCB or page tables of their own).
pub struct SnpPayload {
    params: AttestParams,
    code: Vec<u8>,
    page_tables: Vec<u8>,
    devices: ReportDevices,
}

impl std::fmt::Debug for SnpPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpPayload")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The SNP guest for `params` with the C-bit at `c_bit` (see
/// [`layout`](super::layout); [`super::DEFAULT_C_BIT`] unless the host's
/// CPUID `0x8000_001F` EBX\[5:0\] says otherwise), recording its reports in
/// its own log ([`SnpPayload::log`]). Fails for a C-bit outside 32..=51 or
/// a program that does not assemble.
pub fn snp_payload(params: AttestParams, c_bit: u8) -> Result<SnpPayload, PayloadError> {
    SnpPayload::new(params, c_bit, Arc::new(AttestLog::default()), false)
}

impl SnpPayload {
    /// The payload, recording into `log` and, if `print_reports`, printing
    /// each report on stdout.
    pub fn new(
        params: AttestParams,
        c_bit: u8,
        log: Arc<AttestLog>,
        print_reports: bool,
    ) -> Result<SnpPayload, PayloadError> {
        let load = |e: SnpError| PayloadError::Load(Box::new(e));
        Ok(SnpPayload {
            params,
            code: program(&params).map_err(load)?,
            page_tables: layout::page_tables(c_bit).map_err(load)?,
            devices: ReportDevices::new(log, print_reports),
        })
    }

    /// The log of this guest's reports.
    pub fn log(&self) -> Arc<AttestLog> {
        Arc::clone(self.devices.log())
    }
}

impl Payload for SnpPayload {
    fn name(&self) -> &'static str {
        "snp-attest"
    }

    fn min_memory(&self) -> u64 {
        MIN_MEMORY
    }

    fn needs_doorbell(&self) -> bool {
        false
    }

    fn needs_snp(&self) -> bool {
        true
    }

    fn snp_launch_ranges(&self) -> Vec<LaunchRange> {
        layout::launch_ranges()
    }

    fn load(&self, memory: &GuestMemoryMmap) -> Result<(), PayloadError> {
        let load = |e: vm_memory::GuestMemoryError| PayloadError::Load(Box::new(e));
        memory
            .write_slice(&self.code, GuestAddress(CODE_GPA))
            .map_err(load)?;
        memory
            .write_slice(&self.page_tables, GuestAddress(PML4_GPA))
            .map_err(load)
    }

    fn setup_vcpu(&self, id: u8, vcpu: &mut dyn Vcpu) -> Result<VcpuStart, HypervisorError> {
        if id != 0 {
            return Ok(VcpuStart::Idle);
        }
        vcpu.setup_long_mode(CODE_GPA, PML4_GPA)?;
        Ok(VcpuStart::Run)
    }

    fn mock_guest(&self, id: u8) -> Option<Box<dyn MockGuest>> {
        (id == 0).then(|| Box::new(MockSnpGuest::new(self.params)) as Box<dyn MockGuest>)
    }

    fn attach(&self, ctx: &DeviceContext, bus: &mut PioBus) -> Result<(), PayloadError> {
        self.devices.attach(ctx, bus)
    }

    fn observer(&self) -> Option<Arc<dyn RequestObserver>> {
        self.devices.observer()
    }
}
