//! The attestation guest in Rust, for the mock hypervisor backend.

use hypervisor::VmExit;
use hypervisor::mock::{MockCompletion, MockGuest};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::GuestError;
use super::layout::{
    BUFFER_FILL, BUFFER_GPA, BUFFER_SIZE, MAILBOX_GPA, REPORT_GPA, RET_UNANSWERED,
};
use super::logic::{AttestMachine, AttestParams, Step};
use crate::report::{DELAY_PORT, REPORT_PORT, write_report};
use vmm::doorbell::{DOORBELL_PORT, Mailbox};

/// What the guest's previous exit was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Nothing yet, a pause or a report: go on.
    Continue,
    /// The doorbell: the answer is in the mailbox.
    Rang,
    /// `hlt`, or a fault.
    Halted,
}

/// The attestation guest for a mock vCPU: [`AttestMachine`] performing its
/// steps on guest memory and returning the port writes [`super::program`]
/// makes, with the same memory layout.
///
/// It reads the VMM's answer from the mailbox when it runs after ringing
/// (the VMM must have written it before running the vCPU again, as on
/// KVM). If guest memory does not hold its layout it stops with
/// [`VmExit::Other`] naming the fault, then returns [`VmExit::Hlt`].
#[derive(Debug, Clone)]
pub struct MockAttestGuest {
    machine: AttestMachine,
    last: Last,
}

impl MockAttestGuest {
    /// A guest that will run with `params`.
    pub fn new(params: AttestParams) -> Self {
        Self {
            machine: AttestMachine::new(params),
            last: Last::Continue,
        }
    }

    fn step(&mut self, memory: &GuestMemoryMmap) -> Result<VmExit, GuestError> {
        let step = match self.last {
            Last::Continue => self.machine.resume(),
            Last::Rang => {
                let mailbox = Mailbox::read(memory, MAILBOX_GPA).map_err(GuestError::Mailbox)?;
                // Only a successful answer needs the table.
                let mut buffer = Vec::new();
                if mailbox.ret == 0 {
                    buffer.resize(BUFFER_SIZE as usize, 0);
                    memory
                        .read_slice(&mut buffer, GuestAddress(BUFFER_GPA))
                        .map_err(|source| GuestError::Memory {
                            what: "buffer",
                            gpa: BUFFER_GPA,
                            source,
                        })?;
                }
                self.machine.answer(mailbox.ret, mailbox.npages, &buffer)
            }
            Last::Halted => Step::Halt,
        };
        self.perform(step, memory)
    }

    fn perform(&mut self, step: Step, memory: &GuestMemoryMmap) -> Result<VmExit, GuestError> {
        let (port, value) = match step {
            Step::Ring { npages } => {
                let write = |gpa: u64, bytes: &[u8], what| {
                    memory
                        .write_slice(bytes, GuestAddress(gpa))
                        .map_err(|source| GuestError::Memory { what, gpa, source })
                };
                if npages > 0 {
                    write(BUFFER_GPA, &[BUFFER_FILL; BUFFER_SIZE as usize], "buffer")?;
                }
                let mailbox: Vec<u8> = [BUFFER_GPA, npages, RET_UNANSWERED]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                write(MAILBOX_GPA, &mailbox, "mailbox")?;
                self.last = Last::Rang;
                (DOORBELL_PORT, MAILBOX_GPA as u32)
            }
            Step::Delay { ms } => {
                self.last = Last::Continue;
                (DELAY_PORT, ms)
            }
            Step::Report(report) => {
                write_report(memory, REPORT_GPA, &report).map_err(|source| GuestError::Memory {
                    what: "report",
                    gpa: REPORT_GPA,
                    source,
                })?;
                self.last = Last::Continue;
                (REPORT_PORT, REPORT_GPA as u32)
            }
            Step::Halt => {
                self.last = Last::Halted;
                return Ok(VmExit::Hlt);
            }
        };
        Ok(VmExit::IoOut {
            port,
            data: hypervisor::PioData::from_slice(&value.to_le_bytes()),
        })
    }
}

impl MockGuest for MockAttestGuest {
    fn next_exit(&mut self, _last: &MockCompletion, memory: &GuestMemoryMmap) -> VmExit {
        self.step(memory).unwrap_or_else(|e| {
            self.last = Last::Halted;
            let cause = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            VmExit::Other(format!("mock attestation guest fault: {e}{cause}"))
        })
    }
}
