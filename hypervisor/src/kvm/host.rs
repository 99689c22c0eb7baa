//! Can this host serve SEV-SNP guests with certificates? Item by item.
//!
//! [`probe_host`] looks at everything an SNP VM with certificate requests
//! needs from the host, without creating a VM: the KVM device, which KVM
//! module drives it, `kvm_amd`'s `sev_snp` parameter, the SNP VM type, the
//! certificate-request attribute, the memory capabilities of private
//! memory, the kernel release, and the AMD secure processor (`/dev/sev`,
//! with the firmware's version and TCB read through the virtee `sev`
//! crate). Each finding is a [`HostItem`] carrying a status, what was seen
//! and, when something is wrong, how to fix it; [`HostReport`] collects
//! them and says whether the host can serve SNP guests.
//!
//! The rule is simple: the host can serve SNP guests when no item is
//! [`ItemStatus::Missing`]. Findings that do not stop guests (an old-looking
//! kernel release, an unreadable firmware status) are
//! [`ItemStatus::Warn`]; checks that could not run because an earlier one
//! failed are [`ItemStatus::Skipped`].
//!
//! [`HostPaths`] names the device nodes and the sysfs module directory, so
//! tests can point the sysfs checks at a directory of their own.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;

use super::KvmHypervisor;
use super::req_certs_probe::{ReqCertsAnswer, query_req_certs};
use super::snp::{
    KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_X86_SNP_VM,
};
use crate::HypervisorError;

mod firmware;
mod sysfs;

pub use sysfs::{kernel_item, kvm_flavour_item, parse_kernel_release, sev_snp_item};

/// Item name: the KVM device node.
pub const ITEM_KVM_DEVICE: &str = "kvm-device";
/// Item name: the KVM module driving `/dev/kvm`.
pub const ITEM_KVM_FLAVOUR: &str = "kvm-flavour";
/// Item name: `kvm_amd`'s `sev_snp` parameter.
pub const ITEM_SEV_SNP_PARAM: &str = "kvm-amd-sev-snp";
/// Item name: the SNP VM type in `KVM_CAP_VM_TYPES`.
pub const ITEM_SNP_VM_TYPE: &str = "snp-vm-type";
/// Item name: the `KVM_X86_SEV_SNP_REQ_CERTS` attribute.
pub const ITEM_REQ_CERTS: &str = "snp-req-certs";
/// Item name: `KVM_CAP_GUEST_MEMFD`.
pub const ITEM_GUEST_MEMFD: &str = "guest-memfd";
/// Item name: `KVM_CAP_MEMORY_ATTRIBUTES` with the private attribute.
pub const ITEM_MEMORY_ATTRIBUTES: &str = "memory-attributes";
/// Item name: `KVM_CAP_USER_MEMORY2`.
pub const ITEM_USER_MEMORY2: &str = "user-memory2";
/// Item name: the kernel release.
pub const ITEM_KERNEL: &str = "kernel";
/// Item name: the SEV device node.
pub const ITEM_SEV_DEVICE: &str = "sev-device";
/// Item name: the SEV firmware's version and TCB.
pub const ITEM_SEV_FIRMWARE: &str = "sev-firmware";

/// How one item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemStatus {
    /// As needed.
    Ok,
    /// A requirement is not met: SNP guests cannot be served.
    Missing,
    /// Worth a look, but does not stop SNP guests.
    Warn,
    /// Not checked, because something it depends on is missing.
    Skipped,
}

impl ItemStatus {
    /// The status word: `ok`, `missing`, `warn` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Ok => "ok",
            ItemStatus::Missing => "missing",
            ItemStatus::Warn => "warn",
            ItemStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for ItemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding of the host check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostItem {
    /// Short stable name (one of the `ITEM_*` constants, or the caller's).
    pub name: String,
    /// How it stands.
    pub status: ItemStatus,
    /// What was found, and why that matters.
    pub detail: String,
    /// What to do about it, when there is something to do.
    pub fix: Option<String>,
}

impl HostItem {
    fn new(name: &str, status: ItemStatus, detail: String, fix: Option<String>) -> HostItem {
        HostItem {
            name: name.to_owned(),
            status,
            detail,
            fix,
        }
    }

