//! Cloud Hypervisor's `VmConfig` fields that snp-vmm does not implement,
//! and what it does with each, so that a Cloud Hypervisor user's
//! configuration is accepted wherever that is honest.
//!
//! A body of `PUT vm.create` is read in two steps. First every field
//! named in the tables below ([`TOP`], [`CPUS`], [`MEMORY`], [`PLATFORM`],
//! [`PAYLOAD`]; the fields of Cloud Hypervisor's `vmm/src/vm_config.rs`
//! that snp-vmm has no use for) is taken out of the JSON object and kept,
//! as given, in [`ChFields`] under its path (`serial`, `memory.shared`).
//! Then the rest is read into snp-vmm's own types, which refuse unknown
//! fields: a field that is neither Cloud Hypervisor's nor ours is still an
//! error. Each kept field is then handled as its table says:
//!
//! * [`Handling::Ignored`]: accepted, and named in a warning (in the
//!   `vm.create` answer and the VMM's log) unless its value asks for
//!   nothing (Cloud Hypervisor's default, `null`). These are devices (the
//!   built-in test guests drive none), host-side tuning, and sandboxing.
//! * [`Handling::Refused`]: accepted only at Cloud Hypervisor's default or
//!   `null`; any other value would change what the guest sees (its CPU
//!   topology, CPUID, memory layout, firmware tables, TDX) in a way
//!   snp-vmm cannot honour, and is refused with a 400 that says why.
//!
//! The values are kept only to be shown back (`GET vm.info` returns the
//! configuration as it was given); nothing reads them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What snp-vmm does with a Cloud Hypervisor field it does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Accepted; a value other than the default is named in a warning,
    /// with the reason it changes nothing here.
    Ignored(&'static str),
    /// Refused, with the reason, unless at its default or `null`.
    Refused(&'static str),
}

/// One Cloud Hypervisor field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChField {
    /// Its name in its section.
    pub name: &'static str,
    /// Cloud Hypervisor's default, as JSON text; `null` always counts as
    /// the default too. A value equal to it asks for nothing.
    pub default: &'static str,
    /// What snp-vmm does with it.
    pub handling: Handling,
}

const DEVICE: Handling = Handling::Ignored("snp-vmm gives its built-in test guests no devices");
const HOST: Handling = Handling::Ignored("host-side tuning snp-vmm does not do");
const SANDBOX: Handling = Handling::Ignored("snp-vmm does not sandbox itself with Landlock");
const CPUID: Handling = Handling::Refused(
    "it changes the CPUID the guest sees, and snp-vmm does not set one (non-SNP VMs get KVM's defaults, SNP VMs the host's supported CPUID)",
);
const SMBIOS: Handling = Handling::Refused(
    "it is shown to the guest in SMBIOS tables, and snp-vmm gives its guests no firmware tables",
);

const fn field(name: &'static str, default: &'static str, handling: Handling) -> ChField {
    ChField {
        name,
        default,
        handling,
    }
}

/// Top-level fields of Cloud Hypervisor's `VmConfig`.
pub const TOP: &[ChField] = &[
    field("rate_limit_groups", "null", DEVICE),
    field("disks", "null", DEVICE),
    field("net", "null", DEVICE),
    field("rng", "null", DEVICE),
    field("balloon", "null", DEVICE),
    field("generic_vhost_user", "null", DEVICE),
    field("fs", "null", DEVICE),
    field("pmem", "null", DEVICE),
    field("serial", "null", DEVICE),
    field("console", "null", DEVICE),
    field("debug_console", "null", DEVICE),
    field("devices", "null", DEVICE),
    field("user_devices", "null", DEVICE),
    field("vdpa", "null", DEVICE),
    field("vsock", "null", DEVICE),
    field("pvmemcontrol", "null", DEVICE),
    field("pvpanic", "false", DEVICE),
    field("iommu", "false", DEVICE),
    field("watchdog", "false", DEVICE),
    field("rtc", "null", DEVICE),
    field("pci_segments", "null", DEVICE),
    field("tpm", "null", DEVICE),
    field("ivshmem", "null", DEVICE),
    field(
        "gdb",
        "false",
        Handling::Ignored("snp-vmm has no guest debug stub"),
    ),
    field("landlock_enable", "false", SANDBOX),
    field("landlock_rules", "null", SANDBOX),
    field(
        "numa",
        "null",
        Handling::Refused(
            "it gives the guest a NUMA topology, and snp-vmm gives it one flat memory region",
        ),
    ),
];

