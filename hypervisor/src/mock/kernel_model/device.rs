//! The model's `/dev/sev`, and the check the kernel makes of every
//! `sev_fd`.
//!
//! KVM hands firmware commands to the PSP driver through the file the
//! VMM named: `__sev_issue_cmd` (`arch/x86/kvm/svm/sev.c`) fails with
//! `EBADF` for an fd that is not open, and `sev_issue_cmd_external_user`
//! (`drivers/crypto/ccp/sev-dev.c`) with `EBADF` for an open file that is
//! not `/dev/sev` (`filep->f_op != &sev_fops`). The model's device is a
//! memfd standing in for `/dev/sev`; "is `/dev/sev`" becomes "is that
//! inode", so a closed fd, another file, or a reused fd number all fail
//! exactly where the kernel fails them.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

use vmm_sys_util::errno::Error as Errno;

/// The stand-in for `/dev/sev`.
#[derive(Debug)]
pub struct ModelSevDevice {
    file: File,
    id: (u64, u64),
}

/// `(st_dev, st_ino)` of the open file `fd`, or `EBADF` if it is not open.
fn identity(fd: i32) -> Result<(u64, u64), Errno> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `struct stat` into `st`, which lives across
    // the call; any fd number is acceptable input (a closed one is EBADF).
    let ret = unsafe { libc::fstat(fd, &mut st) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok((st.st_dev, st.st_ino))
}

impl ModelSevDevice {
    /// A new device (an anonymous memfd).
    pub fn new() -> Result<ModelSevDevice, Errno> {
        // SAFETY: the name is a NUL-terminated literal; the call returns a
        // new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"mock-sev".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Errno::last());
        }
        // SAFETY: memfd_create returned a new descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let id = identity(file.as_raw_fd())?;
        Ok(ModelSevDevice { file, id })
    }

    /// A path that opens the device again (a new open file description
    /// of the same inode), as `/dev/sev` opens on a host.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// `__sev_issue_cmd` + `sev_issue_cmd_external_user`: `sev_fd` must be
    /// an open file and that file must be the device; else `EBADF`.
    pub fn check(&self, sev_fd: u32) -> Result<(), Errno> {
        let fd = i32::try_from(sev_fd).map_err(|_| Errno::new(libc::EBADF))?;
        match identity(fd) {
            Ok(id) if id == self.id => Ok(()),
            _ => Err(Errno::new(libc::EBADF)),
        }
    }
}
