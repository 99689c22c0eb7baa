//! Runs an SNP guest (the Rust twin, or in tests the machine code in an
//! emulator) against scripted answers, on the kernel model.
//!
//! Test support, independent of the VMM's request handler: [`run_mock`]
//! launches an SNP VM on a fresh [`MockHypervisor`] the way the VMM does
//! (the guest's image loaded, memory private, the certificate exit
//! enabled, vCPU 0 in long mode, the launch ranges updated), puts the guest
//! on vCPU 0 and runs it until it terminates, answering each page
//! conversion with `convert_ret` and each certificate request with what a
//! closure says ([`Answer`], the real-mode harness's, given the request as
//! a mailbox `{gpa, npages}`), and records every exit it made
//! ([`SnpEvent`]). Pauses are recorded, not slept.

use std::sync::Arc;

use hypervisor::mock::{KernelModelConfig, MockGuest, MockHypervisor};
use hypervisor::{Hypervisor, SnpCertsCompletion, VmExit, VmType};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::doorbell::Mailbox;
use vmm::payload::Payload;

use super::layout::{CODE_GPA, FW_ERROR_OFFSET, MIN_MEMORY, PML4_GPA};
use super::{SnpError, snp_payload};
use crate::attest::AttestParams;
use crate::attest::harness::Answer;
use crate::report::{DELAY_PORT, GuestReport, REPORT_PORT, read_report};

/// One exit of the guest, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnpEvent {
    /// A page conversion.
    Convert {
        /// First page.
        gpa: u64,
        /// Pages.
        npages: u64,
        /// To private (true) or shared.
        private: bool,
    },
    /// A certificate request `{gpa, npages}`.
    Request(hypervisor::SnpCertsRequest),
    /// A pause of this many milliseconds.
    Delay(u32),
    /// A report, with the firmware error word after it.
    Report(GuestReport, u32),
    /// The termination, which ends the run.
    Terminated {
        /// The reason set.
        reason_set: u8,
        /// The reason code.
        reason_code: u8,
    },
}

/// Everything the guest did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpTranscript {
    /// The exits, the last one the end of the run.
    pub events: Vec<SnpEvent>,
}

impl SnpTranscript {
    /// The reports, in order.
    pub fn reports(&self) -> Vec<GuestReport> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SnpEvent::Report(r, _) => Some(*r),
                _ => None,
            })
            .collect()
    }

    /// The certificate requests' page counts, in order.
    pub fn requests(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SnpEvent::Request(r) => Some(r.npages),
                _ => None,
            })
            .collect()
    }

    /// The pauses, in order.
    pub fn delays(&self) -> Vec<u32> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SnpEvent::Delay(ms) => Some(*ms),
                _ => None,
            })
            .collect()
    }
}

/// The `u32` of a 4-byte port write.
fn out_value(port: u16, data: &[u8]) -> Result<u32, SnpError> {
    let bytes: [u8; 4] = data
        .try_into()
        .map_err(|_| SnpError::UnexpectedExit(format!("{}-byte OUT to {port:#x}", data.len())))?;
    Ok(u32::from_le_bytes(bytes))
}

/// Runs `guest` (built for `params`) on vCPU 0 of a fresh SNP VM of the
/// mock with [`MIN_MEMORY`] of RAM and the model's default knobs, at most
/// `max_exits` exits: conversions answered `convert_ret`, certificate
/// requests as `answer` says.
pub fn run_mock<F>(
    guest: impl MockGuest + 'static,
    params: AttestParams,
    convert_ret: u64,
    max_exits: usize,
    answer: F,
) -> Result<SnpTranscript, SnpError>
where
    F: FnMut(&Mailbox) -> Answer,
{
    run_mock_with(
        guest,
        params,
        KernelModelConfig::default(),
        convert_ret,
        max_exits,
        answer,
    )
}

