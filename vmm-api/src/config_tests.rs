//! Tests of the VM configuration.

use serde_json::json;
use snp_certs_types::settings::{MAX_BUSY_BUDGET_MS, MAX_CERTS_TIMEOUT_MS};

use super::*;

#[test]
fn empty_object_is_the_default() {
    let c: VmConfig = serde_json::from_value(json!({})).unwrap();
    assert_eq!(c, VmConfig::default());
    assert_eq!(c.cpus, CpusConfig::with_boot(1));
    assert!(!c.platform.sev_snp);
    assert_eq!(c.memory.size, 64 << 20);
    assert_eq!(c.snp.certs_timeout, 100);
    assert_eq!(c.snp.busy_budget, 30_000);
    assert_eq!(c.snp.on_error, OnError::Empty);
    assert_eq!(c.snp.startup_wait, 30_000);
    assert!(!c.snp.doorbell && !c.snp.allow_large);
    assert_eq!(c.payload, None);
    c.validate().unwrap();
}

#[test]
fn full_config_round_trips() {
    let v = json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 134217728u64},
        "platform": {"sev_snp": false},
        "snp": {"certs_file": "/c.bin", "certs_timeout": 50, "busy_budget": 500,
                "on_error": "busy", "allow_large": true, "startup_wait": 10,
                "doorbell": true},
        "payload": {"test_guest": {"kind": "attest", "requests": 7, "interval_ms": 20,
                                   "retry_ms": 5, "max_busy_retries": 30},
                    "host_data": "00".repeat(32)}
    });
    let c: VmConfig = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&c).unwrap(), v);
    assert_eq!(
        c.snp.certs_config(),
        CertsConfig {
            certs_file: Some("/c.bin".into()),
            certs_timeout: 50,
            busy_budget: 500,
            on_error: OnError::Busy,
            allow_large: true,
        }
    );
}

#[test]
fn unknown_fields_are_refused() {
    for v in [
        json!({"cpu": {}}),
        json!({"cpus": {"boot_vcpus": 1, "max": 2}}),
        json!({"cpus": {"boot": 1}}),
        json!({"platform": {"sev_snp": true, "sgx": true}}),
        json!({"memory": {"size": 4096, "sharde": true}}),
        json!({"preserved_fds": [3]}),
        json!({"snp": {"serial": null}}),
        json!({"snp": {"certs-file": "/x"}}),
        json!({"snp": {"on_error": "eio"}}),
        json!({"payload": {"test_guest": {"kind": "attest", "count": 1}}}),
        json!({"payload": {"kind": "attest"}}),
    ] {
        assert!(
            serde_json::from_value::<VmConfig>(v.clone()).is_err(),
            "{v}"
        );
    }
    assert!(
        serde_json::from_value::<VmConfig>(json!({"payload": {"test_guest": {"kind": "linux"}}}))
            .is_err()
    );
    assert!(serde_json::from_value::<VmConfig>(json!({"payload": {"requests": 1}})).is_err());
}

