//! Mock vCPUs and the guests that drive them.
//!
//! A vCPU of an SNP VM whose guest is an [`SevGuest`] runs it against the
//! kernel model ([`super::kernel_model::vmgexit`]): each `run` first
//! completes the pending exit with what the VMM answered (failing as
//! `KVM_RUN` fails), then, unless the run is cut short, runs the guest
//! through its VMGEXITs until one needs the VMM.

use std::collections::VecDeque;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::errno::Error as Errno;

use super::MockEvent;
use super::kernel_model::vmgexit::{Outcome, SevVcpuModel, VmmAnswer};
use super::sev_guest::{GuestStop, SevGuest};
use super::vm::MockVmShared;
use crate::kick::KickTarget;
use crate::{HypervisorError, SnpCertsCompletion, SnpCertsRequest, Vcpu, VcpuKicker, VmExit};

/// What the VMM answered to the guest's previous exit, handed to
/// [`MockGuest::next_exit`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MockCompletion {
    /// First step, or the previous exit needed no answer.
    #[default]
    Nothing,
    /// The previous exit was an `IN`.
    IoIn {
        /// The port read.
        port: u16,
        /// The data the VMM supplied, or `None` if it ran the vCPU without
        /// completing the `IN` (a VMM bug; real hardware would see stale
        /// bytes).
        data: Option<Vec<u8>>,
    },
    /// The previous exit was a page conversion request
    /// ([`VmExit::MapGpaRange`]).
    Hypercall {
        /// The VMM's answer, or `None` if it ran the vCPU without one.
        ret: Option<u64>,
    },
    /// The previous exit was a certificate request.
    SnpReqCerts {
        /// The request.
        request: SnpCertsRequest,
        /// The VMM's answer, or `None` if it ran the vCPU without answering
        /// (KVM then reports success with whatever is in the buffer).
        completion: Option<SnpCertsCompletion>,
    },
}

/// A program standing in for the guest of one mock vCPU.
///
/// Each ordinary run calls [`MockGuest::next_exit`] once with the answer to
/// the previous exit and the VM's guest memory (every region mapped so far;
/// empty before the first [`crate::Vm::map_memory`]); the guest may read and
/// write memory, then returns its next exit. Runs that are cut short
/// (immediate exit, kick) do not call it.
pub trait MockGuest: Send {
    /// Produces the next exit.
    fn next_exit(&mut self, last: &MockCompletion, memory: &GuestMemoryMmap) -> VmExit;

    /// The guest as an SEV-SNP program, if it is one: on an SNP VM it then
    /// runs against the kernel model instead of returning exits itself.
    fn sev_guest(&mut self) -> Option<&mut dyn SevGuest> {
        None
    }
}

impl<F> MockGuest for F
where
    F: FnMut(&MockCompletion, &GuestMemoryMmap) -> VmExit + Send,
{
    fn next_exit(&mut self, last: &MockCompletion, memory: &GuestMemoryMmap) -> VmExit {
        self(last, memory)
    }
}

/// A guest that replays a fixed list of exits, ignoring the answers, then
/// returns [`VmExit::Shutdown`] for ever.
#[derive(Debug, Clone, Default)]
pub struct ScriptedGuest {
    exits: VecDeque<VmExit>,
}

impl ScriptedGuest {
    /// A guest replaying `exits` in order.
    pub fn new(exits: impl IntoIterator<Item = VmExit>) -> Self {
        Self {
            exits: exits.into_iter().collect(),
        }
    }
}

impl MockGuest for ScriptedGuest {
    fn next_exit(&mut self, _last: &MockCompletion, _memory: &GuestMemoryMmap) -> VmExit {
        self.exits.pop_front().unwrap_or(VmExit::Shutdown)
    }
}

/// The exit waiting for the VMM's answer.
#[derive(Debug, Clone)]
enum Awaiting {
    None,
    IoIn {
        port: u16,
        size: u8,
        data: Option<Vec<u8>>,
    },
    SnpReqCerts {
        request: SnpCertsRequest,
        completion: Option<SnpCertsCompletion>,
    },
    Hypercall {
        ret: Option<u64>,
    },
}

impl Awaiting {
    /// What the guest sees once the exit is completed by a run.
    fn into_completion(self) -> MockCompletion {
        match self {
            Self::None => MockCompletion::Nothing,
            Self::IoIn { port, data, .. } => MockCompletion::IoIn { port, data },
            Self::SnpReqCerts {
                request,
                completion,
            } => MockCompletion::SnpReqCerts {
                request,
                completion,
            },
            Self::Hypercall { ret } => MockCompletion::Hypercall { ret },
        }
    }
}

/// How many in-kernel VMGEXITs one run handles before it gives up on a
/// guest that never needs the VMM.
const MAX_IN_KERNEL_STEPS: usize = 1_000_000;