    /// An item that is as needed.
    pub fn ok(name: &str, detail: impl Into<String>) -> HostItem {
        HostItem::new(name, ItemStatus::Ok, detail.into(), None)
    }

    /// A requirement that is not met, with how to meet it.
    pub fn missing(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> HostItem {
        HostItem::new(name, ItemStatus::Missing, detail.into(), Some(fix.into()))
    }

    /// A finding that does not stop SNP guests, with what to do about it.
    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> HostItem {
        HostItem::new(name, ItemStatus::Warn, detail.into(), Some(fix.into()))
    }

    /// An item that was not checked, and why.
    pub fn skipped(name: &str, detail: impl Into<String>) -> HostItem {
        HostItem::new(name, ItemStatus::Skipped, detail.into(), None)
    }
}

/// Everything [`probe_host`] found, in the order it was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReport {
    /// The findings.
    pub items: Vec<HostItem>,
}

impl HostReport {
    /// Whether SNP guests can be served: no item is missing.
    pub fn can_serve_snp(&self) -> bool {
        self.items.iter().all(|i| i.status != ItemStatus::Missing)
    }

    /// The item called `name`, if there is one.
    pub fn item(&self, name: &str) -> Option<&HostItem> {
        self.items.iter().find(|i| i.name == name)
    }
}

/// Where the host check looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The KVM device (`/dev/kvm`).
    pub kvm: PathBuf,
    /// The SEV device of the AMD secure processor (`/dev/sev`). The
    /// firmware status is read only when this is `/dev/sev`, the only
    /// node the `sev` crate opens.
    pub sev: PathBuf,
    /// The sysfs directory of loaded modules (`/sys/module`).
    pub sys_module: PathBuf,
}

impl Default for HostPaths {
    fn default() -> HostPaths {
        HostPaths {
            kvm: PathBuf::from(super::KVM_DEVICE),
            sev: PathBuf::from(firmware::SEV_DEVICE),
            sys_module: PathBuf::from("/sys/module"),
        }
    }
}

/// Checks this host at the usual paths.
pub fn probe_host() -> HostReport {
    probe_host_with(&HostPaths::default())
}

/// Checks this host at `paths`.
pub fn probe_host_with(paths: &HostPaths) -> HostReport {
    let mut items = Vec::new();
    let (item, kvm) = kvm_device_item(&paths.kvm);
    items.push(item);
    items.push(kvm_flavour_item(&paths.sys_module));
    items.push(sev_snp_item(&paths.sys_module));
    match &kvm {
        Some(kvm) => {
            items.push(vm_types_item(
                kvm.check_extension_raw(KVM_CAP_VM_TYPES as _),
            ));
            items.push(req_certs_item(query_req_certs(kvm)));
            items.push(guest_memfd_item(
                kvm.check_extension_raw(KVM_CAP_GUEST_MEMFD as _),
            ));
            items.push(memory_attributes_item(
                kvm.check_extension_raw(KVM_CAP_MEMORY_ATTRIBUTES as _),
            ));
            items.push(user_memory2_item(
                kvm.check_extension_raw(KVM_CAP_USER_MEMORY2 as _),
            ));
        }
        None => {
            let why = format!("needs {}, which cannot be used", paths.kvm.display());
            for name in [
                ITEM_SNP_VM_TYPE,
                ITEM_REQ_CERTS,
                ITEM_GUEST_MEMFD,
                ITEM_MEMORY_ATTRIBUTES,
                ITEM_USER_MEMORY2,
            ] {
                items.push(HostItem::skipped(name, why.clone()));
            }
        }
    }
    items.push(kernel_item(sysfs::uname_release().as_deref()));
    let (item, sev_usable) = firmware::sev_device_item(&paths.sev);
    items.push(item);
    items.push(firmware::firmware_item(&paths.sev, sev_usable));
    HostReport { items }
}

