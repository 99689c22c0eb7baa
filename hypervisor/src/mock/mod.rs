//! A mock backend for tests and for hosts without KVM (when asked for).
//!
//! [`MockHypervisor`] hands out VMs whose vCPUs get their exits from a
//! [`MockGuest`]: either a fixed script ([`ScriptedGuest`], built with
//! [`MockHypervisor::with_script`]) or a Rust program that reacts to the
//! VMM's answers and reads and writes guest memory, the way a real guest
//! would ([`MockHypervisor::with_guest`]).
//!
//! Everything the VMM does is appended, in order, to a shared [`MockLog`]
//! ([`MockHypervisor::log`]): VM and vCPU creation, memory maps, enabling
//! the certificate exit, every run with the immediate-exit value it used,
//! every exit returned, and every completion with its data.
//!
//! The mock mirrors KVM's rules where the VMM could get them wrong:
//!
//! * a pending exit is completed at the start of the next run, even one that
//!   is cut short; the guest sees the answer (or its absence) on its next
//!   step;
//! * a run with the immediate-exit flag set (or after a kick) returns
//!   [`VmExit::Interrupted`] without asking the guest for a new exit;
//! * completions must match the pending exit: right length for an `IN`, a
//!   `ret` KVM accepts for a certificate request;
//! * [`Vm::enable_snp_req_certs`] only works on SNP VMs, before any vCPU
//!   exists, and only if the (simulated) kernel supports it;
//! * overlapping memory maps fail with `EEXIST`.
//!
//! It does not check that a guest only issues certificate requests once the
//! exit has been enabled; a [`MockGuest`] decides what it does.

mod vcpu;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};
use vmm_sys_util::errno::Error as Errno;

pub use vcpu::{MockCompletion, MockGuest, MockVcpu, ScriptedGuest};

use crate::{
    Hypervisor, HypervisorError, SnpCertsCompletion, SnpCertsRequest, SnpLaunch, SnpPageType, Vcpu,
    Vm, VmExit, VmType,
};

/// One thing the VMM did (or the mock returned), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockEvent {
    /// [`Hypervisor::create_vm`] succeeded.
    CreateVm {
        /// The type asked for.
        vm_type: VmType,
    },
    /// [`Vm::map_memory`] succeeded.
    MapMemory {
        /// `(guest address, size)` of each region.
        regions: Vec<(u64, u64)>,
        /// Whether the regions are backed by guest_memfd (SNP VMs).
        guest_memfd: bool,
    },
    /// [`Vm::enable_snp_req_certs`] was called.
    EnableSnpReqCerts {
        /// Whether it succeeded.
        accepted: bool,
    },
    /// [`Vm::create_vcpu`] succeeded.
    CreateVcpu {
        /// The vCPU number.
        id: u8,
    },
    /// [`Vcpu::setup_real_mode`] was called.
    SetupRealMode {
        /// The vCPU number.
        vcpu: u8,
        /// The entry point.
        entry: u64,
    },
    /// [`Vcpu::setup_long_mode`] was called.
    SetupLongMode {
        /// The vCPU number.
        vcpu: u8,
        /// The entry point.
        entry: u64,
        /// The PML4's address.
        page_table: u64,
    },
    /// [`SnpLaunch::launch_start`] succeeded.
    SnpLaunchStart {
        /// The guest policy.
        policy: u64,
    },
    /// [`SnpLaunch::launch_update`] succeeded.
    SnpLaunchUpdate {
        /// First address.
        gpa: u64,
        /// Bytes.
        len: u64,
        /// What the range holds.
        page_type: SnpPageType,
    },
    /// [`SnpLaunch::launch_finish`] succeeded.
    SnpLaunchFinish {
        /// The host data.
        host_data: [u8; 32],
    },
    /// [`SnpLaunch::set_private`] succeeded (`KVM_SET_MEMORY_ATTRIBUTES`).
    SetMemoryAttributes {
        /// First address.
        gpa: u64,
        /// Bytes.
        len: u64,
        /// Private (true) or shared.
        private: bool,
    },
    /// [`Vcpu::set_immediate_exit`] was called.
    SetImmediateExit {
        /// The vCPU number.
        vcpu: u8,
        /// The new value.
        on: bool,
    },
    /// [`Vcpu::run`] was called.
    Run {
        /// The vCPU number.
        vcpu: u8,
        /// The immediate-exit value the run used (the VMM's flag, or a
        /// pending kick).
        immediate_exit: bool,
    },
    /// [`Vcpu::run`] returned this exit.
    Exit {
        /// The vCPU number.
        vcpu: u8,
        /// The exit.
        exit: VmExit,
    },
    /// [`Vcpu::complete_io_in`] succeeded.
    IoInCompleted {
        /// The vCPU number.
        vcpu: u8,
        /// The port of the pending `IN`.
        port: u16,
        /// The data given.
        data: Vec<u8>,
    },
    /// [`Vcpu::complete_hypercall`] succeeded.
    HypercallCompleted {
        /// The vCPU number.
        vcpu: u8,
        /// The answer.
        ret: u64,
    },
    /// [`Vcpu::complete_snp_req_certs`] succeeded.
    SnpReqCertsCompleted {
        /// The vCPU number.
        vcpu: u8,
        /// The request being answered.
        request: SnpCertsRequest,
        /// The answer.
        completion: SnpCertsCompletion,
    },
}