/// Fields of Cloud Hypervisor's `CpusConfig` besides `boot_vcpus` and
/// `max_vcpus`.
pub const CPUS: &[ChField] = &[
    field("topology", "null", CPUID),
    field("kvm_hyperv", "false", CPUID),
    field("max_phys_bits", "46", CPUID),
    field("features", r#"{"amx": false}"#, CPUID),
    field("nested", "true", CPUID),
    field("profile", r#""Host""#, CPUID),
    field("affinity", "null", HOST),
    field("core_scheduling", r#""Vm""#, HOST),
];

/// Fields of Cloud Hypervisor's `MemoryConfig` besides `size`.
pub const MEMORY: &[ChField] = &[
    field("mergeable", "false", HOST),
    field("shared", "false", HOST),
    field("hugepages", "false", HOST),
    field("hugepage_size", "null", HOST),
    field("prefault", "false", HOST),
    field("reserve", "false", HOST),
    field("thp", "true", HOST),
    field(
        "hotplug_method",
        r#""Acpi""#,
        Handling::Ignored("snp-vmm cannot hot-plug memory"),
    ),
    field(
        "hotplug_size",
        "null",
        Handling::Refused(
            "it gives the guest a hot-plug memory region, and snp-vmm cannot hot-plug memory",
        ),
    ),
    field(
        "hotplugged_size",
        "null",
        Handling::Refused(
            "it gives the guest hot-plugged memory, and snp-vmm cannot hot-plug memory",
        ),
    ),
    field(
        "zones",
        "null",
        Handling::Refused(
            "memory zones lay out the guest's memory, and snp-vmm gives it one region of memory.size",
        ),
    ),
];

/// Fields of Cloud Hypervisor's `PlatformConfig` besides `sev_snp`.
pub const PLATFORM: &[ChField] = &[
    field("num_pci_segments", "1", DEVICE),
    field("iommu_segments", "null", DEVICE),
    field("iommu_address_width_bits", "64", DEVICE),
    field("iommufd", "false", DEVICE),
    field("iommufd_fd", "null", DEVICE),
    field("vfio_p2p_dma", "true", DEVICE),
    field("system_serial_number", "null", SMBIOS),
    field("serial_number", "null", SMBIOS),
    field("system_uuid", "null", SMBIOS),
    field("uuid", "null", SMBIOS),
    field("oem_strings", "null", SMBIOS),
    field("system_manufacturer", "null", SMBIOS),
    field("system_product_name", "null", SMBIOS),
    field("system_version", "null", SMBIOS),
    field("system_family", "null", SMBIOS),
    field("system_sku_number", "null", SMBIOS),
    field("chassis_asset_tag", "null", SMBIOS),
    field(
        "tdx",
        "false",
        Handling::Refused("snp-vmm launches SEV-SNP guests, not TDX guests"),
    ),
];

/// Fields of Cloud Hypervisor's `PayloadConfig` that snp-vmm's own
/// [`crate::PayloadConfig`] does not carry.
pub const PAYLOAD: &[ChField] = &[field(
    "fw_cfg_config",
    "null",
    Handling::Ignored("snp-vmm has no fw_cfg device"),
)];

/// The sections that hold Cloud Hypervisor fields, by their key in the
/// top-level object (`""` for the top level itself).
pub const SECTIONS: &[(&str, &[ChField])] = &[
    ("", TOP),
    ("cpus", CPUS),
    ("memory", MEMORY),
    ("platform", PLATFORM),
    ("payload", PAYLOAD),
];

/// A Cloud Hypervisor field whose value snp-vmm cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} is not supported: {why}")]
pub struct Unsupported {
    /// The field's path, such as `cpus.topology`.
    pub path: String,
    /// Why it is refused.
    pub why: &'static str,
}

/// The Cloud Hypervisor fields of one configuration, by path
/// (`serial`, `memory.shared`), with the values given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChFields(BTreeMap<String, Value>);

impl ChFields {
    /// Takes every Cloud Hypervisor field out of `config` (a `VmConfig`
    /// JSON object; anything else is left alone for the type check to
    /// refuse).
    pub fn take_from(config: &mut Value) -> ChFields {
        let mut taken = BTreeMap::new();
        let Some(top) = config.as_object_mut() else {
            return ChFields(taken);
        };
        for (section, fields) in SECTIONS {
            let object = if section.is_empty() {
                Some(&mut *top)
            } else {
                top.get_mut(*section).and_then(Value::as_object_mut)
            };
            let Some(object) = object else { continue };
            for field in *fields {
                if let Some(value) = object.remove(field.name) {
                    taken.insert(path(section, field.name), value);
                }
            }
        }
        ChFields(taken)
    }

    /// Puts the fields back into `config` (a serialised `VmConfig`), each
    /// in its section; a section that is not an object gets none back.
    pub fn put_into(&self, config: &mut Value) {
        let Some(top) = config.as_object_mut() else {
            return;
        };
        for (path, value) in &self.0 {
            match path.split_once('.') {
                None => {
                    top.insert(path.clone(), value.clone());
                }
                Some((section, name)) => {
                    let section = top
                        .entry(section.to_owned())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if section.is_null() {
                        *section = Value::Object(Map::new());
                    }
                    if let Some(section) = section.as_object_mut() {
                        section.insert(name.to_owned(), value.clone());
                    }
                }
            }
        }
    }

    /// Whether no Cloud Hypervisor field was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields given, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Sets `path` (such as `memory.shared`) to `value`, as if given.
    pub fn insert(&mut self, path: impl Into<String>, value: Value) {
        self.0.insert(path.into(), value);
    }

    /// The first field whose value snp-vmm cannot honour.
    pub fn check(&self) -> Result<(), Unsupported> {
        for (path, value) in &self.0 {
            if let Some(ChField {
                handling: Handling::Refused(why),
                ..
            }) = lookup(path).filter(|f| !asks_for_nothing(f, value))
            {
                return Err(Unsupported {
                    path: path.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// One warning per field that asks for something snp-vmm ignores,
    /// such as `serial is ignored: snp-vmm gives its built-in test guests
    /// no devices`, in path order.
    pub fn warnings(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|(path, value)| match lookup(path) {
                Some(
                    f @ ChField {
                        handling: Handling::Ignored(why),
                        ..
                    },
                ) if !asks_for_nothing(f, value) => Some(format!(
                    "{path} is ignored (a Cloud Hypervisor setting): {why}"
                )),
                _ => None,
            })
            .collect()
    }
}

fn path(section: &str, name: &str) -> String {
    if section.is_empty() {
        name.to_owned()
    } else {
        format!("{section}.{name}")
    }
}

/// The table entry of `path`.
fn lookup(path: &str) -> Option<&'static ChField> {
    let (section, name) = path.split_once('.').unwrap_or(("", path));
    SECTIONS
        .iter()
        .find(|(s, _)| *s == section)
        .and_then(|(_, fields)| fields.iter().find(|f| f.name == name))
}

/// Whether `value` is `null` or the field's default.
fn asks_for_nothing(field: &ChField, value: &Value) -> bool {
    value.is_null() || serde_json::from_str::<Value>(field.default).ok().as_ref() == Some(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_default_is_json() {
        for (section, fields) in SECTIONS {
            for f in *fields {
                assert!(
                    serde_json::from_str::<Value>(f.default).is_ok(),
                    "{section}.{}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn take_and_put_back() {
        let given = json!({
            "cpus": {"boot_vcpus": 1, "max_phys_bits": 46},
            "memory": {"size": 1048576, "shared": true},
            "serial": {"mode": "Null"},
            "payload": {"fw_cfg_config": null},
            "snp": {"shared": true},
        });
        let mut config = given.clone();
        let ch = ChFields::take_from(&mut config);
        assert_eq!(
            config,
            json!({"cpus": {"boot_vcpus": 1}, "memory": {"size": 1048576},
                   "payload": {}, "snp": {"shared": true}}),
            "only Cloud Hypervisor's fields are taken, and only from their sections"
        );
        let paths: Vec<&str> = ch.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "cpus.max_phys_bits",
                "memory.shared",
                "payload.fw_cfg_config",
                "serial"
            ]
        );
        ch.put_into(&mut config);
        assert_eq!(config, given);
    }

    #[test]
    fn warnings_name_what_is_asked_for() {
        let mut config = json!({
            "memory": {"shared": true, "thp": true, "hugepages": false},
            "serial": {"mode": "Tty"},
            "console": null,
            "pvpanic": false,
            "cpus": {"max_phys_bits": 46, "nested": true, "affinity": [{"vcpu": 0, "host_cpus": [1]}]},
        });
        let ch = ChFields::take_from(&mut config);
        assert_eq!(
            ch.warnings(),
            [
                "cpus.affinity is ignored (a Cloud Hypervisor setting): host-side tuning snp-vmm does not do",
                "memory.shared is ignored (a Cloud Hypervisor setting): host-side tuning snp-vmm does not do",
                "serial is ignored (a Cloud Hypervisor setting): snp-vmm gives its built-in test guests no devices",
            ]
        );
        assert_eq!(ch.check(), Ok(()), "defaults of refused fields pass");
    }

    #[test]
    fn guest_visible_values_are_refused() {
        for (config, path) in [
            (
                json!({"cpus": {"topology": {"packages": 1}}}),
                "cpus.topology",
            ),
            (json!({"cpus": {"kvm_hyperv": true}}), "cpus.kvm_hyperv"),
            (json!({"cpus": {"max_phys_bits": 39}}), "cpus.max_phys_bits"),
            (
                json!({"memory": {"hotplug_size": 1073741824}}),
                "memory.hotplug_size",
            ),
            (json!({"memory": {"zones": []}}), "memory.zones"),
            (json!({"platform": {"tdx": true}}), "platform.tdx"),
            (json!({"platform": {"uuid": "1-2"}}), "platform.uuid"),
            (json!({"numa": [{"guest_numa_id": 0}]}), "numa"),
        ] {
            let mut config = config;
            let err = ChFields::take_from(&mut config).check().unwrap_err();
            assert_eq!(err.path, path);
            assert!(
                err.to_string()
                    .starts_with(&format!("{path} is not supported: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn non_objects_are_left_alone() {
        let mut config = json!([1]);
        assert!(ChFields::take_from(&mut config).is_empty());
        let mut config = json!({"memory": 5, "serial": null});
        let ch = ChFields::take_from(&mut config);
        assert_eq!(config, json!({"memory": 5}));
        assert!(ch.warnings().is_empty());
    }
}