/// Opens the KVM device read-write, as the VMM does.
fn kvm_device_item(path: &Path) -> (HostItem, Option<Kvm>) {
    let shown = path.display();
    if let Err(e) = fs::metadata(path) {
        let item = if e.kind() == io::ErrorKind::NotFound {
            HostItem::missing(
                ITEM_KVM_DEVICE,
                format!(
                    "{shown} does not exist: no KVM module is loaded, or virtualisation is off"
                ),
                "enable SVM in the BIOS and load kvm_amd (modprobe kvm_amd)",
            )
        } else {
            HostItem::missing(
                ITEM_KVM_DEVICE,
                format!("cannot look at {shown}: {e}"),
                "check the permissions of /dev",
            )
        };
        return (item, None);
    }
    match KvmHypervisor::with_path(path) {
        Ok(hv) => {
            let version = hv.kvm.get_api_version();
            (
                HostItem::ok(
                    ITEM_KVM_DEVICE,
                    format!("{shown} opens read-write (KVM API version {version})"),
                ),
                Some(hv.kvm),
            )
        }
        Err(HypervisorError::KvmUnavailable { source, .. })
            if matches!(source.errno(), libc::EACCES | libc::EPERM) =>
        {
            (
                HostItem::missing(
                    ITEM_KVM_DEVICE,
                    format!("{shown} exists but this user cannot open it read-write ({source})"),
                    "add the user to the group owning /dev/kvm (usually kvm) or install a udev rule giving it that group with mode 0660",
                ),
                None,
            )
        }
        Err(e) => (
            HostItem::missing(
                ITEM_KVM_DEVICE,
                format!("{shown} cannot be used: {}", error_chain(&e)),
                "check that the KVM module loaded cleanly (dmesg | grep -i kvm)",
            ),
            None,
        ),
    }
}

/// A `KVM_X86_*_VM` type number in words.
fn vm_type_name(t: u32) -> String {
    match t {
        0 => "default".into(),
        1 => "sw-protected".into(),
        2 => "sev".into(),
        3 => "sev-es".into(),
        4 => "snp".into(),
        5 => "tdx".into(),
        other => format!("type {other}"),
    }
}

/// The SNP VM type in the `KVM_CAP_VM_TYPES` answer `mask`.
pub fn vm_types_item(mask: i32) -> HostItem {
    let fix =
        "load kvm_amd with sev_snp=1 on an SNP-enabled AMD host (see the kvm-amd-sev-snp item)";
    if mask <= 0 {
        return HostItem::missing(
            ITEM_SNP_VM_TYPE,
            "SNP VM type not offered: KVM_CAP_VM_TYPES is absent (kernel before Linux 6.10)",
            fix,
        );
    }
    let offered: Vec<String> = (0..31)
        .filter(|t| mask & (1 << t) != 0)
        .map(vm_type_name)
        .collect();
    let offered = offered.join(", ");
    if mask & (1 << KVM_X86_SNP_VM) != 0 {
        HostItem::ok(
            ITEM_SNP_VM_TYPE,
            format!("KVM_X86_SNP_VM offered (VM types: {offered})"),
        )
    } else {
        HostItem::missing(
            ITEM_SNP_VM_TYPE,
            format!(
                "SNP VM type not offered: KVM_CAP_VM_TYPES lists only {offered}, not KVM_X86_SNP_VM ({KVM_X86_SNP_VM})"
            ),
            fix,
        )
    }
}

