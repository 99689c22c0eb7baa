//! Tests of the host check: the sysfs items against made-up `/sys/module`
//! trees, the capability items against made-up answers, and a whole probe
//! against paths that do not exist.

use std::fs;
use std::path::Path;

use super::*;

/// A `/sys/module` with `modules` loaded and `params` as (module, name,
/// value) files.
fn sys_module(modules: &[&str], params: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in modules {
        fs::create_dir_all(dir.path().join(m)).unwrap();
    }
    for (module, name, value) in params {
        let p = dir.path().join(module).join("parameters");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join(name), format!("{value}\n")).unwrap();
    }
    dir
}

#[test]
fn flavour_amd_is_ok() {
    let dir = sys_module(&["kvm", "kvm_amd", "ccp"], &[]);
    let item = kvm_flavour_item(dir.path());
    assert_eq!(item.status, ItemStatus::Ok);
    assert_eq!(item.detail, "AMD SVM (kvm_amd)");
    assert_eq!(item.fix, None);
}

#[test]
fn flavour_pvm_is_missing_and_says_why() {
    let dir = sys_module(&["kvm", "kvm_pvm"], &[]);
    let item = kvm_flavour_item(dir.path());
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(item.detail.contains("PVM"), "{}", item.detail);
    assert!(item.detail.contains("(kvm_pvm)"), "{}", item.detail);
    assert!(item.fix.unwrap().contains("nested SNP"));
}

#[test]
fn flavour_intel_and_none() {
    let dir = sys_module(&["kvm", "kvm_intel"], &[]);
    let item = kvm_flavour_item(dir.path());
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(item.detail.starts_with("Intel VMX (kvm_intel)"));
    assert!(item.fix.unwrap().contains("AMD only"));

    let dir = sys_module(&["kvm"], &[]);
    let item = kvm_flavour_item(dir.path());
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(item.detail.contains("no vendor module"), "{}", item.detail);

    let dir = sys_module(&[], &[]);
    let item = kvm_flavour_item(dir.path());
    assert!(item.detail.starts_with("no KVM module"), "{}", item.detail);
}

#[test]
fn sev_snp_parameter_states() {
    let dir = sys_module(
        &[],
        &[
            ("kvm_amd", "sev_snp", "Y"),
            ("kvm_amd", "sev", "Y"),
            ("kvm_amd", "sev_es", "Y"),
        ],
    );
    let item = sev_snp_item(dir.path());
    assert_eq!(item.status, ItemStatus::Ok);
    assert_eq!(item.detail, "sev_snp=Y (sev=Y sev_es=Y)");

    let dir = sys_module(&[], &[("kvm_amd", "sev_snp", "N")]);
    let item = sev_snp_item(dir.path());
    assert_eq!(item.status, ItemStatus::Missing);
    assert_eq!(item.detail, "sev_snp=N: SNP is off in kvm_amd");
    assert!(item.fix.unwrap().contains("sev=1 sev_es=1 sev_snp=1"));

    let dir = sys_module(&["kvm_amd"], &[]);
    let item = sev_snp_item(dir.path());
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(
        item.detail.contains("no readable sev_snp"),
        "{}",
        item.detail
    );

    let dir = sys_module(&["kvm_pvm"], &[]);
    let item = sev_snp_item(dir.path());
    assert_eq!(item.detail, "kvm_amd is not loaded");
}

#[test]
fn kernel_releases() {
    assert_eq!(parse_kernel_release("6.18.44-fc-v1045"), Some((6, 18)));
    assert_eq!(parse_kernel_release("7.0.0-rc3+"), Some((7, 0)));
    assert_eq!(parse_kernel_release("7.1"), Some((7, 1)));
    assert_eq!(parse_kernel_release("7.0rc1"), Some((7, 0)));
    assert_eq!(parse_kernel_release("weird"), None);
    assert_eq!(parse_kernel_release("6"), None);

    let item = kernel_item(Some("6.18.44-fc-v1045"));
    assert_eq!(item.status, ItemStatus::Warn);
    assert!(item.detail.contains("need Linux 7.0 or later"));
    let item = kernel_item(Some("7.0.0"));
    assert_eq!(item.status, ItemStatus::Ok);
    assert_eq!(kernel_item(Some("x.y")).status, ItemStatus::Warn);
    assert_eq!(kernel_item(None).status, ItemStatus::Warn);
}

#[test]
fn vm_types_mask() {
    // Only the default type, as on PVM.
    let item = vm_types_item(1);
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(item.detail.starts_with("SNP VM type not offered"));
    assert!(
        item.detail.contains("lists only default,"),
        "{}",
        item.detail
    );
    // Default, SEV, SEV-ES and SNP.
    let item = vm_types_item(0b11101);
    assert_eq!(item.status, ItemStatus::Ok);
    assert_eq!(
        item.detail,
        "KVM_X86_SNP_VM offered (VM types: default, sev, sev-es, snp)"
    );
    let item = vm_types_item(0);
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(item.detail.contains("absent"));
}

#[test]
fn memory_capabilities() {
    assert_eq!(guest_memfd_item(1).status, ItemStatus::Ok);
    assert_eq!(guest_memfd_item(0).status, ItemStatus::Missing);
    assert_eq!(user_memory2_item(1).status, ItemStatus::Ok);
    assert_eq!(user_memory2_item(0).status, ItemStatus::Missing);
    let item = memory_attributes_item(8);
    assert_eq!(item.status, ItemStatus::Ok);
    assert!(item.detail.contains("0x8"));
    let item = memory_attributes_item(0x4);
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(item.detail.contains("lacks KVM_MEMORY_ATTRIBUTE_PRIVATE"));
    assert!(
        memory_attributes_item(0)
            .detail
            .contains("KVM_CAP_MEMORY_ATTRIBUTES absent")
    );
}

