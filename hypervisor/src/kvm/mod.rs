//! The Linux KVM backend (kvm-ioctls 0.25 / kvm-bindings 0.14).
//!
//! * [`KvmHypervisor::new`] opens `/dev/kvm`; a missing or unopenable device
//!   is [`HypervisorError::KvmUnavailable`].
//! * [`VmType::Snp`] opens `/dev/sev` read-write (failing clearly when it
//!   cannot), creates a `KVM_X86_SNP_VM` and initialises it with
//!   `KVM_SEV_INIT2` (default features), the state in which KVM accepts
//!   `KVM_SEV_SNP_ENABLE_REQ_CERTS`. The device stays open for the VM's
//!   life and goes into every SEV command ([`crate::sev_commands`]); the
//!   launch itself is [`crate::SnpLaunch`] on the VM ([`snp_vm`]).
//! * [`host::probe_host`] reports, item by item, whether this host can
//!   serve SNP guests with certificates (`snp-vmm --check-host`).
//! * The certificate exit arrives from kvm-ioctls as `VcpuExit::Unsupported(43)`;
//!   [`KvmVcpu`] reads and answers it through the overlay in [`snp`].

mod encrypt_op;
pub mod host;
mod private_memory;
mod req_certs_probe;
pub mod snp;
mod snp_exits;
mod snp_vm;
mod vcpu;

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::errno::Error as Errno;

pub use vcpu::KvmVcpu;

use crate::sev_commands::SnpCommands;
use crate::{Hypervisor, HypervisorError, SevDevice, Vcpu, Vm, VmType};

