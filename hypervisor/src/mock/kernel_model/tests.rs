//! Conformance tests of the kernel model: each checks one rule of
//! `arch/x86/kvm/svm/sev.c` (see the module docs and `docs/snp-hosts.md`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::vmgexit::ghcb;
use super::{KernelModelConfig, SEV_RET_INVALID_PARAM};
use crate::mock::{GuestStop, MockHypervisor, MockVcpu, MockVm, SevCpu, SevGuest};
use crate::sev_commands::{SevCommand, SnpCommands};
use crate::snp_cpuid::{CpuidEntry, encode_page};
use crate::{
    HypervisorError, SevDevice, SnpCertsCompletion, SnpLaunch, SnpPageType, Vcpu, Vm, VmExit,
    VmType,
};

pub(super) const GHCB: u64 = 0x9000;
pub(super) const REQ: u64 = 0xa000;
pub(super) const RESP: u64 = 0xb000;
pub(super) const BUF: u64 = 0x10000;

pub(super) type Action = Box<dyn FnMut(&mut SevCpu, &GuestMemoryMmap) -> GuestStop + Send>;
/// What `observe` saw: (SW_EXITINFO1, SW_EXITINFO2, RBX) per step.
pub(super) type Seen = Arc<std::sync::Mutex<Vec<(u64, u64, u64)>>>;

/// A guest made of steps, each ending in a VMGEXIT; then it stops for
/// good with a fault.
struct Steps(VecDeque<Action>);

impl SevGuest for Steps {
    fn run(&mut self, cpu: &mut SevCpu, memory: &GuestMemoryMmap) -> GuestStop {
        match self.0.pop_front() {
            Some(mut step) => step(cpu, memory),
            None => GuestStop::Fault("no more steps".into()),
        }
    }
}

impl crate::mock::MockGuest for Steps {
    fn next_exit(&mut self, _: &crate::mock::MockCompletion, _: &GuestMemoryMmap) -> VmExit {
        VmExit::Shutdown
    }
    fn sev_guest(&mut self) -> Option<&mut dyn SevGuest> {
        Some(self)
    }
}

pub(super) fn register(gpa: u64) -> Action {
    Box::new(move |cpu, _| {
        cpu.ghcb_msr = gpa | 0x012;
        GuestStop::Vmgexit
    })
}

/// An extended guest request whose header says `msg_type`, RAX the
/// buffer, RBX `npages`.
pub(super) fn ext_request(msg_type: u8, npages: u64) -> Action {
    Box::new(move |cpu, mem| {
        mem.write_obj(msg_type, GuestAddress(REQ + 0x34)).unwrap();
        ghcb::write_valid_fields(
            mem,
            GHCB,
            &[
                (ghcb::SW_EXIT_CODE, 0x8000_0012),
                (ghcb::SW_EXIT_INFO_1, REQ),
                (ghcb::SW_EXIT_INFO_2, RESP),
                (ghcb::RAX, BUF),
                (ghcb::RBX, npages),
            ],
        )
        .unwrap();
        cpu.ghcb_msr = GHCB;
        GuestStop::Vmgexit
    })
}

pub(super) fn ghcb_field(mem: &GuestMemoryMmap, offset: u64) -> u64 {
    mem.read_obj(GuestAddress(GHCB + offset)).unwrap()
}

/// A launched SNP VM with 1 MiB of memory and the certificate exit on,
/// its vCPU 0 running `steps`.
pub(super) fn launched(
    config: KernelModelConfig,
    steps: Vec<Action>,
) -> (MockVm, MockVcpu, Arc<GuestMemoryMmap>) {
    launched_with(config, steps, true)
}

/// [`launched`], with the certificate exit on only if `certs`.
pub(super) fn launched_with(
    config: KernelModelConfig,
    steps: Vec<Action>,
    certs: bool,
) -> (MockVm, MockVcpu, Arc<GuestMemoryMmap>) {
    let hv = MockHypervisor::new()
        .with_kernel_model(config)
        .with_guest(0, Steps(steps.into()));
    let vm = hv.create_mock_vm(VmType::Snp).unwrap();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
    vm.map_memory(Arc::clone(&mem)).unwrap();
    if certs {
        vm.enable_snp_req_certs().unwrap();
    }
    let vcpu = vm.create_mock_vcpu(0).unwrap();
    vm.launch_start(crate::DEFAULT_SNP_POLICY).unwrap();
    vm.launch_update(0x1000, 0x4000, SnpPageType::Normal)
        .unwrap();
    vm.launch_finish([0; 32]).unwrap();
    (vm, vcpu, mem)
}

