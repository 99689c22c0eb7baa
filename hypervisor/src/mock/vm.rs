//! Mock VMs. An SNP VM is backed by the kernel model: its commands go
//! through [`SnpCommands`] with the VM's open model `/dev/sev`, exactly as
//! on KVM.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};
use vmm_sys_util::errno::Error as Errno;

use super::kernel_model::{KernelModel, KernelModelConfig, Slot};
use super::{Guests, MockEvent, MockLog, MockVcpu, ScriptedGuest, lock};
use crate::sev_commands::SnpCommands;
use crate::{HypervisorError, SevDevice, SnpLaunch, SnpPageType, Vcpu, Vm, VmType};

struct MockVmState {
    vcpus: usize,
    /// All regions mapped so far, as one address space for the guests.
    memory: Arc<GuestMemoryMmap>,
    /// The `Arc`s the VMM passed in, kept alive like KVM does.
    mappings: Vec<Arc<GuestMemoryMmap>>,
}

/// What a VM shares with its vCPUs. Field order is drop order: the model
/// (the "VM fd") goes before the VM's `/dev/sev`.
pub(crate) struct MockVmShared {
    vm_type: VmType,
    snp_req_certs: bool,
    log: MockLog,
    guests: Guests,
    state: Mutex<MockVmState>,
    model: Option<Mutex<KernelModel>>,
    sev: Option<SevDevice>,
}

impl MockVmShared {
    pub(crate) fn log(&self) -> &MockLog {
        &self.log
    }

    pub(crate) fn memory(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&lock(&self.state).memory)
    }

    /// The kernel model of an SNP VM.
    pub(crate) fn model(&self) -> Option<MutexGuard<'_, KernelModel>> {
        self.model.as_ref().map(lock)
    }

    /// Whether a vCPU may run: always on a default VM; on an SNP VM after
    /// LAUNCH_FINISH (before it KVM has no encrypted save area to run and
    /// faults from guest_memfd are refused: `pre_fault_allowed`, set by
    /// `snp_launch_finish`).
    pub(crate) fn may_run(&self) -> bool {
        self.model().is_none_or(|m| m.finished)
    }

    fn commands(&self) -> Result<SnpCommands<'_>, HypervisorError> {
        match (&self.model, &self.sev) {
            (Some(model), Some(sev)) => Ok(SnpCommands::new(model, sev.sev_fd())),
            _ => Err(HypervisorError::NotSnpVm),
        }
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

impl MockVm {
    /// A VM of `vm_type`; an SNP VM opens the model's `/dev/sev` and is
    /// initialised with `KVM_SEV_INIT2`, as on KVM.
    pub(super) fn new(
        vm_type: VmType,
        snp_req_certs: bool,
        config: KernelModelConfig,
        log: MockLog,
        guests: Guests,
    ) -> Result<MockVm, HypervisorError> {
        let (model, sev) = match vm_type {
            VmType::Default => (None, None),
            VmType::Snp => {
                let mut model =
                    KernelModel::new(vm_type, config).map_err(HypervisorError::CreateVm)?;
                let sev = SevDevice::open_path(model.device().path())?;
                model.enable_map_gpa_range_exit();
                let model = Mutex::new(model);
                SnpCommands::new(&model, sev.sev_fd()).init2()?;
                (Some(model), Some(sev))
            }
        };
        Ok(MockVm {
            shared: Arc::new(MockVmShared {
                vm_type,
                snp_req_certs,
                log,
                guests,
                state: Mutex::new(MockVmState {
                    vcpus: 0,
                    memory: Arc::new(GuestMemoryMmap::new()),
                    mappings: Vec::new(),
                }),
                model,
                sev,
            }),
        })
    }

    /// The kernel model of this SNP VM, for tests to inspect.
    pub fn kernel_model(&self) -> Option<MutexGuard<'_, KernelModel>> {
        self.shared.model()
    }

    /// Creates vCPU `id` and returns the concrete mock type.
    pub fn create_mock_vcpu(&self, id: u8) -> Result<MockVcpu, HypervisorError> {
        let guest = lock(&self.shared.guests)
            .remove(&id)
            .unwrap_or_else(|| Box::new(ScriptedGuest::new([])));
        let vcpu = MockVcpu::new(id, Arc::clone(&self.shared), guest)?;
        lock(&self.shared.state).vcpus += 1;
        if let Some(mut model) = self.shared.model() {
            model.vcpu_created();
        }
        self.shared.log.push(MockEvent::CreateVcpu { id });
        Ok(vcpu)
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
            regions.push((gpa.0, size, region.as_ptr() as u64));
        }
        state.memory = Arc::new(merged);
        state.mappings.push(Arc::clone(&memory));
        drop(state);
        let private = self.shared.model.is_some();
        self.shared.log.push(MockEvent::MapMemory {
            regions: regions.iter().map(|&(g, s, _)| (g, s)).collect(),
            guest_memfd: private,
        });
        if let Some(mut model) = self.shared.model() {
            // KVM_SET_USER_MEMORY_REGION2 with a guest_memfd, then
            // KVM_SET_MEMORY_ATTRIBUTES private, as the KVM backend does.
            for &(gpa, size, uaddr) in &regions {
                model.add_slot(Slot {
                    gpa,
                    size,
                    uaddr,
                    memory: Arc::clone(&memory),
                    guest_memfd: true,
                });
                model.set_private(gpa, size, true);
                self.shared.log.push(MockEvent::SetMemoryAttributes {
                    gpa,
                    len: size,
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
            // A kernel without the sub-command: sev_mem_enc_ioctl's
            // default case.
            Err(HypervisorError::SnpReqCertsRejected(Errno::new(
                libc::EINVAL,
            )))
        } else {
            drop(state);
            self.shared.commands().and_then(|c| c.enable_req_certs())
        };
        self.shared.log.push(MockEvent::EnableSnpReqCerts {
            accepted: result.is_ok(),
        });
        result
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, HypervisorError> {
        Ok(Box::new(self.create_mock_vcpu(id)?))
    }

    fn snp(&self) -> Option<&dyn SnpLaunch> {
        (self.shared.vm_type == VmType::Snp).then_some(self as &dyn SnpLaunch)
    }
}

impl SnpLaunch for MockVm {
    fn launch_start(&self, policy: u64) -> Result<(), HypervisorError> {
        self.shared.commands()?.launch_start(policy)?;
        self.shared.log.push(MockEvent::SnpLaunchStart { policy });
        Ok(())
    }

    fn launch_update(
        &self,
        gpa: u64,
        len: u64,
        page_type: SnpPageType,
    ) -> Result<(), HypervisorError> {
        let memory = self.shared.memory();
        self.shared
            .commands()?
            .launch_update(&memory, gpa, len, page_type)?;
        self.shared.log.push(MockEvent::SnpLaunchUpdate {
            gpa,
            len,
            page_type,
        });
        Ok(())
    }

    fn launch_finish(&self, host_data: [u8; 32]) -> Result<(), HypervisorError> {
        self.shared.commands()?.launch_finish(host_data)?;
        self.shared
            .log
            .push(MockEvent::SnpLaunchFinish { host_data });
        Ok(())
    }

    fn set_private(&self, gpa: u64, len: u64, private: bool) -> Result<(), HypervisorError> {
        if let Some(mut model) = self.shared.model() {
            model.set_private(gpa, len, private);
        }
        self.shared
            .log
            .push(MockEvent::SetMemoryAttributes { gpa, len, private });
        Ok(())
    }
}
