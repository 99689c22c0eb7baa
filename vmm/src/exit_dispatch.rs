//! What a vCPU does with each exit: a pure function, tested on its own.

use hypervisor::{SnpCertsRequest, VmExit};

use crate::doorbell::{DELAY_PORT, DOORBELL_PORT, REPORT_PORT};

/// Why a vCPU stopped running for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The guest executed `hlt`.
    Halted,
    /// The guest shut down (triple fault or similar).
    GuestShutdown,
    /// The VMM stopped it.
    Stopped,
    /// Something failed; the message says what.
    Failed(String),
}

/// The action for one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// A certificate request from KVM: serve it and complete the exit.
    ServeCerts(SnpCertsRequest),
    /// The emulated doorbell rang with this mailbox address.
    RingDoorbell {
        /// GPA of the mailbox.
        mailbox: u64,
    },
    /// The attestation guest reports at this address.
    GuestReport {
        /// GPA of the report.
        gpa: u64,
    },
    /// The guest asks to pause this long.
    Pause {
        /// Milliseconds.
        ms: u32,
    },
    /// An `IN` from a port with no device: answer all ones, as an empty
    /// bus does.
    AnswerIoIn {
        /// Bytes to answer.
        size: u8,
    },
    /// Nothing to do (a cut-short run, or an ignored write).
    Continue,
    /// An exit that is not ours to act on; logged and skipped.
    Ignore(String),
    /// The vCPU is done.
    End(VcpuEnd),
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

/// Maps an exit to its action. Doorbell ports only count when `doorbell`
/// is enabled for this VM.
pub fn dispatch(exit: &VmExit, doorbell: bool) -> ExitAction {
    match exit {
        VmExit::SnpReqCerts(request) => ExitAction::ServeCerts(*request),
        VmExit::IoOut { port, data } if doorbell => {
            let Some(value) = u32_of(data) else {
                if matches!(*port, DOORBELL_PORT | REPORT_PORT | DELAY_PORT) {
                    return ExitAction::Ignore(format!(
                        "{}-byte write to doorbell port {port:#x} (needs 4)",
                        data.len()
                    ));
                }
                return ExitAction::Continue;
            };
            match *port {
                DOORBELL_PORT => ExitAction::RingDoorbell {
                    mailbox: u64::from(value),
                },
                REPORT_PORT => ExitAction::GuestReport {
                    gpa: u64::from(value),
                },
                DELAY_PORT => ExitAction::Pause { ms: value },
                _ => ExitAction::Continue,
            }
        }
        VmExit::IoOut { .. } => ExitAction::Continue,
        VmExit::IoIn { size, .. } => ExitAction::AnswerIoIn { size: *size },
        VmExit::Interrupted => ExitAction::Continue,
        VmExit::Hlt => ExitAction::End(VcpuEnd::Halted),
        VmExit::Shutdown => ExitAction::End(VcpuEnd::GuestShutdown),
        VmExit::Other(what) => ExitAction::End(VcpuEnd::Failed(format!("unhandled exit: {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(port: u16, value: u32) -> VmExit {
        VmExit::IoOut {
            port,
            data: value.to_le_bytes().to_vec(),
        }
    }

    #[test]
    fn snp_exit_is_served_whatever_the_doorbell_setting() {
        let req = SnpCertsRequest {
            gpa: 0x1000,
            npages: 4,
        };
        for doorbell in [false, true] {
            assert_eq!(
                dispatch(&VmExit::SnpReqCerts(req), doorbell),
                ExitAction::ServeCerts(req)
            );
        }
    }

    #[test]
    fn doorbell_ports_map_to_their_actions_only_when_enabled() {
        assert_eq!(
            dispatch(&out(DOORBELL_PORT, 0x3000), true),
            ExitAction::RingDoorbell { mailbox: 0x3000 }
        );
        assert_eq!(
            dispatch(&out(REPORT_PORT, 0x3100), true),
            ExitAction::GuestReport { gpa: 0x3100 }
        );
        assert_eq!(
            dispatch(&out(DELAY_PORT, 7), true),
            ExitAction::Pause { ms: 7 }
        );
        assert_eq!(
            dispatch(&out(DOORBELL_PORT, 0x3000), false),
            ExitAction::Continue
        );
        assert_eq!(dispatch(&out(0x80, 1), true), ExitAction::Continue);
    }

    #[test]
    fn short_writes_to_doorbell_ports_are_ignored() {
        let exit = VmExit::IoOut {
            port: DOORBELL_PORT,
            data: vec![1],
        };
        assert!(matches!(dispatch(&exit, true), ExitAction::Ignore(_)));
        let exit = VmExit::IoOut {
            port: 0x80,
            data: vec![1],
        };
        assert_eq!(dispatch(&exit, true), ExitAction::Continue);
    }

    #[test]
    fn other_exits() {
        assert_eq!(
            dispatch(
                &VmExit::IoIn {
                    port: 0x60,
                    size: 2
                },
                true
            ),
            ExitAction::AnswerIoIn { size: 2 }
        );
        assert_eq!(dispatch(&VmExit::Interrupted, false), ExitAction::Continue);
        assert_eq!(
            dispatch(&VmExit::Hlt, false),
            ExitAction::End(VcpuEnd::Halted)
        );
        assert_eq!(
            dispatch(&VmExit::Shutdown, false),
            ExitAction::End(VcpuEnd::GuestShutdown)
        );
        assert!(matches!(
            dispatch(&VmExit::Other("mmio".into()), false),
            ExitAction::End(VcpuEnd::Failed(_))
        ));
    }
}
