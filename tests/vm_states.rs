//! The VM states a guest's own end leads to, through the API, against
//! Cloud Hypervisor's state machine (`VmState` in CH's `vmm/src/vm.rs`
//! and what its `vm.info` reports): see `vmm::api_impl`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::api::{ApiVmm, DEADLINE, certs_file};

/// The states a guest's own end leads to, as Cloud Hypervisor's: a guest
/// that halted is idle and stays `Running` (it can be shut down, and is
/// then `Created`); an SNP guest that asked to be terminated leaves the
/// VM `Shutdown`, which boots again.
#[test]
fn states_after_the_guest_ends_as_in_cloud_hypervisor() {
    let vcpu_state = |vmm: &ApiVmm| -> (String, String) {
        let info = vmm.remote_json(&["info"]);
        let state = info["state"].as_str().unwrap().to_owned();
        let vcpu = info["vcpus"][0]["state"].as_str().unwrap().to_owned();
        (state, vcpu)
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = certs_file(dir.path(), "a.bin", 0x11);
    let args: Vec<String> = vec![
        "--snp".into(),
        format!("certs_file={},doorbell=on", a.display()),
        "--payload".into(),
        "attest,requests=1".into(),
    ];
    let vmm = ApiVmm::start(dir.path(), "mock", &args);
    let (state, _) = support::poll(DEADLINE, "the guest to halt", || {
        let (state, vcpu) = vcpu_state(&vmm);
        (vcpu == "halted").then_some((state, vcpu))
    });
    assert_eq!(state, "Running", "a halted guest is Running");
    assert_eq!(vmm.remote(&["shutdown"]).code, 0);
    assert_eq!(vcpu_state(&vmm).0, "Created");

    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--platform",
        "sev_snp=on",
        "--payload",
        "snp-attest,requests=1",
    ]
    .map(str::to_owned)
    .to_vec();
    let vmm = ApiVmm::start(dir.path(), "mock-snp", &args);
    let (state, vcpu) = support::poll(DEADLINE, "the SNP guest to terminate", || {
        let (state, vcpu) = vcpu_state(&vmm);
        vcpu.starts_with("terminated").then_some((state, vcpu))
    });
    assert_eq!(state, "Shutdown", "{vcpu}");
    let run = vmm.remote(&["shutdown"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("The VM is Shutdown"), "{run:?}");
    assert_eq!(vmm.remote(&["boot"]).code, 0);
    vmm.events.wait_named_from(0, "booted", 2);
}
