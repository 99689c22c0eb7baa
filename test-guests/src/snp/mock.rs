//! The SNP guest in Rust, for the mock hypervisor backend.
//!
//! [`MockSnpGuest`] makes the exits the VMM sees from the machine code of
//! [`super::program`] on KVM, in the same order, with the same memory
//! writes to the shared pages:
//!
//! 1. one [`VmExit::MapGpaRange`] (`private: false`, one page) per page
//!    state change, for each of [`SHARED_PAGES`] in order (the GHCB
//!    registration between the first and the second is answered by KVM
//!    itself, PVALIDATE by the CPU: neither reaches the VMM);
//! 2. then [`AttestMachine`]'s steps: a [`VmExit::SnpReqCerts`] for each
//!    extended guest request (after filling the buffer when `npages > 0`),
//!    an [`VmExit::IoOut`] to the delay port for each pause, and after
//!    writing the report an `IoOut` to the report port with its GPA;
//! 3. [`VmExit::Terminated`] with reason set 0 and [`TERM_DONE`] (or the
//!    reason of a failed page state change), then the same for ever.
//!
//! The VMM's answer to a certificate request reaches it the way KVM passes
//! it to the guest ([`kvm_exit_info_2`]), and it decodes that the way the
//! machine code does ([`decode_ext_result`]). With no firmware here, a
//! request KVM would pass on is answered by [`MockSnpGuest::with_firmware_error`]'s
//! error (0 by default; real firmware refuses the guest's unencrypted
//! message, so on hardware the report's firmware error is non-zero).

use hypervisor::VmExit;
use hypervisor::mock::{MockCompletion, MockGuest};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::SnpError;
use super::ghcb::{TERM_DONE, TERM_PSC, TERM_SET_GENERAL, decode_ext_result, kvm_exit_info_2};
use super::layout::{BUFFER_GPA, BUFFER_SIZE, FW_ERROR_OFFSET, REPORT_GPA, SHARED_PAGES};
use crate::attest::{AttestMachine, AttestParams, BUFFER_FILL, Step};
use crate::report::{DELAY_PORT, REPORT_PORT, write_report};

/// Where the guest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Asking for page `n` of [`SHARED_PAGES`] to become shared.
    Share(usize),
    /// Waiting for the answer to page `n`'s conversion.
    Shared(usize),
    /// Running the requests; nothing pending.
    Continue,
    /// Asked for certificates with this many pages.
    Asked(u64),
    /// Terminated with this reason code.
    Terminated(u8),
}

/// The SNP guest for a mock vCPU (see the [module docs](self)).
///
/// If guest memory does not hold its layout it stops with
/// [`VmExit::Other`] naming the fault, then terminates.
#[derive(Debug, Clone)]
pub struct MockSnpGuest {
    machine: AttestMachine,
    phase: Phase,
    firmware_error: u32,
    /// The firmware error of the last request passed on in the request in
    /// progress (the report's ninth word).
    last_fw_error: u32,
}

impl MockSnpGuest {
    /// A guest that will run with `params`.
    pub fn new(params: AttestParams) -> Self {
        Self {
            machine: AttestMachine::new(params),
            phase: Phase::Share(0),
            firmware_error: 0,
            last_fw_error: 0,
        }
    }

    /// The error the (absent) firmware gives each request KVM passes on.
    pub fn with_firmware_error(mut self, error: u32) -> Self {
        self.firmware_error = error;
        self
    }

    fn terminate(&mut self, reason_code: u8) -> VmExit {
        self.phase = Phase::Terminated(reason_code);
        VmExit::Terminated {
            reason_set: TERM_SET_GENERAL,
            reason_code,
        }
    }

