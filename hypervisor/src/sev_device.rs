//! The AMD secure processor's device node (`/dev/sev`) as an SNP VM holds
//! it.
//!
//! KVM sends every SNP launch command to firmware through the file named
//! by `kvm_sev_cmd.sev_fd` (`__sev_issue_cmd` in
//! `arch/x86/kvm/svm/sev.c`: an fd that is not open is `EBADF`, and
//! `sev_issue_cmd_external_user` in `drivers/crypto/ccp/sev-dev.c` refuses
//! any file that is not `/dev/sev` with `EBADF`). `snp_launch_start` keeps
//! the fd it was given (`sev->fd`) and every later firmware call of the VM
//! goes through it, each runtime guest request included
//! (`snp_handle_guest_req`). So a VM opens the device read-write when it
//! is created (as QEMU and Cloud Hypervisor do), passes it in every
//! command and keeps it open for the VM's whole life, closing it only
//! after the VM fd.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::HypervisorError;

/// The SEV device node of the AMD secure processor driver (`ccp`).
pub const SEV_DEVICE: &str = "/dev/sev";

/// An open SEV device: the `sev_fd` of a VM's SEV commands.
#[derive(Debug)]
pub struct SevDevice {
    file: File,
    path: PathBuf,
}

impl SevDevice {
    /// Opens [`SEV_DEVICE`] read-write.
    pub fn open() -> Result<SevDevice, HypervisorError> {
        SevDevice::open_path(SEV_DEVICE)
    }

    /// Opens the SEV device at `path` read-write; a missing or unopenable
    /// device is [`HypervisorError::SevDeviceUnavailable`].
    pub fn open_path(path: impl AsRef<Path>) -> Result<SevDevice, HypervisorError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| HypervisorError::SevDeviceUnavailable {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SevDevice {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The descriptor as `kvm_sev_cmd.sev_fd` carries it (an open fd is
    /// never negative).
    pub fn sev_fd(&self) -> u32 {
        self.file.as_raw_fd().unsigned_abs()
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = SevDevice::open_path(dir.path().join("sev")).unwrap_err();
        assert!(matches!(err, HypervisorError::SevDeviceUnavailable { .. }));
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert!(err.to_string().contains("read-write"), "{err}");
    }

    #[test]
    fn the_device_is_opened_read_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sev");
        std::fs::write(&path, b"").unwrap();
        let dev = SevDevice::open_path(&path).unwrap();
        let fd = i32::try_from(dev.sev_fd()).unwrap();
        // SAFETY: F_GETFL on a descriptor this test owns reads its flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!(dev.path(), path);
    }
}