/// A mock vCPU.
pub struct MockVcpu {
    id: u8,
    vm: Arc<MockVmShared>,
    guest: Box<dyn MockGuest>,
    /// The kernel's state of this vCPU, for an SEV guest on an SNP VM.
    sev: Option<SevVcpuModel>,
    immediate_exit: bool,
    awaiting: Awaiting,
    delivered: MockCompletion,
    kick: KickTarget,
}

impl std::fmt::Debug for MockVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVcpu")
            .field("id", &self.id)
            .field("immediate_exit", &self.immediate_exit)
            .field("awaiting", &self.awaiting)
            .finish_non_exhaustive()
    }
}

impl MockVcpu {
    pub(super) fn new(
        id: u8,
        vm: Arc<MockVmShared>,
        mut guest: Box<dyn MockGuest>,
    ) -> Result<Self, HypervisorError> {
        let sev = (vm.model().is_some() && guest.sev_guest().is_some()).then(SevVcpuModel::default);
        Ok(Self {
            id,
            vm,
            guest,
            sev,
            immediate_exit: false,
            awaiting: Awaiting::None,
            delivered: MockCompletion::Nothing,
            kick: KickTarget::new()?,
        })
    }

    fn log(&self, event: MockEvent) {
        self.vm.log().push(event);
    }

    /// `KVM_SET_REGS`/`KVM_SET_SREGS` on an SNP VM after LAUNCH_FINISH:
    /// the registers are in the encrypted save area
    /// (`guest_state_protected`), so KVM refuses with `EINVAL`
    /// (`kvm_arch_vcpu_ioctl_set_regs`, `kvm_arch_vcpu_ioctl_set_sregs`).
    fn check_registers_writable(&self) -> Result<(), HypervisorError> {
        match self.vm.model() {
            Some(model) if model.finished => {
                Err(HypervisorError::Registers(Errno::new(libc::EINVAL)))
            }
            _ => Ok(()),
        }
    }

    /// Writes the certificate request's answer into "`kvm_run`" as given,
    /// unchecked, as a VMM writing the structure itself would: for the
    /// conformance tests of what KVM makes of values it does not accept.
    pub fn write_snp_req_certs_raw(
        &mut self,
        ret: u64,
        npages: u64,
    ) -> Result<(), HypervisorError> {
        let Awaiting::SnpReqCerts { completion, .. } = &mut self.awaiting else {
            return Err(HypervisorError::NoPendingExit("SNP certificate request"));
        };
        *completion = Some(SnpCertsCompletion { ret, npages });
        Ok(())
    }

    /// One `KVM_RUN` of an SEV guest against the kernel model.
    fn run_sev(&mut self, immediate_exit: bool) -> Result<VmExit, HypervisorError> {
        let memory = self.vm.memory();
        let awaiting = std::mem::replace(&mut self.awaiting, Awaiting::None);
        let answer = match awaiting.clone() {
            Awaiting::None => VmmAnswer::Nothing,
            Awaiting::IoIn { data, .. } => data.map_or(VmmAnswer::Nothing, VmmAnswer::IoIn),
            Awaiting::SnpReqCerts { completion, .. } => {
                completion.map_or(VmmAnswer::Nothing, |c| VmmAnswer::ReqCerts {
                    ret: c.ret,
                    npages: c.npages,
                })
            }
            Awaiting::Hypercall { ret } => ret.map_or(VmmAnswer::Nothing, VmmAnswer::Hypercall),
        };
        let (Some(sev), Some(guest)) = (self.sev.as_mut(), self.guest.sev_guest()) else {
            return Err(HypervisorError::NoPendingExit("SEV guest"));
        };
        {
            let Some(model) = self.vm.model() else {
                return Err(HypervisorError::NotSnpVm);
            };
            if let Err(errno) = sev.complete(&model, &memory, answer) {
                // What the VMM wrote stays in kvm_run: the next run fails too.
                self.awaiting = awaiting;
                return Err(HypervisorError::Run(errno));
            }
        }
        if immediate_exit {
            return Ok(VmExit::Interrupted);
        }
        for _ in 0..MAX_IN_KERNEL_STEPS {
            sev.resume(&memory);
            let stop = guest.run(&mut sev.cpu, &memory);
            let Some(mut model) = self.vm.model() else {
                return Err(HypervisorError::NotSnpVm);
            };
            match stop {
                GuestStop::Vmgexit => match sev.vmgexit(&model, &memory) {
                    Outcome::Resume => {}
                    Outcome::Exit(exit) => return Ok(exit),
                    Outcome::Error(errno) => return Err(HypervisorError::Run(errno)),
                },
                GuestStop::Pvalidate {
                    vaddr,
                    huge,
                    validate,
                } => {
                    sev.cpu.pvalidate =
                        Some(sev.pvalidate(&mut model, &memory, vaddr, huge, validate));
                }
                GuestStop::Fault(why) => return Ok(VmExit::Other(format!("guest fault: {why}"))),
            }
        }
        Ok(VmExit::Other(format!(
            "the guest made {MAX_IN_KERNEL_STEPS} VMGEXITs without an exit to the VMM"
        )))
    }
}

