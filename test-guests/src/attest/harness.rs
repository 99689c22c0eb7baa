//! Runs the attestation guest against scripted doorbell answers.
//!
//! Test support for the guest itself, independent of the VMM's real
//! request handler: [`boot`] starts either implementation on any
//! [`Hypervisor`], and [`drive`] runs its vCPU to `hlt`, answering each
//! doorbell ring with what a closure says ([`Answer`]) and recording what
//! the guest did ([`Transcript`]). Pauses are recorded, not slept.

use std::collections::VecDeque;
use std::sync::Arc;

use hypervisor::mock::MockHypervisor;
use hypervisor::{Hypervisor, Vcpu, Vm, VmExit, VmType};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::layout::{CODE_GPA, MIN_MEMORY, PAGE_SIZE};
use super::{AttestParams, GuestError, MockAttestGuest, program};
use crate::report::{DELAY_PORT, GuestReport, REPORT_PORT, read_report};
use vmm::doorbell::{DOORBELL_PORT, Mailbox};

/// How the scripted VMM answers one ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Write `ret` and `npages` into the mailbox.
    Reply {
        /// The result.
        ret: u64,
        /// The page count.
        npages: u64,
    },
    /// Write these bytes at the buffer GPA from the mailbox, then answer 0.
    Deliver(Vec<u8>),
    /// Leave the mailbox alone.
    Ignore,
}

impl Answer {
    /// `ENOSPC`: the guest needs `npages` pages.
    pub fn need_pages(npages: u64) -> Self {
        Self::Reply {
            ret: libc::ENOSPC as u64,
            npages,
        }
    }

    /// `EAGAIN`: busy.
    pub fn busy() -> Self {
        Self::Reply {
            ret: libc::EAGAIN as u64,
            npages: 0,
        }
    }

    /// `EIO`: the guest's own permanent fault.
    pub fn eio() -> Self {
        Self::Reply {
            ret: libc::EIO as u64,
            npages: 0,
        }
    }

    /// What a correct VMM answers to `mailbox` when serving `table` (`None`:
    /// no certificate file, the empty table): `ENOSPC` with the exact page
    /// count if the buffer is too small (always for a size query, except
    /// with no file, which gets 0 and nothing written), else the table.
    pub fn serve(table: Option<&[u8]>, mailbox: &Mailbox) -> Self {
        let Some(table) = table else {
            return match mailbox.npages {
                0 => Self::Reply { ret: 0, npages: 0 },
                _ => Self::Deliver(snp_certs::table::EMPTY_TABLE.to_vec()),
            };
        };
        let needed = (table.len() as u64).div_ceil(PAGE_SIZE);
        if mailbox.npages < needed {
            Self::need_pages(needed)
        } else {
            Self::Deliver(table.to_vec())
        }
    }
}

/// Answers with `prefix`, one per ring, then like a correct VMM serving
/// `table` ([`Answer::serve`]).
pub fn scripted(
    prefix: impl IntoIterator<Item = Answer>,
    table: Option<Vec<u8>>,
) -> impl FnMut(&Mailbox) -> Answer {
    let mut prefix: VecDeque<Answer> = prefix.into_iter().collect();
    move |mailbox| {
        prefix
            .pop_front()
            .unwrap_or_else(|| Answer::serve(table.as_deref(), mailbox))
    }
}

/// One thing the guest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    /// Rang the doorbell; the mailbox as it was before the answer.
    Ring(Mailbox),
    /// Asked for a pause of this many milliseconds.
    Delay(u32),
    /// Reported.
    Report(GuestReport),
}

/// Everything the guest did, in order, and how it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The guest's port writes, decoded.
    pub events: Vec<GuestEvent>,
    /// The exit that ended the run (`Hlt` for a guest that finished).
    pub end: VmExit,
}

impl Transcript {
    /// What `pick` finds in the events, in order.
    fn picked<T>(&self, pick: impl Fn(&GuestEvent) -> Option<T>) -> Vec<T> {
        self.events.iter().filter_map(pick).collect()
    }

    /// The reports, in order.
    pub fn reports(&self) -> Vec<GuestReport> {
        self.picked(|e| match e {
            GuestEvent::Report(r) => Some(*r),
            _ => None,
        })
    }

    /// The mailboxes rung, in order.
    pub fn rings(&self) -> Vec<Mailbox> {
        self.picked(|e| match e {
            GuestEvent::Ring(m) => Some(*m),
            _ => None,
        })
    }

    /// The pauses asked for, in order.
    pub fn delays(&self) -> Vec<u32> {
        self.picked(|e| match e {
            GuestEvent::Delay(ms) => Some(*ms),
            _ => None,
        })
    }
}

/// A booted attestation guest.
pub struct Booted {
    /// vCPU 0, in real mode at [`CODE_GPA`].
    pub vcpu: Box<dyn Vcpu>,
    /// The guest RAM: [`MIN_MEMORY`] bytes at GPA 0, shared with the VM.
    pub memory: GuestMemoryMmap,
    /// The VM.
    pub vm: Box<dyn Vm>,
}

impl std::fmt::Debug for Booted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Booted").finish_non_exhaustive()
    }
}