#[test]
fn kernel_model_every_command_carries_the_open_sev_device() {
    let (vm, _vcpu, _mem) = launched(KernelModelConfig::default(), vec![]);
    let model = vm.kernel_model().unwrap();
    let names: Vec<&str> = model.commands().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "KVM_SEV_INIT2",
            "KVM_SEV_SNP_ENABLE_REQ_CERTS",
            "KVM_SEV_SNP_LAUNCH_START",
            "KVM_SEV_SNP_LAUNCH_UPDATE",
            "KVM_SEV_SNP_LAUNCH_FINISH"
        ]
    );
    for &(name, fd) in model.commands() {
        assert!(model.device().check(fd).is_ok(), "{name} with sev_fd {fd}");
    }
    assert!(model.populated(0x1000, 0x4000));
}

#[test]
fn kernel_model_commands_without_the_sev_device_fail() {
    // What the VMM did before: sev_fd 0 (stdin), never the device.
    let hv = MockHypervisor::new();
    let vm = hv.create_mock_vm(VmType::Snp).unwrap();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    vm.map_memory(mem).unwrap();
    let model = std::sync::Mutex::new(
        super::KernelModel::new(VmType::Snp, KernelModelConfig::default()).unwrap(),
    );
    let dev = SevDevice::open_path(model.lock().unwrap().device().path()).unwrap();
    SnpCommands::new(&model, dev.sev_fd()).init2().unwrap();
    let err = SnpCommands::new(&model, 0)
        .launch_start(crate::DEFAULT_SNP_POLICY)
        .unwrap_err();
    assert_eq!(
        err.errno(),
        Some(libc::ENOTTY),
        "snp_context_create fails: {err}"
    );
    // A file that is not the device is refused like a closed fd.
    let other = std::fs::File::open("/proc/self/stat").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&other).unsigned_abs();
    assert!(
        SnpCommands::new(&model, fd)
            .launch_start(crate::DEFAULT_SNP_POLICY)
            .is_err()
    );
    SnpCommands::new(&model, dev.sev_fd())
        .launch_start(crate::DEFAULT_SNP_POLICY)
        .unwrap();
}

#[test]
fn kernel_model_guest_requests_need_the_launch_fd_still_open() {
    let (vm, mut vcpu, _mem) = launched(
        KernelModelConfig::default(),
        vec![register(GHCB), ext_request(0, 0)],
    );
    // The fd LAUNCH_START kept is no longer open (a VMM that closed its
    // /dev/sev after the launch).
    vm.kernel_model().unwrap().launch_fd = Some(u32::MAX >> 1);
    let err = vcpu.run().unwrap_err();
    assert_eq!(err.errno(), Some(libc::EBADF), "{err}");
}

/// A step that records (SW_EXITINFO1, SW_EXITINFO2, RBX) of the GHCB as
/// the guest finds it, then makes `next`.
pub(super) fn observe(seen: &Seen, mut next: Action) -> Action {
    let seen = Arc::clone(seen);
    Box::new(move |cpu, mem| {
        seen.lock().unwrap().push((
            ghcb_field(mem, ghcb::SW_EXIT_INFO_1),
            ghcb_field(mem, ghcb::SW_EXIT_INFO_2),
            ghcb_field(mem, ghcb::RBX),
        ));
        next(cpu, mem)
    })
}

pub(super) fn terminate() -> Action {
    Box::new(|cpu, _| {
        cpu.ghcb_msr = 0x100;
        GuestStop::Vmgexit
    })
}

#[test]
fn kernel_model_certificate_exit_only_for_report_requests_and_enospc_sets_rbx() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_vm, mut vcpu, _mem) = launched(
        KernelModelConfig::default(),
        vec![
            register(GHCB),
            ext_request(0, 2),
            observe(&seen, ext_request(5, 2)),
            observe(&seen, terminate()),
        ],
    );
    // msg_type 0 went to firmware without an exit; msg_type 5 exits.
    let exit = vcpu.run().unwrap();
    assert_eq!(
        exit,
        VmExit::SnpReqCerts(crate::SnpCertsRequest {
            gpa: BUF,
            npages: 2
        })
    );
    vcpu.complete_snp_req_certs(SnpCertsCompletion::need_pages(3))
        .unwrap();
    assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0],
        (0, u64::from(SEV_RET_INVALID_PARAM), 2),
        "firmware's answer"
    );
    assert_eq!(
        seen[1],
        (0, 1 << 32, 3),
        "ENOSPC: RBX = npages, INVALID_LEN"
    );
}