impl MockVcpu {
    /// A run of a guest that returns exits itself: the pending exit is
    /// completed first (like KVM), whatever follows.
    fn run_scripted(&mut self, immediate_exit: bool) -> VmExit {
        let answered = std::mem::replace(&mut self.awaiting, Awaiting::None);
        if !matches!(answered, Awaiting::None) {
            self.delivered = answered.into_completion();
        }
        if immediate_exit {
            VmExit::Interrupted
        } else {
            let last = std::mem::take(&mut self.delivered);
            let memory = self.vm.memory();
            self.guest.next_exit(&last, &memory)
        }
    }

    /// Remembers which exit waits for an answer, and logs the exit.
    fn after_exit(&mut self, exit: &VmExit) {
        match exit {
            VmExit::IoIn { port, size } => {
                self.awaiting = Awaiting::IoIn {
                    port: *port,
                    size: *size,
                    data: None,
                };
            }
            VmExit::SnpReqCerts(request) => {
                self.awaiting = Awaiting::SnpReqCerts {
                    request: *request,
                    completion: None,
                };
            }
            VmExit::MapGpaRange { .. } => self.awaiting = Awaiting::Hypercall { ret: None },
            VmExit::Interrupted => self.kick.interrupted(self.immediate_exit),
            _ => {}
        }
        self.log(MockEvent::Exit {
            vcpu: self.id,
            exit: exit.clone(),
        });
    }
}

impl Vcpu for MockVcpu {
    fn setup_real_mode(&mut self, entry: u64) -> Result<(), HypervisorError> {
        self.check_registers_writable()?;
        self.log(MockEvent::SetupRealMode {
            vcpu: self.id,
            entry,
        });
        Ok(())
    }

    fn setup_long_mode(&mut self, entry: u64, page_table: u64) -> Result<(), HypervisorError> {
        self.check_registers_writable()?;
        if let Some(sev) = &mut self.sev {
            sev.page_table = page_table;
        }
        self.log(MockEvent::SetupLongMode {
            vcpu: self.id,
            entry,
            page_table,
        });
        Ok(())
    }

    fn run(&mut self) -> Result<VmExit, HypervisorError> {
        if !self.vm.may_run() {
            return Err(HypervisorError::SnpLaunchOrder(
                "a vCPU of an SNP VM ran before LAUNCH_FINISH",
            ));
        }
        self.kick.bind_current_thread();
        let immediate_exit = self.kick.immediate_exit_for_run(self.immediate_exit);
        self.log(MockEvent::Run {
            vcpu: self.id,
            immediate_exit,
        });
        let exit = if self.sev.is_some() {
            self.run_sev(immediate_exit)?
        } else {
            self.run_scripted(immediate_exit)
        };
        self.after_exit(&exit);
        Ok(exit)
    }
    fn complete_io_in(&mut self, data: &[u8]) -> Result<(), HypervisorError> {
        let Awaiting::IoIn {
            port,
            size,
            data: slot @ None,
        } = &mut self.awaiting
        else {
            return Err(HypervisorError::NoPendingExit("I/O IN"));
        };
        if data.len() != usize::from(*size) {
            return Err(HypervisorError::IoInLength {
                port: *port,
                expected: usize::from(*size),
                got: data.len(),
            });
        }
        *slot = Some(data.to_vec());
        let port = *port;
        self.log(MockEvent::IoInCompleted {
            vcpu: self.id,
            port,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn complete_snp_req_certs(&mut self, c: SnpCertsCompletion) -> Result<(), HypervisorError> {
        let Awaiting::SnpReqCerts {
            request,
            completion: slot @ None,
        } = &mut self.awaiting
        else {
            return Err(HypervisorError::NoPendingExit("SNP certificate request"));
        };
        c.validate()?;
        *slot = Some(c);
        let request = *request;
        self.log(MockEvent::SnpReqCertsCompleted {
            vcpu: self.id,
            request,
            completion: c,
        });
        Ok(())
    }

    fn complete_hypercall(&mut self, ret: u64) -> Result<(), HypervisorError> {
        let Awaiting::Hypercall { ret: slot @ None } = &mut self.awaiting else {
            return Err(HypervisorError::NoPendingExit("hypercall"));
        };
        *slot = Some(ret);
        self.log(MockEvent::HypercallCompleted { vcpu: self.id, ret });
        Ok(())
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.immediate_exit = on;
        self.log(MockEvent::SetImmediateExit { vcpu: self.id, on });
    }

    fn kicker(&self) -> VcpuKicker {
        self.kick.kicker()
    }
}
