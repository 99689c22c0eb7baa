//! What the mock records: every call the VMM makes and every exit the mock
//! returns, in order, in a shared [`MockLog`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{SnpCertsCompletion, SnpCertsRequest, SnpPageType, VmExit, VmType};

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
    pub(crate) fn set_limit(&self, limit: usize) {
        self.lock().limit = Some(limit);
    }

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