/// The shared, ordered event log of a [`MockHypervisor`]. Unbounded by
/// default (tests read all of it); a mock serving a long-running VM keeps
/// only its most recent events ([`MockHypervisor::with_log_limit`]).
#[derive(Debug, Clone, Default)]
pub struct MockLog(Arc<Mutex<LogState>>);

#[derive(Debug, Default)]
struct LogState {
    events: Vec<MockEvent>,
    /// Keep at most this many events (the oldest go first).
    limit: Option<usize>,
}

impl std::ops::Deref for LogState {
    type Target = Vec<MockEvent>;

    fn deref(&self) -> &Vec<MockEvent> {
        &self.events
    }
}

impl MockLog {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, event: MockEvent) {
        let mut log = self.lock();
        if let Some(limit) = log.limit {
            if log.events.len() >= limit.max(1) {
                // Drop the older half at once: amortised O(1) per event.
                let keep = limit / 2;
                let cut = log.events.len() - keep;
                log.events.drain(..cut);
            }
        }
        log.events.push(event);
    }

    /// A copy of all events so far (the most recent ones, with a limit).
    pub fn events(&self) -> Vec<MockEvent> {
        self.lock().events.clone()
    }

    /// Removes and returns all events so far.
    pub fn take(&self) -> Vec<MockEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// The completions given to vCPU `vcpu` for certificate requests, in
    /// order.
    pub fn snp_completions(&self, vcpu: u8) -> Vec<(SnpCertsRequest, SnpCertsCompletion)> {
        self.lock()
            .iter()
            .filter_map(|e| match e {
                MockEvent::SnpReqCertsCompleted {
                    vcpu: v,
                    request,
                    completion,
                } if *v == vcpu => Some((*request, *completion)),
                _ => None,
            })
            .collect()
    }
}

type Guests = Arc<Mutex<HashMap<u8, Box<dyn MockGuest>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The mock hypervisor. By default it simulates an SNP host whose kernel
/// supports certificate requests.
pub struct MockHypervisor {
    snp: bool,
    snp_req_certs: bool,
    log: MockLog,
    guests: Guests,
}

impl std::fmt::Debug for MockHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHypervisor")
            .field("snp", &self.snp)
            .field("snp_req_certs", &self.snp_req_certs)
            .finish_non_exhaustive()
    }
}

impl Default for MockHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl MockHypervisor {
    /// A mock SNP host with certificate-request support and no guests.
    pub fn new() -> Self {
        Self {
            snp: true,
            snp_req_certs: true,
            log: MockLog::default(),
            guests: Guests::default(),
        }
    }

    /// Whether SNP VMs can be created (default `true`).
    pub fn with_snp(mut self, supported: bool) -> Self {
        self.snp = supported;
        self
    }

    /// Whether the simulated kernel supports the certificate-request exit
    /// (default `true`). Drives [`Hypervisor::snp_req_certs_supported`] and
    /// whether [`Vm::enable_snp_req_certs`] is accepted.
    pub fn with_snp_req_certs(mut self, supported: bool) -> Self {
        self.snp_req_certs = supported;
        self
    }

    /// Makes vCPU `id` of the next VM replay `exits`, then return
    /// [`VmExit::Shutdown`] for ever.
    pub fn with_script(self, id: u8, exits: impl IntoIterator<Item = VmExit>) -> Self {
        self.with_guest(id, ScriptedGuest::new(exits))
    }