/// Default KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The KVM hypervisor: an open `/dev/kvm`.
#[derive(Debug)]
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm`.
    pub fn new() -> Result<Self, HypervisorError> {
        Self::with_path(KVM_DEVICE)
    }

    /// Opens the KVM device at `path`.
    pub fn with_path(path: impl AsRef<Path>) -> Result<Self, HypervisorError> {
        let path = path.as_ref();
        let unavailable = |source| HypervisorError::KvmUnavailable {
            path: PathBuf::from(path),
            source,
        };
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| unavailable(Errno::new(libc::EINVAL)))?;
        let kvm = Kvm::new_with_path(&cpath).map_err(unavailable)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(unavailable(Errno::new(libc::ENOTSUP)));
        }
        Ok(Self { kvm })
    }

    /// Creates a VM and returns the concrete KVM type (gives access to the
    /// raw [`VmFd`] through [`KvmVm::vm_fd`]).
    pub fn create_kvm_vm(&self, vm_type: VmType) -> Result<KvmVm, HypervisorError> {
        let (fd, sev) = match vm_type {
            VmType::Default => {
                let fd = self
                    .kvm
                    .create_vm_with_type(0)
                    .map_err(HypervisorError::CreateVm)?;
                // Needed for real mode on Intel hosts without unrestricted
                // guest support; harmless (or refused) elsewhere.
                if let Err(e) = fd.set_tss_address(0xfffb_d000) {
                    log::debug!("KVM_SET_TSS_ADDR failed (ignored): {e}");
                }
                (fd, None)
            }
            VmType::Snp => {
                let (fd, sev) = self.create_snp_vm()?;
                (fd, Some(sev))
            }
        };
        Ok(KvmVm {
            shared: Arc::new(VmShared {
                fd,
                sev,
                vm_type,
                state: Mutex::new(VmState::default()),
                memory: Mutex::new(Vec::new()),
                guest_memfds: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Opens `/dev/sev`, creates the SNP VM and initialises it.
    fn create_snp_vm(&self) -> Result<(VmFd, SevDevice), HypervisorError> {
        let fd = self
            .kvm
            .create_vm_with_type(snp::KVM_X86_SNP_VM)
            .map_err(|e| {
                let types = self.kvm.check_extension_raw(snp::KVM_CAP_VM_TYPES as _);
                let offered = types > 0 && types & (1 << snp::KVM_X86_SNP_VM) != 0;
                HypervisorError::SnpUnsupported {
                    reason: if offered {
                        "KVM refused to create an SNP VM"
                    } else {
                        "KVM does not offer the SNP VM type (KVM_X86_SNP_VM)"
                    },
                    source: Some(e),
                }
            })?;
        // Before any command: without the device no SNP VM can be
        // launched, and saying so beats a firmware error later.
        let sev = SevDevice::open()?;
        SnpCommands::new(&fd, sev.sev_fd()).init2()?;
        private_memory::enable_map_gpa_range_exit(&fd)?;
        Ok((fd, sev))
    }
}

impl Hypervisor for KvmHypervisor {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn snp_req_certs_supported(&self) -> Result<bool, HypervisorError> {
        req_certs_probe::probe_req_certs(&self.kvm)
    }

    fn snp_c_bit(&self) -> Option<u8> {
        snp_vm::host_c_bit()
    }

    fn snp_supported(&self) -> bool {
        let types = self.kvm.check_extension_raw(snp::KVM_CAP_VM_TYPES as _);
        types > 0 && types & (1 << snp::KVM_X86_SNP_VM) != 0
    }

    fn create_vm(&self, vm_type: VmType) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.create_kvm_vm(vm_type)?))
    }
}

#[derive(Debug, Default)]
struct VmState {
    vcpus: usize,
    next_slot: u32,
}

/// State shared by a VM and its vCPUs. Field order matters: the VM fd is
/// closed before `/dev/sev` (so its number is never reused while KVM may
/// still use it) and before the guest memory is unmapped, and vCPUs hold
/// an `Arc` so none of them goes away while a vCPU exists.
#[derive(Debug)]
struct VmShared {
    fd: VmFd,
    /// An SNP VM's `/dev/sev`: the `sev_fd` of its SEV commands.
    sev: Option<SevDevice>,
    vm_type: VmType,
    state: Mutex<VmState>,
    memory: Mutex<Vec<Arc<GuestMemoryMmap>>>,
    /// An SNP VM's private memory; closed after the VM fd.
    guest_memfds: Mutex<Vec<File>>,
}

impl VmShared {
    fn state(&self) -> MutexGuard<'_, VmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A KVM VM.
#[derive(Debug)]
pub struct KvmVm {
    shared: Arc<VmShared>,
}

impl KvmVm {
    /// The raw VM fd, for operations this crate does not wrap.
    pub fn vm_fd(&self) -> &VmFd {
        &self.shared.fd
    }

    /// The VM's type.
    pub fn vm_type(&self) -> VmType {
        self.shared.vm_type
    }

    /// Registers `memory` as guest_memfd-backed memory (a guest_memfd per
    /// region plus the shared mapping, `KVM_SET_USER_MEMORY_REGION2`)
    /// without changing its attributes. [`Vm::map_memory`] does this, then
    /// makes the memory private, for SNP VMs; on other VMs this checks the
    /// host's guest_memfd support on its own.
    pub fn bind_guest_memfd(&self, memory: Arc<GuestMemoryMmap>) -> Result<(), HypervisorError> {
        self.map_with_guest_memfd(memory, private_memory::bind_guest_memfd)
    }

    /// Maps `memory` with `bind`, which gives each region a guest_memfd
    /// and a slot from the one passed on, and keeps the guest_memfds as
    /// long as the VM.
    fn map_with_guest_memfd(
        &self,
        memory: Arc<GuestMemoryMmap>,
        bind: fn(&VmFd, &GuestMemoryMmap, u32) -> Result<Vec<File>, HypervisorError>,
    ) -> Result<(), HypervisorError> {
        // Kept first, as in `map_memory`.
        self.shared
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&memory));
        let mut state = self.shared.state();
        let files = bind(&self.shared.fd, &memory, state.next_slot)?;
        state.next_slot += u32::try_from(files.len()).unwrap_or(u32::MAX);
        self.shared
            .guest_memfds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(files);
        Ok(())
    }

    /// Creates a vCPU and returns the concrete KVM type.
    pub fn create_kvm_vcpu(&self, id: u8) -> Result<KvmVcpu, HypervisorError> {
        let mut state = self.shared.state();
        let fd = self
            .shared
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| HypervisorError::CreateVcpu { id, source })?;
        state.vcpus += 1;
        drop(state);
        KvmVcpu::new(fd, self.shared.fd.run_size(), Arc::clone(&self.shared))
    }
}

impl Vm for KvmVm {
    fn map_memory(&self, memory: Arc<GuestMemoryMmap>) -> Result<(), HypervisorError> {
        if self.shared.vm_type == VmType::Snp {
            return self.map_with_guest_memfd(memory, private_memory::map_private);
        }
        // Kept first, so that even a partly failed map (some slots
        // registered) never leaves KVM pointing at a freed mapping.
        self.shared
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&memory));
        let mut state = self.shared.state();
        for region in memory.iter() {
            let gpa = region.start_addr().0;
            let size = region.len();
            let slot = state.next_slot;
            let mem_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live host mapping of `size` bytes. The
            // `Arc` holding it was stored above in `VmShared`, which outlives
            // the VM fd and every vCPU fd (vCPUs hold the `Arc<VmShared>`),
            // so the kernel never sees the mapping go away under the guest.
            unsafe { self.shared.fd.set_user_memory_region(mem_region) }
                .map_err(|source| HypervisorError::MapMemory { gpa, size, source })?;
            state.next_slot += 1;
        }
        Ok(())
    }

    fn enable_snp_req_certs(&self) -> Result<(), HypervisorError> {
        if self.shared.vm_type != VmType::Snp {
            return Err(HypervisorError::NotSnpVm);
        }
        // Held across the ioctl so no vCPU can be created meanwhile.
        let state = self.shared.state();
        if state.vcpus > 0 {
            return Err(HypervisorError::VcpusAlreadyCreated);
        }
        self.snp_commands()?.enable_req_certs()
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, HypervisorError> {
        Ok(Box::new(self.create_kvm_vcpu(id)?))
    }

    fn snp(&self) -> Option<&dyn crate::SnpLaunch> {
        (self.shared.vm_type == VmType::Snp).then_some(self as &dyn crate::SnpLaunch)
    }
}
