//! The host-check items read from sysfs and `uname`: which KVM module is
//! loaded, `kvm_amd`'s SEV parameters, and the kernel release.

use std::ffi::CStr;
use std::fs;
use std::path::Path;

use super::{HostItem, ITEM_KERNEL, ITEM_KVM_FLAVOUR, ITEM_SEV_SNP_PARAM};

/// The KVM modules this check knows, with what each one means for SNP.
const FLAVOURS: [(&str, &str); 3] = [
    ("kvm_amd", "AMD SVM"),
    ("kvm_intel", "Intel VMX"),
    ("kvm_pvm", "PVM, paravirtualised nested KVM"),
];

/// The first kernel release with SNP certificate requests.
const REQ_CERTS_RELEASE: (u32, u32) = (7, 0);

/// The loaded `kvm_*` modules under `sys_module` (a `/sys/module`),
/// sorted by name.
fn kvm_modules(sys_module: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(sys_module) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("kvm_"))
        .collect();
    found.sort();
    found
}

/// Which KVM module drives `/dev/kvm`, from the modules under
/// `sys_module` (a `/sys/module`).
pub fn kvm_flavour_item(sys_module: &Path) -> HostItem {
    let modules = kvm_modules(sys_module);
    let described: Vec<String> = modules
        .iter()
        .map(|m| match FLAVOURS.iter().find(|(name, _)| name == m) {
            Some((name, what)) => format!("{what} ({name})"),
            None => m.clone(),
        })
        .collect();
    if modules.iter().any(|m| m == "kvm_amd") {
        return HostItem::ok(ITEM_KVM_FLAVOUR, described.join(", "));
    }
    if modules.is_empty() {
        let base = if sys_module.join("kvm").exists() {
            "the kvm module is loaded but no vendor module (kvm_amd, kvm_intel, ...)"
        } else {
            "no KVM module is loaded"
        };
        return HostItem::missing(
            ITEM_KVM_FLAVOUR,
            format!("{base}; SEV-SNP needs AMD SVM (kvm_amd)"),
            "load kvm_amd on an AMD EPYC host with SVM enabled in the BIOS",
        );
    }
    let fix = if modules.iter().any(|m| m == "kvm_pvm") {
        "PVM has no SEV: use a bare-metal AMD EPYC host, or an L1 VM whose L0 hypervisor exposes SVM and SEV-SNP to it (nested SNP)"
    } else if modules.iter().any(|m| m == "kvm_intel") {
        "SEV-SNP is AMD only: use an AMD EPYC 7003 (Milan) or later host"
    } else {
        "load kvm_amd on an AMD EPYC host with SVM enabled in the BIOS"
    };
    HostItem::missing(
        ITEM_KVM_FLAVOUR,
        format!("{}; SEV-SNP needs AMD SVM (kvm_amd)", described.join(", ")),
        fix,
    )
}

/// A module parameter as the kernel prints it, if readable.
fn parameter(sys_module: &Path, module: &str, name: &str) -> Option<String> {
    fs::read_to_string(sys_module.join(module).join("parameters").join(name))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// Whether a boolean module parameter reads as on.
fn is_on(value: &str) -> bool {
    matches!(value, "Y" | "y" | "1")
}

/// `kvm_amd`'s `sev_snp` parameter under `sys_module` (a `/sys/module`).
pub fn sev_snp_item(sys_module: &Path) -> HostItem {
    let reload = "load kvm_amd with sev=1 sev_es=1 sev_snp=1 (options kvm_amd sev=1 sev_es=1 sev_snp=1 in /etc/modprobe.d/kvm-amd.conf, then modprobe -r kvm_amd && modprobe kvm_amd)";
    if !sys_module.join("kvm_amd").is_dir() {
        return HostItem::missing(
            ITEM_SEV_SNP_PARAM,
            "kvm_amd is not loaded",
            "on an AMD SEV-SNP host: ".to_owned() + reload,
        );
    }
    let Some(snp) = parameter(sys_module, "kvm_amd", "sev_snp") else {
        return HostItem::missing(
            ITEM_SEV_SNP_PARAM,
            "kvm_amd has no readable sev_snp parameter: a kernel without SNP host support (before Linux 6.11, or CONFIG_KVM_AMD_SEV off)",
            "run a host kernel of Linux 6.11 or later with CONFIG_KVM_AMD_SEV=y",
        );
    };
    let others: Vec<String> = ["sev", "sev_es"]
        .iter()
        .filter_map(|p| parameter(sys_module, "kvm_amd", p).map(|v| format!("{p}={v}")))
        .collect();
    let detail = if others.is_empty() {
        format!("sev_snp={snp}")
    } else {
        format!("sev_snp={snp} ({})", others.join(" "))
    };
    if is_on(&snp) {
        HostItem::ok(ITEM_SEV_SNP_PARAM, detail)
    } else {
        HostItem::missing(
            ITEM_SEV_SNP_PARAM,
            format!("{detail}: SNP is off in kvm_amd"),
            format!(
                "{reload}; if it still reads N, SNP is off in the BIOS or the SEV firmware is too old: see dmesg | grep -i -e sev -e snp"
            ),
        )
    }
}

/// Major and minor version of a kernel release such as `6.18.44-fc-v1045`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+', '_']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// The running kernel's release (`uname -r`).
pub(super) fn uname_release() -> Option<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a live, writable utsname; uname fills it in and
    // NUL-terminates every field.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    // SAFETY: `release` is NUL-terminated (see above) and lives as long as
    // `uts`, which outlives the borrow.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// The kernel release, against the first one with certificate requests.
pub fn kernel_item(release: Option<&str>) -> HostItem {
    let need = format!(
        "SNP certificate requests need Linux {}.{} or later",
        REQ_CERTS_RELEASE.0, REQ_CERTS_RELEASE.1
    );
    let upgrade = "run a host kernel of Linux 7.0 or later (or one with the KVM_EXIT_SNP_REQ_CERTS series backported: the snp-req-certs item decides)";
    let Some(release) = release else {
        return HostItem::warn(ITEM_KERNEL, format!("uname failed; {need}"), upgrade);
    };
    match parse_kernel_release(release) {
        Some(version) if version >= REQ_CERTS_RELEASE => {
            HostItem::ok(ITEM_KERNEL, format!("Linux {release}; {need}"))
        }
        Some(_) => HostItem::warn(ITEM_KERNEL, format!("Linux {release}: {need}"), upgrade),
        None => HostItem::warn(
            ITEM_KERNEL,
            format!("cannot read the version of release {release:?}; {need}"),
            upgrade,
        ),
    }
}