#[test]
fn kernel_model_unaligned_buffer_is_bad_input_not_an_exit() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let unaligned: Action = Box::new(|cpu, mem| {
        let mut step = ext_request(5, 1);
        let stop = step(cpu, mem);
        mem.write_obj(BUF + 8, GuestAddress(GHCB + ghcb::RAX))
            .unwrap();
        stop
    });
    let (_vm, mut vcpu, _mem) = launched(
        KernelModelConfig::default(),
        vec![register(GHCB), unaligned, observe(&seen, terminate())],
    );
    assert!(matches!(vcpu.run().unwrap(), VmExit::Terminated { .. }));
    assert_eq!(
        seen.lock().unwrap()[0].0,
        2,
        "SW_EXITINFO1: malformed input"
    );
}

#[test]
fn kernel_model_bad_ret_fails_kvm_run_with_einval() {
    let (_vm, mut vcpu, _mem) = launched(
        KernelModelConfig::default(),
        vec![register(GHCB), ext_request(5, 1)],
    );
    assert!(matches!(vcpu.run().unwrap(), VmExit::SnpReqCerts(_)));
    vcpu.write_snp_req_certs_raw(libc::EINVAL as u64, 0)
        .unwrap();
    for _ in 0..2 {
        let err = vcpu.run().unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
    }
}

#[test]
fn kernel_model_completion_and_firmware_call_happen_in_the_immediate_exit_run() {
    let (_vm, mut vcpu, mem) = launched(
        KernelModelConfig::default(),
        vec![register(GHCB), ext_request(5, 1)],
    );
    mem.write_slice(&[0xaa; 16], GuestAddress(RESP)).unwrap();
    assert!(matches!(vcpu.run().unwrap(), VmExit::SnpReqCerts(_)));
    vcpu.complete_snp_req_certs(SnpCertsCompletion::ok())
        .unwrap();
    // The lease-release run: no guest code runs, yet firmware answered.
    vcpu.set_immediate_exit(true);
    assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    let mut resp = [0u8; 16];
    mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
    assert_eq!(
        resp, [0; 16],
        "firmware's response page written in that run"
    );
    assert_eq!(
        ghcb_field(&mem, ghcb::SW_EXIT_INFO_2),
        u64::from(SEV_RET_INVALID_PARAM)
    );
}

#[test]
fn kernel_model_unregistered_ghcb_fails_kvm_run() {
    let (_vm, mut vcpu, _mem) = launched(
        KernelModelConfig::default(),
        vec![register(GHCB + 0x1000), ext_request(5, 1)],
    );
    assert_eq!(vcpu.run().unwrap_err().errno(), Some(libc::EINVAL));
}

#[test]
fn kernel_model_init2_and_req_certs_only_before_vcpus() {
    let hv = MockHypervisor::new();
    let vm = hv.create_mock_vm(VmType::Snp).unwrap();
    let _vcpu = vm.create_mock_vcpu(0).unwrap();
    let model = vm.kernel_model().unwrap();
    let fd = model.commands()[0].1;
    drop(model);
    let mut guard = vm.kernel_model().unwrap();
    // snp_enable_certs: vCPUs exist.
    let err = guard
        .encrypt_op(fd, SevCommand::EnableReqCerts)
        .unwrap_err();
    assert_eq!(err.errno.errno(), libc::EINVAL);
    // sev_mem_enc_ioctl: INIT2 again on an SNP VM is EPERM.
    let mut init = kvm_bindings::kvm_sev_init::default();
    let err = guard
        .encrypt_op(fd, SevCommand::Init2(&mut init))
        .unwrap_err();
    assert_eq!(err.errno.errno(), libc::EPERM);
    // __sev_guest_init: no INIT2 once a vCPU exists.
    let mut fresh = super::KernelModel::new(VmType::Snp, KernelModelConfig::default()).unwrap();
    fresh.vcpu_created();
    let dev = SevDevice::open_path(fresh.device().path()).unwrap();
    let err = fresh
        .encrypt_op(dev.sev_fd(), SevCommand::Init2(&mut init))
        .unwrap_err();
    assert_eq!(err.errno.errno(), libc::EINVAL);
}

