//! The test guests as payloads of the VMM: the factory `snp-vmm` passes to
//! [`vmm::api_impl::Vmm`], and the attestation guest's payload.

use std::sync::{Arc, Mutex, PoisonError};

use hypervisor::mock::{MockGuest, ScriptedGuest};
use hypervisor::{GuestMemoryMmap, HypervisorError, Vcpu, VmExit};
use vm_memory::{Bytes, GuestAddress};
use vmm::payload::{
    DeviceContext, Payload, PayloadError, PayloadFactory, RequestObserver, VcpuStart,
};
use vmm::pio::PioBus;
use vmm_api::TestGuestConfig;

use crate::attest::{self, AttestParams, MockAttestGuest};
use crate::devices::ReportDevices;
use crate::report_check::AttestLog;

/// Where vCPUs other than 0 start: a single `hlt` (0xf4). Only vCPU 0 runs
/// the guest; the others would share its mailbox and buffer.
pub const HALT_STUB_GPA: u64 = 0x500;

/// The built-in test guests. Keeps the log of every attestation guest it
/// built, so the caller can summarise a run.
#[derive(Debug, Default)]
pub struct TestGuests {
    print_reports: bool,
    logs: Mutex<Vec<Arc<AttestLog>>>,
}

impl TestGuests {
    /// A factory; `print_reports` prints each guest report on stdout.
    pub fn new(print_reports: bool) -> TestGuests {
        TestGuests {
            print_reports,
            logs: Mutex::new(Vec::new()),
        }
    }

    /// A log for a new guest, kept for [`Self::last_log`].
    fn new_log(&self) -> Arc<AttestLog> {
        let log = Arc::new(AttestLog::default());
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&log));
        log
    }

    /// The log of the attestation guest built last.
    pub fn last_log(&self) -> Option<Arc<AttestLog>> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .cloned()
    }
}

impl PayloadFactory for TestGuests {
    fn build(&self, config: &TestGuestConfig) -> Result<Box<dyn Payload>, PayloadError> {
        match *config {
            TestGuestConfig::Attest {
                requests,
                interval_ms,
                retry_ms,
                max_busy_retries,
            } => {
                let params = AttestParams {
                    requests,
                    interval_ms,
                    retry_ms,
                    max_busy_retries,
                };
                Ok(Box::new(AttestPayload {
                    params,
                    devices: ReportDevices::new(self.new_log(), self.print_reports),
                }))
            }
            TestGuestConfig::SnpAttest {
                requests,
                interval_ms,
                retry_ms,
                max_busy_retries,
                c_bit,
            } => {
                let params = AttestParams {
                    requests,
                    interval_ms,
                    retry_ms,
                    max_busy_retries,
                };
                // The VMM fills in the host's position before it builds
                // the payload; without it there is nothing to assume.
                let c_bit = c_bit.ok_or_else(|| {
                    PayloadError::Invalid(
                        "the SNP guest needs the host's C-bit position (c-bit=N)".to_owned(),
                    )
                })?;
                self.snp_attest_c_bit(params, c_bit)
            }
        }
    }
}

/// The real-mode attestation guest on vCPU 0, halted stubs elsewhere.
struct AttestPayload {
    params: AttestParams,
    devices: ReportDevices,
}

impl Payload for AttestPayload {
    fn name(&self) -> &'static str {
        "attest"
    }

    fn min_memory(&self) -> u64 {
        attest::MIN_MEMORY
    }

    fn needs_doorbell(&self) -> bool {
        true
    }

    fn load(&self, memory: &GuestMemoryMmap) -> Result<(), PayloadError> {
        let load = |e: Box<dyn std::error::Error + Send + Sync>| PayloadError::Load(e);
        let code = attest::program(&self.params).map_err(|e| load(Box::new(e)))?;
        memory
            .write_slice(&code, GuestAddress(attest::CODE_GPA))
            .map_err(|e| load(Box::new(e)))?;
        memory
            .write_slice(&[0xf4], GuestAddress(HALT_STUB_GPA))
            .map_err(|e| load(Box::new(e)))
    }

    fn setup_vcpu(&self, id: u8, vcpu: &mut dyn Vcpu) -> Result<VcpuStart, HypervisorError> {
        let entry = if id == 0 {
            attest::CODE_GPA
        } else {
            HALT_STUB_GPA
        };
        vcpu.setup_real_mode(entry)?;
        Ok(VcpuStart::Run)
    }

    fn mock_guest(&self, id: u8) -> Option<Box<dyn MockGuest>> {
        Some(if id == 0 {
            Box::new(MockAttestGuest::new(self.params))
        } else {
            Box::new(ScriptedGuest::new([VmExit::Hlt]))
        })
    }

    fn attach(&self, ctx: &DeviceContext, bus: &mut PioBus) -> Result<(), PayloadError> {
        self.devices.attach(ctx, bus)
    }

    fn observer(&self) -> Option<Arc<dyn RequestObserver>> {
        self.devices.observer()
    }
}

/// The SEV-SNP guest ([`crate::snp`]).
impl TestGuests {
    /// The SNP attestation guest for `params` with the C-bit at `c_bit`
    /// (the host's CPUID `0x8000_001F` EBX\[5:0\]). Fails for a position
    /// outside 32..=51.
    pub fn snp_attest_c_bit(
        &self,
        params: AttestParams,
        c_bit: u8,
    ) -> Result<Box<dyn Payload>, PayloadError> {
        let payload =
            crate::snp::SnpPayload::new(params, c_bit, self.new_log(), self.print_reports)?;
        Ok(Box::new(payload))
    }
}