/// The answer of the certificate-request attribute query.
fn req_certs_item(answer: Result<ReqCertsAnswer, HypervisorError>) -> HostItem {
    let fix = "run a host kernel with SNP certificate requests (Linux 7.0 or later) and kvm_amd with sev_snp=1";
    match answer {
        Ok(ReqCertsAnswer::Value(1)) => HostItem::ok(
            ITEM_REQ_CERTS,
            "KVM_X86_SEV_SNP_REQ_CERTS reads 1: guests' certificate requests reach the VMM",
        ),
        Ok(ReqCertsAnswer::Value(v)) => HostItem::missing(
            ITEM_REQ_CERTS,
            format!("KVM_X86_SEV_SNP_REQ_CERTS reads {v}: certificate requests are not supported"),
            fix,
        ),
        Ok(ReqCertsAnswer::Unsupported(e)) => {
            let (name, why) = match e.errno() {
                libc::ENXIO => ("ENXIO", "this KVM has no SEV support"),
                libc::EINVAL => (
                    "EINVAL",
                    "this kernel does not know the attribute (before Linux 7.0)",
                ),
                libc::ENOTTY => (
                    "ENOTTY",
                    "/dev/kvm has no device-attribute ioctls (old kernel)",
                ),
                _ => ("", "the kernel refused the query"),
            };
            let answer = if name.is_empty() {
                e.to_string()
            } else {
                format!("{name}: {e}")
            };
            HostItem::missing(
                ITEM_REQ_CERTS,
                format!(
                    "KVM_X86_SEV_SNP_REQ_CERTS (group KVM_X86_GRP_SEV) not available: {why} ({answer})"
                ),
                fix,
            )
        }
        Err(e) => HostItem::missing(ITEM_REQ_CERTS, error_chain(&e), fix),
    }
}

/// `KVM_CAP_GUEST_MEMFD` answered `ret`.
pub fn guest_memfd_item(ret: i32) -> HostItem {
    if ret > 0 {
        HostItem::ok(ITEM_GUEST_MEMFD, "KVM_CAP_GUEST_MEMFD present")
    } else {
        HostItem::missing(
            ITEM_GUEST_MEMFD,
            "KVM_CAP_GUEST_MEMFD absent: SNP guests' private memory cannot be created",
            "run a host kernel with guest_memfd (Linux 6.8 or later, CONFIG_KVM_SW_PROTECTED_VM or SEV support)",
        )
    }
}

/// `KVM_CAP_MEMORY_ATTRIBUTES` answered `mask`.
pub fn memory_attributes_item(mask: i32) -> HostItem {
    let fix = "run an SNP host kernel (Linux 6.11 or later with CONFIG_KVM_AMD_SEV)";
    if mask <= 0 {
        HostItem::missing(
            ITEM_MEMORY_ATTRIBUTES,
            "KVM_CAP_MEMORY_ATTRIBUTES absent: guest memory cannot be converted between private and shared",
            fix,
        )
    } else if u64::from(mask.unsigned_abs()) & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
        HostItem::ok(
            ITEM_MEMORY_ATTRIBUTES,
            format!(
                "KVM_CAP_MEMORY_ATTRIBUTES mask {mask:#x} includes KVM_MEMORY_ATTRIBUTE_PRIVATE"
            ),
        )
    } else {
        HostItem::missing(
            ITEM_MEMORY_ATTRIBUTES,
            format!(
                "KVM_CAP_MEMORY_ATTRIBUTES mask {mask:#x} lacks KVM_MEMORY_ATTRIBUTE_PRIVATE ({KVM_MEMORY_ATTRIBUTE_PRIVATE:#x})"
            ),
            fix,
        )
    }
}

/// `KVM_CAP_USER_MEMORY2` answered `ret`.
pub fn user_memory2_item(ret: i32) -> HostItem {
    if ret > 0 {
        HostItem::ok(ITEM_USER_MEMORY2, "KVM_CAP_USER_MEMORY2 present")
    } else {
        HostItem::missing(
            ITEM_USER_MEMORY2,
            "KVM_CAP_USER_MEMORY2 absent: memory slots cannot be bound to a guest_memfd",
            "run a host kernel of Linux 6.8 or later",
        )
    }
}

/// An error and its sources, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