/// [`run_mock`] on a kernel model with the knobs `model`.
pub fn run_mock_with<F>(
    guest: impl MockGuest + 'static,
    params: AttestParams,
    model: KernelModelConfig,
    convert_ret: u64,
    max_exits: usize,
    mut answer: F,
) -> Result<SnpTranscript, SnpError>
where
    F: FnMut(&Mailbox) -> Answer,
{
    let hv = MockHypervisor::new()
        .with_kernel_model(model)
        .with_guest(0, guest);
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIN_MEMORY as usize)])
        .map_err(SnpError::Ram)?;
    let payload =
        snp_payload(params, model.c_bit).map_err(|e| SnpError::UnexpectedExit(e.to_string()))?;
    payload
        .load(&memory)
        .map_err(|e| SnpError::UnexpectedExit(e.to_string()))?;
    let vm = hv.create_vm(VmType::Snp).map_err(SnpError::Hypervisor)?;
    vm.map_memory(Arc::new(memory.clone()))
        .map_err(SnpError::Hypervisor)?;
    vm.enable_snp_req_certs().map_err(SnpError::Hypervisor)?;
    let mut vcpu = vm.create_vcpu(0).map_err(SnpError::Hypervisor)?;
    vcpu.setup_long_mode(CODE_GPA, PML4_GPA)
        .map_err(SnpError::Hypervisor)?;
    let snp = vm
        .snp()
        .ok_or(SnpError::UnexpectedExit("no SNP VM".to_owned()))?;
    vmm::snp_launch_sequence::launch(
        snp,
        &payload.snp_launch_ranges(),
        hypervisor::DEFAULT_SNP_POLICY,
        [0; 32],
    )
    .map_err(|e| SnpError::UnexpectedExit(vmm_api::error_chain(&e)))?;
    let mut events = Vec::new();
    for _ in 0..max_exits {
        let exit = vcpu.run().map_err(SnpError::Hypervisor)?;
        match exit {
            VmExit::MapGpaRange {
                gpa,
                npages,
                private,
            } => {
                events.push(SnpEvent::Convert {
                    gpa,
                    npages,
                    private,
                });
                vcpu.complete_hypercall(convert_ret)
                    .map_err(SnpError::Hypervisor)?;
            }
            VmExit::SnpReqCerts(request) => {
                events.push(SnpEvent::Request(request));
                let mailbox = Mailbox {
                    gpa: request.gpa,
                    npages: request.npages,
                    ret: 0,
                };
                let completion = match answer(&mailbox) {
                    Answer::Ignore => None,
                    Answer::Reply { ret, npages } => Some(SnpCertsCompletion { ret, npages }),
                    Answer::Deliver(table) => {
                        memory
                            .write_slice(&table, GuestAddress(request.gpa))
                            .map_err(|source| SnpError::Memory {
                                what: "buffer",
                                gpa: request.gpa,
                                source,
                            })?;
                        Some(SnpCertsCompletion::ok())
                    }
                };
                if let Some(c) = completion {
                    vcpu.complete_snp_req_certs(c)
                        .map_err(SnpError::Hypervisor)?;
                }
            }
            VmExit::IoOut { port, data } => {
                let value = out_value(port, &data)?;
                let gpa = u64::from(value);
                match port {
                    DELAY_PORT => events.push(SnpEvent::Delay(value)),
                    REPORT_PORT => {
                        let memory_error = |source| SnpError::Memory {
                            what: "report",
                            gpa,
                            source,
                        };
                        let report = read_report(&memory, gpa).map_err(memory_error)?;
                        let fw_error: u32 = memory
                            .read_obj(GuestAddress(gpa + FW_ERROR_OFFSET))
                            .map_err(memory_error)?;
                        events.push(SnpEvent::Report(report, fw_error));
                    }
                    other => {
                        return Err(SnpError::UnexpectedExit(format!("OUT to port {other:#x}")));
                    }
                }
            }
            VmExit::Terminated {
                reason_set,
                reason_code,
            } => {
                events.push(SnpEvent::Terminated {
                    reason_set,
                    reason_code,
                });
                return Ok(SnpTranscript { events });
            }
            VmExit::Interrupted => {}
            other => return Err(SnpError::UnexpectedExit(format!("{other:?}"))),
        }
    }
    Err(SnpError::TooManyExits(max_exits))
}
