//! Tests that need real SEV-SNP hardware and a kernel with SNP certificate
//! requests (Linux 7.0+), named `snp_host_*`. The default nextest filter
//! (`.config/nextest.toml`) leaves them out, so the runner reports them as
//! skipped; `scripts/run_snp_host_tests.sh` runs them on SNP hosts, and
//! there they fail, never pass, when the host lacks what they test.

// Helpers outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hypervisor::kvm::KvmHypervisor;
use hypervisor::kvm::snp::KVM_SEV_SNP_ENABLE_REQ_CERTS;
use hypervisor::{Hypervisor, HypervisorError, Vm, VmType};
use kvm_bindings::kvm_sev_cmd;

fn snp_host() -> KvmHypervisor {
    KvmHypervisor::new().unwrap_or_else(|e| {
        panic!("an SNP host test needs a usable /dev/kvm on an SEV-SNP host: {e:?}")
    })
}

#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_probe_reports_support() {
    let hv = snp_host();
    assert!(hv.snp_req_certs_supported().unwrap());
}

#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_enable_before_vcpus_succeeds_after_fails() {
    let hv = snp_host();
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
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_boxed_snp_vm_through_the_trait() {
    let hv = snp_host();
    let vm = hv.create_vm(VmType::Snp).unwrap();
    vm.enable_snp_req_certs().unwrap();
    let _vcpu = vm.create_vcpu(0).unwrap();
    assert!(matches!(
        vm.enable_snp_req_certs(),
        Err(HypervisorError::VcpusAlreadyCreated)
    ));
}

#[test]
#[ignore = "needs an SEV-SNP host: scripts/run_snp_host_tests.sh runs it"]
fn snp_host_check_host_says_it_can_serve() {
    let report = hypervisor::kvm::host::probe_host();
    let missing: Vec<_> = report
        .items
        .iter()
        .filter(|i| i.status == hypervisor::kvm::host::ItemStatus::Missing)
        .collect();
    assert!(missing.is_empty(), "missing on this SNP host: {missing:#?}");
    assert!(report.can_serve_snp());
}