    fn step(
        &mut self,
        last: &MockCompletion,
        memory: &GuestMemoryMmap,
    ) -> Result<VmExit, SnpError> {
        let step = match self.phase {
            Phase::Share(n) => return Ok(self.share(n)),
            Phase::Shared(n) => {
                if *last != (MockCompletion::Hypercall { ret: Some(0) }) {
                    return Ok(self.terminate(TERM_PSC));
                }
                if n + 1 < SHARED_PAGES.len() {
                    return Ok(self.share(n + 1));
                }
                self.machine.resume()
            }
            Phase::Continue => self.machine.resume(),
            Phase::Asked(npages) => self.answered(last, npages, memory)?,
            Phase::Terminated(code) => return Ok(self.terminate(code)),
        };
        self.perform(step, memory)
    }

    fn share(&mut self, n: usize) -> VmExit {
        self.phase = Phase::Shared(n);
        VmExit::MapGpaRange {
            gpa: SHARED_PAGES[n],
            npages: 1,
            private: false,
        }
    }

    /// What the guest decides after the VMM answered its request for
    /// `npages` pages.
    fn answered(
        &mut self,
        last: &MockCompletion,
        npages: u64,
        memory: &GuestMemoryMmap,
    ) -> Result<Step, SnpError> {
        let completion = match last {
            MockCompletion::SnpReqCerts { completion, .. } => *completion,
            _ => None,
        };
        let result = decode_ext_result(kvm_exit_info_2(completion, self.firmware_error));
        // KVM sets RBX only for ENOSPC; otherwise it is what the guest put.
        let rbx = match completion {
            Some(c) if c.ret == hypervisor::SnpCertsCompletion::RET_ENOSPC => c.npages,
            _ => npages,
        };
        let mut buffer = Vec::new();
        if result.ret == 0 {
            self.last_fw_error = result.fw_error;
            buffer.resize(BUFFER_SIZE as usize, 0);
            memory
                .read_slice(&mut buffer, GuestAddress(BUFFER_GPA))
                .map_err(|source| SnpError::Memory {
                    what: "buffer",
                    gpa: BUFFER_GPA,
                    source,
                })?;
        }
        Ok(self.machine.answer(result.ret, rbx, &buffer))
    }

    fn perform(&mut self, step: Step, memory: &GuestMemoryMmap) -> Result<VmExit, SnpError> {
        let write = |gpa: u64, bytes: &[u8], what| {
            memory
                .write_slice(bytes, GuestAddress(gpa))
                .map_err(|source| SnpError::Memory { what, gpa, source })
        };
        let (port, value) = match step {
            Step::Ring { npages } => {
                if npages > 0 {
                    write(BUFFER_GPA, &[BUFFER_FILL; BUFFER_SIZE as usize], "buffer")?;
                }
                self.phase = Phase::Asked(npages);
                return Ok(VmExit::SnpReqCerts(hypervisor::SnpCertsRequest {
                    gpa: BUFFER_GPA,
                    npages,
                }));
            }
            Step::Delay { ms } => (DELAY_PORT, ms),
            Step::Report(report) => {
                write_report(memory, REPORT_GPA, &report).map_err(|source| SnpError::Memory {
                    what: "report",
                    gpa: REPORT_GPA,
                    source,
                })?;
                let fw_error = std::mem::take(&mut self.last_fw_error);
                write(
                    REPORT_GPA + FW_ERROR_OFFSET,
                    &fw_error.to_le_bytes(),
                    "report",
                )?;
                (REPORT_PORT, REPORT_GPA as u32)
            }
            Step::Halt => return Ok(self.terminate(TERM_DONE)),
        };
        self.phase = Phase::Continue;
        Ok(VmExit::IoOut {
            port,
            data: value.to_le_bytes().to_vec(),
        })
    }
}

impl MockGuest for MockSnpGuest {
    fn next_exit(&mut self, last: &MockCompletion, memory: &GuestMemoryMmap) -> VmExit {
        self.step(last, memory).unwrap_or_else(|e| {
            self.phase = Phase::Terminated(TERM_DONE);
            let cause = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            VmExit::Other(format!("mock SNP guest fault: {e}{cause}"))
        })
    }
}