/// Creates a default VM on `hv` with [`MIN_MEMORY`] of RAM at GPA 0, loads
/// [`program`]`(params)` at [`CODE_GPA`] and creates vCPU 0 in real mode
/// there. On the mock backend, register the [`super::MockAttestGuest`] for
/// vCPU 0 first; it ignores the code.
pub fn boot(hv: &dyn Hypervisor, params: &AttestParams) -> Result<Booted, GuestError> {
    let code = program(params)?;
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIN_MEMORY as usize)])
        .map_err(GuestError::Ram)?;
    memory
        .write_slice(&code, GuestAddress(CODE_GPA))
        .map_err(|source| GuestError::Memory {
            what: "code",
            gpa: CODE_GPA,
            source,
        })?;
    let vm = hv
        .create_vm(VmType::Default)
        .map_err(GuestError::Hypervisor)?;
    vm.map_memory(Arc::new(memory.clone()))
        .map_err(GuestError::Hypervisor)?;
    let mut vcpu = vm.create_vcpu(0).map_err(GuestError::Hypervisor)?;
    vcpu.setup_real_mode(CODE_GPA)
        .map_err(GuestError::Hypervisor)?;
    Ok(Booted { vcpu, memory, vm })
}

/// The `u32` a guest wrote with `out dx, eax`.
fn out_value(port: u16, data: &[u8]) -> Result<u32, GuestError> {
    let bytes: [u8; 4] = data
        .try_into()
        .map_err(|_| GuestError::UnexpectedExit(format!("{}-byte OUT to {port:#x}", data.len())))?;
    Ok(u32::from_le_bytes(bytes))
}

/// Writes `answer` for the ring of the mailbox at `gpa`.
fn apply<M: GuestMemory + ?Sized>(
    memory: &M,
    gpa: u64,
    mailbox: &Mailbox,
    answer: Answer,
) -> Result<(), GuestError> {
    let (ret, npages) = match answer {
        Answer::Ignore => return Ok(()),
        Answer::Reply { ret, npages } => (ret, npages),
        Answer::Deliver(table) => {
            memory
                .write_slice(&table, GuestAddress(mailbox.gpa))
                .map_err(|source| GuestError::Memory {
                    what: "buffer",
                    gpa: mailbox.gpa,
                    source,
                })?;
            (0, mailbox.npages)
        }
    };
    Mailbox::write_answer(memory, gpa, ret, npages).map_err(GuestError::Mailbox)
}

/// Runs `vcpu` until it halts (or shuts down, or fails), at most
/// `max_exits` exits, answering every ring with `answer(mailbox)`.
pub fn drive<M, F>(
    vcpu: &mut dyn Vcpu,
    memory: &M,
    max_exits: usize,
    mut answer: F,
) -> Result<Transcript, GuestError>
where
    M: GuestMemory + ?Sized,
    F: FnMut(&Mailbox) -> Answer,
{
    let mut events = Vec::new();
    for _ in 0..max_exits {
        let exit = vcpu.run().map_err(GuestError::Hypervisor)?;
        let VmExit::IoOut { port, data } = &exit else {
            match exit {
                VmExit::Interrupted => continue,
                VmExit::Hlt | VmExit::Shutdown | VmExit::Other(_) => {
                    return Ok(Transcript { events, end: exit });
                }
                other => return Err(GuestError::UnexpectedExit(format!("{other:?}"))),
            }
        };
        let value = out_value(*port, data)?;
        match *port {
            DOORBELL_PORT => {
                let gpa = u64::from(value);
                let mailbox = Mailbox::read(memory, gpa).map_err(GuestError::Mailbox)?;
                events.push(GuestEvent::Ring(mailbox));
                apply(memory, gpa, &mailbox, answer(&mailbox))?;
            }
            DELAY_PORT => events.push(GuestEvent::Delay(value)),
            REPORT_PORT => {
                let gpa = u64::from(value);
                let report = read_report(memory, gpa).map_err(|source| GuestError::Memory {
                    what: "report",
                    gpa,
                    source,
                })?;
                events.push(GuestEvent::Report(report));
            }
            other => {
                return Err(GuestError::UnexpectedExit(format!(
                    "OUT to port {other:#x}"
                )));
            }
        }
    }
    Err(GuestError::TooManyExits(max_exits))
}

/// [`boot`]s the guest on `hv` and [`drive`]s it.
pub fn run<F>(
    hv: &dyn Hypervisor,
    params: &AttestParams,
    max_exits: usize,
    answer: F,
) -> Result<Transcript, GuestError>
where
    F: FnMut(&Mailbox) -> Answer,
{
    let mut booted = boot(hv, params)?;
    drive(booted.vcpu.as_mut(), &booted.memory, max_exits, answer)
}

/// [`run`]s a [`MockAttestGuest`] on a fresh [`MockHypervisor`].
pub fn run_mock<F>(
    params: &AttestParams,
    max_exits: usize,
    answer: F,
) -> Result<Transcript, GuestError>
where
    F: FnMut(&Mailbox) -> Answer,
{
    let hv = MockHypervisor::new().with_guest(0, MockAttestGuest::new(*params));
    run(&hv, params, max_exits, answer)
}