#[test]
fn validation() {
    let check = |f: &dyn Fn(&mut VmConfig)| {
        let mut c = VmConfig::default();
        f(&mut c);
        c.validate().map_err(|e| e.to_string())
    };
    let certs_error = |f: &dyn Fn(&mut VmConfig)| {
        let mut c = VmConfig::default();
        f(&mut c);
        match c.validate() {
            Err(ConfigError::Certs(e)) => e.to_string(),
            other => panic!("not a certs error: {other:?}"),
        }
    };
    assert!(
        check(&|c| c.cpus = CpusConfig::with_boot(0))
            .unwrap_err()
            .contains("cpus.boot_vcpus")
    );
    assert!(check(&|c| c.cpus = CpusConfig::with_boot(9)).is_err());
    assert_eq!(check(&|c| c.cpus = CpusConfig::with_boot(8)), Ok(()));
    assert_eq!(
        check(&|c| c.cpus.max_vcpus = 2),
        Err(
            "cpus.max_vcpus must equal cpus.boot_vcpus (1): snp-vmm cannot hot-plug vCPUs, got 2"
                .to_owned()
        )
    );
    assert_eq!(check(&|c| c.memory.size = 1 << 20), Ok(()));
    assert_eq!(check(&|c| c.memory.size = 4 << 30), Ok(()));
    assert!(check(&|c| c.memory.size = (1 << 20) - 4096).is_err());
    assert!(check(&|c| c.memory.size = (4 << 30) + 4096).is_err());
    assert!(
        check(&|c| c.memory.size = (2 << 20) + 1)
            .unwrap_err()
            .contains("multiple of 4 KiB")
    );
    assert!(certs_error(&|c| c.snp.certs_file = Some("certs.bin".into())).contains("absolute"));
    assert_eq!(
        check(&|c| c.snp.certs_timeout = MAX_CERTS_TIMEOUT_MS),
        Ok(())
    );
    assert!(certs_error(&|c| c.snp.certs_timeout = MAX_CERTS_TIMEOUT_MS + 1).contains("timeout"));
    assert_eq!(check(&|c| c.snp.busy_budget = MAX_BUSY_BUDGET_MS), Ok(()));
    assert!(certs_error(&|c| c.snp.busy_budget = MAX_BUSY_BUDGET_MS + 1).contains("Busy budget"));
    assert!(
        check(&|c| c.snp.startup_wait = MAX_STARTUP_WAIT_MS + 1)
            .unwrap_err()
            .contains("startup_wait")
    );
    let err = VmConfig {
        payload: Some(PayloadConfig {
            kernel: Some("/vmlinux".into()),
            ..PayloadConfig::default()
        }),
        ..VmConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(matches!(err, ConfigError::Payload(_)), "{err:?}");
}

#[test]
fn max_vcpus_defaults_to_boot_vcpus() {
    let c: VmConfig = serde_json::from_value(json!({"cpus": {"boot_vcpus": 3}})).unwrap();
    assert_eq!(c.cpus, CpusConfig::with_boot(3));
    let c: VmConfig =
        serde_json::from_value(json!({"cpus": {"boot_vcpus": 2, "max_vcpus": 4}})).unwrap();
    assert!(matches!(
        c.validate(),
        Err(ConfigError::MaxCpus { boot: 2, max: 4 })
    ));
}

/// A configuration as Cloud Hypervisor writes one (its defaults for
/// every section, from `vmm/src/vm_config.rs`), with the payload ours.
fn cloud_hypervisor_config() -> serde_json::Value {
    json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "kvm_hyperv": false, "max_phys_bits": 46,
                 "features": {"amx": false}, "nested": true, "core_scheduling": "Vm",
                 "profile": "Host"},
        "memory": {"size": 67108864, "mergeable": false, "hotplug_method": "Acpi",
                   "shared": true, "hugepages": false, "prefault": false, "reserve": false,
                   "thp": true},
        "payload": {"test_guest": {"kind": "attest"}},
        "rng": {"src": "/dev/urandom", "iommu": false},
        "serial": {"mode": "Null", "iommu": false},
        "console": {"mode": "Tty", "iommu": false},
        "debug_console": {"mode": "Off", "iobase": 233},
        "iommu": false, "pvpanic": false, "watchdog": false, "landlock_enable": false,
        "platform": {"num_pci_segments": 1, "iommu_address_width_bits": 64, "sev_snp": false,
                     "iommufd": false, "vfio_p2p_dma": true},
    })
}

#[test]
fn cloud_hypervisor_config_is_accepted_with_warnings() {
    let v = cloud_hypervisor_config();
    let c: VmConfig = serde_json::from_value(v.clone()).unwrap();
    c.validate().unwrap();
    assert_eq!(c.cpus, CpusConfig::with_boot(1));
    assert_eq!(c.memory.size, 64 << 20);
    let warnings = c.warnings();
    let named: Vec<&str> = warnings
        .iter()
        .map(|w| w.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        named,
        ["console", "debug_console", "memory.shared", "rng", "serial"],
        "{warnings:#?}"
    );
    // Shown back as given.
    assert_eq!(serde_json::to_value(&c).unwrap()["serial"], v["serial"]);
    assert_eq!(serde_json::to_value(&c).unwrap()["memory"]["shared"], true);
    let again: VmConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn cloud_hypervisor_settings_that_change_the_guest_are_refused() {
    let mut v = cloud_hypervisor_config();
    v["cpus"]["topology"] = json!({"threads_per_core": 1, "cores_per_die": 1,
                                   "dies_per_package": 1, "packages": 1});
    let c: VmConfig = serde_json::from_value(v).unwrap();
    let err = c.validate().unwrap_err();
    assert!(matches!(err, ConfigError::CloudHypervisor(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cpus.topology is not supported: "),
        "{err}"
    );
}

#[test]
fn errors_name_the_field_by_path() {
    let err = serde_json::from_value::<VmConfig>(json!({"cpus": {"boot_vcpus": "two"}}))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cpus.boot_vcpus: invalid type"), "{err}");
    let err = serde_json::from_value::<VmConfig>(json!({"memory": {"sharde": true}}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `sharde`"), "{err}");
}

#[test]
fn host_data_needs_an_snp_guest() {
    let hex = "ab".repeat(32);
    let mut c: VmConfig = serde_json::from_value(json!({"payload": {"host_data": hex}})).unwrap();
    assert!(matches!(c.validate(), Err(ConfigError::HostDataWithoutSnp)));
    c.platform.sev_snp = true;
    c.validate().unwrap();
    assert_eq!(c.host_data(), Some([0xab; 32]));
}
