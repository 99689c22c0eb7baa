//! The host-check items of the AMD secure processor: the `/dev/sev` node
//! and, through the virtee `sev` crate (no OpenSSL), the SNP firmware's
//! version and TCB.
//!
//! The VMM opens `/dev/sev` read-write for every SNP VM: KVM sends the
//! launch commands and every guest request to firmware through it. So a
//! device that is missing or that this user cannot open read-write is
//! `missing`. The firmware's reported TCB is what decides which VCEK
//! certificate the certs file must hold.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use sev::firmware::host::{Firmware, SnpPlatformStatus, TcbVersion};

use super::{HostItem, ITEM_SEV_DEVICE, ITEM_SEV_FIRMWARE};

/// The SEV device node, the only one the `sev` crate opens.
pub(super) const SEV_DEVICE: &str = "/dev/sev";

/// Whether the SEV device at `path` exists and opens read-write; the item
/// and whether it is usable.
pub(super) fn sev_device_item(path: &Path) -> (HostItem, bool) {
    let shown = path.display();
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => (
            HostItem::ok(ITEM_SEV_DEVICE, format!("{shown} opens read-write")),
            true,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (
            HostItem::missing(
                ITEM_SEV_DEVICE,
                format!(
                    "{shown} does not exist: no AMD secure processor driver (ccp) offers SEV here; SNP VMs send their launch commands and guest requests to firmware through it"
                ),
                "on an SNP host the ccp module creates it (modprobe ccp); the VMM opens it read-write for every SNP VM",
            ),
            false,
        ),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => (
            HostItem::missing(
                ITEM_SEV_DEVICE,
                format!(
                    "{shown} exists but this user cannot open it read-write ({e}); the VMM needs it for every SNP VM"
                ),
                "give the user access through a group and a udev rule (KERNEL==\"sev\", GROUP=\"sev\", MODE=\"0660\"), or run the VMM as root",
            ),
            false,
        ),
        Err(e) => (
            HostItem::missing(
                ITEM_SEV_DEVICE,
                format!("{shown} cannot be opened read-write: {e}"),
                "check that the ccp module loaded cleanly (dmesg | grep -i -e ccp -e sev)",
            ),
            false,
        ),
    }
}

/// A TCB version on one line.
fn tcb_text(tcb: &TcbVersion) -> String {
    let mut text = format!(
        "bootloader {} tee {} snp {} microcode {}",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    );
    if let Some(fmc) = tcb.fmc {
        text.push_str(&format!(" fmc {fmc}"));
    }
    text
}

/// The firmware status in words.
pub(super) fn status_text(status: &SnpPlatformStatus) -> String {
    format!(
        "SNP firmware {}.{} build {}; reported TCB: {}; installed TCB: {}; {} SNP guest(s) running",
        status.version.0,
        status.version.1,
        status.build_id,
        tcb_text(&status.reported_tcb_version),
        tcb_text(&status.platform_tcb_version),
        status.guest_count
    )
}

/// The SNP firmware's version and TCB, read when the SEV device at `path`
/// is usable and is the one the `sev` crate opens.
pub(super) fn firmware_item(path: &Path, sev_usable: bool) -> HostItem {
    if !sev_usable {
        return HostItem::skipped(
            ITEM_SEV_FIRMWARE,
            format!("needs {}, which cannot be used", path.display()),
        );
    }
    if path != Path::new(SEV_DEVICE) {
        return HostItem::skipped(
            ITEM_SEV_FIRMWARE,
            format!("the firmware is read only through {SEV_DEVICE}"),
        );
    }
    let status = Firmware::open()
        .map_err(|e| e.to_string())
        .and_then(|mut fw| fw.snp_platform_status().map_err(|e| e.to_string()));
    match status {
        Ok(status) => HostItem::ok(ITEM_SEV_FIRMWARE, status_text(&status)),
        Err(e) => HostItem::warn(
            ITEM_SEV_FIRMWARE,
            format!("SNP_PLATFORM_STATUS failed: {e}"),
            "check that SNP is initialised (dmesg | grep -i -e sev -e snp); snphost show version reads the same status",
        ),
    }
}
