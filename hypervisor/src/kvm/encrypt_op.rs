//! `KVM_MEMORY_ENCRYPT_OP` on a KVM VM fd: the one place a `kvm_sev_cmd`
//! is put together, `sev_fd` and all.

use kvm_bindings::kvm_sev_cmd;
use kvm_ioctls::VmFd;

use crate::sev_commands::{MemoryEncryptOp, SevCommand, SevCommandError};

impl MemoryEncryptOp for VmFd {
    fn memory_encrypt_op(
        &self,
        sev_fd: u32,
        command: SevCommand<'_>,
    ) -> Result<(), SevCommandError> {
        let id = command.id();
        // The kernel reads (and for LAUNCH_UPDATE writes back) the
        // structure at `data`, which the command borrows mutably for the
        // duration of this call.
        let data = match command {
            SevCommand::Init2(init) => std::ptr::from_mut(init) as u64,
            SevCommand::LaunchStart(start) => std::ptr::from_mut(start) as u64,
            SevCommand::LaunchUpdate(update) => std::ptr::from_mut(update) as u64,
            SevCommand::LaunchFinish(finish) => std::ptr::from_mut(finish) as u64,
            SevCommand::EnableReqCerts => 0,
        };
        let mut cmd = kvm_sev_cmd {
            id,
            data,
            sev_fd,
            ..Default::default()
        };
        self.encrypt_op_sev(&mut cmd)
            .map_err(|errno| SevCommandError {
                errno,
                fw_error: cmd.error,
            })
    }
}