    /// Makes `guest` drive vCPU `id` of the next VM created.
    pub fn with_guest(self, id: u8, guest: impl MockGuest + 'static) -> Self {
        self.set_guest(id, guest);
        self
    }

    /// Like [`Self::with_guest`], through a shared reference. The guest is
    /// taken by the next [`Vm::create_vcpu`] with that number; a vCPU with
    /// no guest gets an empty script.
    pub fn set_guest(&self, id: u8, guest: impl MockGuest + 'static) {
        self.set_boxed_guest(id, Box::new(guest));
    }

    /// [`Self::set_guest`] for a guest already boxed.
    pub fn set_boxed_guest(&self, id: u8, guest: Box<dyn MockGuest>) {
        lock(&self.guests).insert(id, guest);
    }

    /// Keeps only about the `limit` most recent events in the log, so a
    /// mock serving a VM for hours does not grow without bound.
    pub fn with_log_limit(self, limit: usize) -> Self {
        self.log.lock().limit = Some(limit);
        self
    }

    /// The shared event log.
    pub fn log(&self) -> MockLog {
        self.log.clone()
    }
}

impl Hypervisor for MockHypervisor {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn snp_req_certs_supported(&self) -> Result<bool, HypervisorError> {
        Ok(self.snp && self.snp_req_certs)
    }

    fn snp_supported(&self) -> bool {
        self.snp
    }

    fn create_vm(&self, vm_type: VmType) -> Result<Box<dyn Vm>, HypervisorError> {
        if vm_type == VmType::Snp && !self.snp {
            return Err(HypervisorError::SnpUnsupported {
                reason: "the mock host is configured without SEV-SNP",
                source: None,
            });
        }
        self.log.push(MockEvent::CreateVm { vm_type });
        Ok(Box::new(MockVm {
            shared: Arc::new(MockVmShared {
                vm_type,
                snp_req_certs: self.snp_req_certs,
                log: self.log.clone(),
                guests: Arc::clone(&self.guests),
                state: Mutex::new(MockVmState {
                    vcpus: 0,
                    launch: LaunchPhase::NotStarted,
                    memory: Arc::new(GuestMemoryMmap::new()),
                    mappings: Vec::new(),
                }),
            }),
        }))
    }
}

/// Where an SNP VM's launch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaunchPhase {
    /// `LAUNCH_START` not issued yet.
    NotStarted,
    /// Between `LAUNCH_START` and `LAUNCH_FINISH`.
    Started,
    /// Launched: vCPUs may run.
    Finished,
}

struct MockVmState {
    vcpus: usize,
    launch: LaunchPhase,
    /// All regions mapped so far, as one address space for the guests.
    memory: Arc<GuestMemoryMmap>,
    /// The `Arc`s the VMM passed in, kept alive like KVM does.
    mappings: Vec<Arc<GuestMemoryMmap>>,
}

pub(crate) struct MockVmShared {
    vm_type: VmType,
    snp_req_certs: bool,
    log: MockLog,
    guests: Guests,
    state: Mutex<MockVmState>,
}

impl MockVmShared {
    pub(crate) fn log(&self) -> &MockLog {
        &self.log
    }

    pub(crate) fn memory(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&lock(&self.state).memory)
    }

    /// Whether a vCPU may run: always on a default VM, after
    /// `LAUNCH_FINISH` on an SNP VM.
    pub(crate) fn may_run(&self) -> bool {
        self.vm_type != VmType::Snp || lock(&self.state).launch == LaunchPhase::Finished
    }
}

/// A mock VM.
pub struct MockVm {
    shared: Arc<MockVmShared>,
}

impl std::fmt::Debug for MockVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVm")
            .field("vm_type", &self.shared.vm_type)
            .finish_non_exhaustive()
    }
}

impl Vm for MockVm {
    fn map_memory(&self, memory: Arc<GuestMemoryMmap>) -> Result<(), HypervisorError> {
        let mut state = lock(&self.shared.state);
        let mut merged = (*state.memory).clone();
        let mut regions = Vec::new();
        for region in memory.iter() {
            let gpa = region.start_addr();
            let size = region.len();
            let shared_region = GuestRegionMmap::with_arc(region.get_mmap(), gpa);
            merged = shared_region
                .and_then(|r| merged.insert_region(Arc::new(r)).ok())
                .ok_or(HypervisorError::MapMemory {
                    gpa: gpa.0,
                    size,
                    source: Errno::new(libc::EEXIST),
                })?;
            regions.push((gpa.0, size));
        }
        state.memory = Arc::new(merged);
        state.mappings.push(memory);
        drop(state);
        let private = self.shared.vm_type == VmType::Snp;
        self.shared.log.push(MockEvent::MapMemory {
            regions: regions.clone(),
            guest_memfd: private,
        });
        if private {
            // As KVM: guest_memfd-backed memory starts private.
            for (gpa, len) in regions {
                self.shared.log.push(MockEvent::SetMemoryAttributes {
                    gpa,
                    len,
                    private: true,
                });
            }
        }
        Ok(())
    }