#[test]
fn kernel_model_launch_update_needs_private_memory() {
    let hv = MockHypervisor::new();
    let vm = hv.create_mock_vm(VmType::Snp).unwrap();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    vm.map_memory(mem).unwrap();
    vm.launch_start(crate::DEFAULT_SNP_POLICY).unwrap();
    vm.set_private(0x2000, 0x1000, false).unwrap();
    let err = vm
        .launch_update(0x1000, 0x2000, SnpPageType::Normal)
        .unwrap_err();
    // The first page is done; the shared one ends the call, the retry
    // fails on it: kvm_gmem_populate's error, reported as EIO.
    assert_eq!(err.errno(), Some(libc::EIO), "{err}");
    assert!(vm.kernel_model().unwrap().populated(0x1000, 0x1000));
}

#[test]
fn kernel_model_no_register_writes_after_launch_finish() {
    let (_vm, mut vcpu, _mem) = launched(KernelModelConfig::default(), vec![]);
    let err = vcpu.setup_long_mode(0x1000, 0x3000).unwrap_err();
    assert!(matches!(err, HypervisorError::Registers(_)));
    assert_eq!(err.errno(), Some(libc::EINVAL));
}

#[test]
fn kernel_model_cpuid_page_is_checked_against_the_masks() {
    let hv = MockHypervisor::new();
    let vm = hv.create_mock_vm(VmType::Snp).unwrap();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    vm.map_memory(Arc::clone(&mem)).unwrap();
    vm.launch_start(crate::DEFAULT_SNP_POLICY).unwrap();
    // A page the way the VMM built it before: raw supported CPUID, with
    // TSC_DEADLINE in 1.ECX and an index on a leaf without subleaves.
    let raw = [
        CpuidEntry {
            eax_in: 1,
            ecx: (1 << 24) | 1,
            ..Default::default()
        },
        CpuidEntry {
            eax_in: 0x8000_0008,
            ecx_in: 3,
            ebx: 1 << 25,
            ..Default::default()
        },
    ];
    mem.write_slice(&encode_page(&raw).unwrap(), GuestAddress(0x8000))
        .unwrap();
    let err = vm
        .launch_update(0x8000, 0x1000, SnpPageType::Cpuid)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::SnpCommand {
                fw_error: SEV_RET_INVALID_PARAM,
                ..
            }
        ),
        "{err}"
    );
    // Firmware's corrected page was written back for the VMM to report.
    let mut page = vec![0u8; 4096];
    mem.read_slice(&mut page, GuestAddress(0x8000)).unwrap();
    let (_, fixed) = crate::snp_cpuid::decode_page(&page);
    assert_eq!(fixed[0].ecx, 1);
    assert_eq!((fixed[1].ecx_in, fixed[1].ebx), (0, 0));
    // The page built the QEMU way is accepted.
    let masked = [
        CpuidEntry {
            eax_in: 1,
            ecx: 1,
            ..Default::default()
        },
        CpuidEntry {
            eax_in: 0xd,
            ecx_in: 1,
            xcr0_in: 1,
            ebx: 0x240,
            ..Default::default()
        },
    ];
    mem.write_slice(&encode_page(&masked).unwrap(), GuestAddress(0x9000))
        .unwrap();
    vm.launch_update(0x9000, 0x1000, SnpPageType::Cpuid)
        .unwrap();
}

#[test]
fn kernel_model_launch_update_partial_progress_and_eagain_are_resumed() {
    let config = KernelModelConfig {
        launch_update_max_pages: Some(1),
        launch_update_eagain: 2,
        ..Default::default()
    };
    let (vm, _vcpu, _mem) = launched(config, vec![]);
    let model = vm.kernel_model().unwrap();
    assert!(model.populated(0x1000, 0x4000));
    let updates = model
        .commands()
        .iter()
        .filter(|(n, _)| *n == "KVM_SEV_SNP_LAUNCH_UPDATE")
        .count();
    assert_eq!(updates, 2 + 4, "two EAGAINs, then one page per call");
}