#[test]
fn req_certs_answers() {
    assert_eq!(
        req_certs_item(Ok(ReqCertsAnswer::Value(1))).status,
        ItemStatus::Ok
    );
    assert_eq!(
        req_certs_item(Ok(ReqCertsAnswer::Value(0))).status,
        ItemStatus::Missing
    );
    let item = req_certs_item(Ok(ReqCertsAnswer::Unsupported(crate::Errno::new(
        libc::ENXIO,
    ))));
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(
        item.detail.ends_with(
            "this KVM has no SEV support (ENXIO: No such device or address (os error 6))"
        ),
        "{}",
        item.detail
    );
    let item = req_certs_item(Ok(ReqCertsAnswer::Unsupported(crate::Errno::new(
        libc::EINVAL,
    ))));
    assert!(item.detail.contains("before Linux 7.0"), "{}", item.detail);
    let item = req_certs_item(Err(HypervisorError::ProbeSnpReqCerts(crate::Errno::new(
        libc::EIO,
    ))));
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(
        item.detail.starts_with("Failed to query"),
        "{}",
        item.detail
    );
}

#[test]
fn report_verdict_follows_missing_items() {
    let mut report = HostReport {
        items: vec![
            HostItem::ok("a", "fine"),
            HostItem::warn("b", "hm", "look"),
            HostItem::skipped("c", "not asked"),
        ],
    };
    assert!(report.can_serve_snp());
    report.items.push(HostItem::missing("d", "gone", "get it"));
    assert!(!report.can_serve_snp());
    assert_eq!(report.item("d").unwrap().fix.as_deref(), Some("get it"));
    assert!(report.item("e").is_none());
    assert_eq!(ItemStatus::Skipped.to_string(), "skipped");
}

#[test]
fn probe_without_devices_skips_the_kvm_items() {
    let dir = sys_module(&["kvm", "kvm_pvm"], &[]);
    let paths = HostPaths {
        kvm: dir.path().join("no-kvm"),
        sev: dir.path().join("no-sev"),
        sys_module: dir.path().to_owned(),
    };
    let report = probe_host_with(&paths);
    assert!(!report.can_serve_snp());
    let names: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            ITEM_KVM_DEVICE,
            ITEM_KVM_FLAVOUR,
            ITEM_SEV_SNP_PARAM,
            ITEM_SNP_VM_TYPE,
            ITEM_REQ_CERTS,
            ITEM_GUEST_MEMFD,
            ITEM_MEMORY_ATTRIBUTES,
            ITEM_USER_MEMORY2,
            ITEM_KERNEL,
            ITEM_SEV_DEVICE,
            ITEM_SEV_FIRMWARE,
        ]
    );
    let kvm = report.item(ITEM_KVM_DEVICE).unwrap();
    assert_eq!(kvm.status, ItemStatus::Missing);
    assert!(
        kvm.detail
            .ends_with("no-kvm does not exist: no KVM module is loaded, or virtualisation is off")
    );
    let vm_types = report.item(ITEM_SNP_VM_TYPE).unwrap();
    assert_eq!(vm_types.status, ItemStatus::Skipped);
    let sev = report.item(ITEM_SEV_DEVICE).unwrap();
    // Without /dev/sev no SNP VM can be launched: missing, not a warning.
    assert_eq!(sev.status, ItemStatus::Missing);
    assert!(sev.detail.contains("does not exist"));
    assert!(!report.can_serve_snp());
    assert_eq!(
        report.item(ITEM_SEV_FIRMWARE).unwrap().status,
        ItemStatus::Skipped
    );
}

#[test]
fn kvm_device_that_is_not_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("kvm");
    fs::write(&fake, b"").unwrap();
    let (item, kvm) = kvm_device_item(&fake);
    assert!(kvm.is_none());
    assert_eq!(item.status, ItemStatus::Missing);
    assert!(item.detail.contains("cannot be used"), "{}", item.detail);
}

#[test]
fn sev_device_that_opens_is_ok_and_firmware_only_through_dev_sev() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("sev");
    fs::write(&fake, b"").unwrap();
    let (item, usable) = firmware::sev_device_item(&fake);
    assert!(usable);
    assert_eq!(item.status, ItemStatus::Ok);
    let item = firmware::firmware_item(&fake, true);
    assert_eq!(item.status, ItemStatus::Skipped);
    assert!(item.detail.contains("/dev/sev"));
    assert_ne!(fake.as_path(), Path::new(firmware::SEV_DEVICE));
}

#[test]
fn firmware_status_in_words() {
    let status = sev::firmware::host::SnpPlatformStatus {
        version: (1, 55),
        build_id: 21,
        guest_count: 2,
        reported_tcb_version: sev::firmware::host::TcbVersion::new(None, 3, 0, 8, 115),
        platform_tcb_version: sev::firmware::host::TcbVersion::new(Some(1), 4, 0, 9, 116),
        ..Default::default()
    };
    assert_eq!(
        firmware::status_text(&status),
        "SNP firmware 1.55 build 21; reported TCB: bootloader 3 tee 0 snp 8 microcode 115; \
         installed TCB: bootloader 4 tee 0 snp 9 microcode 116 fmc 1; 2 SNP guest(s) running"
    );
}