    fn enable_snp_req_certs(&self) -> Result<(), HypervisorError> {
        let state = lock(&self.shared.state);
        let result = if self.shared.vm_type != VmType::Snp {
            Err(HypervisorError::NotSnpVm)
        } else if state.vcpus > 0 {
            Err(HypervisorError::VcpusAlreadyCreated)
        } else if !self.shared.snp_req_certs {
            // What a kernel without the sub-command answers.
            Err(HypervisorError::SnpReqCertsRejected(Errno::new(
                libc::EINVAL,
            )))
        } else {
            Ok(())
        };
        drop(state);
        self.shared.log.push(MockEvent::EnableSnpReqCerts {
            accepted: result.is_ok(),
        });
        result
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, HypervisorError> {
        let guest = lock(&self.shared.guests)
            .remove(&id)
            .unwrap_or_else(|| Box::new(ScriptedGuest::new([])));
        let vcpu = MockVcpu::new(id, Arc::clone(&self.shared), guest)?;
        lock(&self.shared.state).vcpus += 1;
        self.shared.log.push(MockEvent::CreateVcpu { id });
        Ok(Box::new(vcpu))
    }

    fn snp(&self) -> Option<&dyn SnpLaunch> {
        (self.shared.vm_type == VmType::Snp).then_some(self as &dyn SnpLaunch)
    }
}

impl SnpLaunch for MockVm {
    fn launch_start(&self, policy: u64) -> Result<(), HypervisorError> {
        let mut state = lock(&self.shared.state);
        if state.launch != LaunchPhase::NotStarted {
            return Err(HypervisorError::SnpLaunchOrder("LAUNCH_START issued twice"));
        }
        state.launch = LaunchPhase::Started;
        drop(state);
        self.shared.log.push(MockEvent::SnpLaunchStart { policy });
        Ok(())
    }

    fn launch_update(
        &self,
        gpa: u64,
        len: u64,
        page_type: SnpPageType,
    ) -> Result<(), HypervisorError> {
        let state = lock(&self.shared.state);
        if state.launch != LaunchPhase::Started {
            return Err(HypervisorError::SnpLaunchOrder(
                "LAUNCH_UPDATE outside LAUNCH_START..LAUNCH_FINISH",
            ));
        }
        if gpa % 4096 != 0 || len % 4096 != 0 || len == 0 {
            return Err(HypervisorError::SnpLaunchOrder(
                "LAUNCH_UPDATE of a range that is not whole pages",
            ));
        }
        drop(state);
        self.shared.log.push(MockEvent::SnpLaunchUpdate {
            gpa,
            len,
            page_type,
        });
        Ok(())
    }

    fn launch_finish(&self, host_data: [u8; 32]) -> Result<(), HypervisorError> {
        let mut state = lock(&self.shared.state);
        if state.launch != LaunchPhase::Started || state.vcpus == 0 {
            return Err(HypervisorError::SnpLaunchOrder(
                "LAUNCH_FINISH needs LAUNCH_START and the vCPUs first",
            ));
        }
        state.launch = LaunchPhase::Finished;
        drop(state);
        self.shared
            .log
            .push(MockEvent::SnpLaunchFinish { host_data });
        Ok(())
    }

    fn set_private(&self, gpa: u64, len: u64, private: bool) -> Result<(), HypervisorError> {
        self.shared
            .log
            .push(MockEvent::SetMemoryAttributes { gpa, len, private });
        Ok(())
    }

    fn supported_cpuid(&self) -> Result<Vec<crate::CpuidLeaf>, HypervisorError> {
        Ok(vec![crate::CpuidLeaf {
            function: 0,
            index: 0,
            eax: 0x10,
            ebx: 0x6874_7541,
            ecx: 0x444d_4163,
            edx: 0x6974_6e65,
        }])
    }
}

#[cfg(test)]
mod tests;
