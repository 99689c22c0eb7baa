//! Tests that need real SEV-SNP hardware and a kernel with SNP certificate
//! requests (Linux 7.0+). They run only with `SNP_HOST_TESTS=1` and print
//! why they skipped otherwise.

// Helpers outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hypervisor::kvm::KvmHypervisor;
use hypervisor::kvm::snp::KVM_SEV_SNP_ENABLE_REQ_CERTS;
use hypervisor::{Hypervisor, HypervisorError, Vm, VmType};
use kvm_bindings::kvm_sev_cmd;

fn snp_host() -> Option<KvmHypervisor> {
    if std::env::var("SNP_HOST_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: SEV-SNP host tests need SNP_HOST_TESTS=1 on an SNP host");
        return None;
    }
    match KvmHypervisor::new() {
        Ok(hv) => Some(hv),
        Err(e) => panic!("SNP_HOST_TESTS=1 but {e}"),
    }
}

#[test]
fn probe_reports_support() {
    let Some(hv) = snp_host() else { return };
    assert!(hv.snp_req_certs_supported().unwrap());
}

#[test]
fn enable_before_vcpus_succeeds_after_fails() {
    let Some(hv) = snp_host() else { return };
    let vm = hv.create_kvm_vm(VmType::Snp).unwrap();
    assert_eq!(vm.vm_type(), VmType::Snp);
    vm.enable_snp_req_certs().unwrap();
    // Enabling twice before any vCPU is fine for KVM.
    vm.enable_snp_req_certs().unwrap();

    let _vcpu = vm.create_kvm_vcpu(0).unwrap();
    assert!(matches!(
        vm.enable_snp_req_certs(),
        Err(HypervisorError::VcpusAlreadyCreated)
    ));
    // And the kernel itself says EINVAL.
    let mut cmd = kvm_sev_cmd {
        id: KVM_SEV_SNP_ENABLE_REQ_CERTS,
        ..Default::default()
    };
    let err = vm.vm_fd().encrypt_op_sev(&mut cmd).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
}

#[test]
fn boxed_snp_vm_through_the_trait() {
    let Some(hv) = snp_host() else { return };
    let vm = hv.create_vm(VmType::Snp).unwrap();
    vm.enable_snp_req_certs().unwrap();
    let _vcpu = vm.create_vcpu(0).unwrap();
    assert!(matches!(
        vm.enable_snp_req_certs(),
        Err(HypervisorError::VcpusAlreadyCreated)
    ));
}
