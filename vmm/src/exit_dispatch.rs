//! What a vCPU does with each exit: a pure function, tested on its own.
//!
//! The vCPU loop knows three kinds of guest request: the SNP certificate
//! exit, the emulated doorbell (when the VM has it on), and everything
//! else on the port-I/O bus.

use hypervisor::{SnpCertsRequest, VmExit};

use crate::doorbell::DOORBELL_PORT;

/// Why a vCPU stopped running for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The guest executed `hlt`.
    Halted,
    /// The guest shut down (triple fault or similar).
    GuestShutdown,
    /// The VMM stopped it.
    Stopped,
    /// An SEV-SNP guest asked to be terminated (GHCB MSR protocol).
    GuestTerminated {
        /// The GHCB reason set.
        reason_set: u8,
        /// The reason code.
        reason_code: u8,
    },
    /// Something failed; the message says what.
    Failed(String),
}

/// The action for one exit, borrowing from the exit (a port write's bytes
/// are not copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction<'a> {
    /// A certificate request from KVM: serve it and complete the exit.
    ServeCerts(SnpCertsRequest),
    /// The emulated doorbell rang with this mailbox address.
    RingDoorbell {
        /// GPA of the mailbox.
        mailbox: u64,
    },
    /// An `OUT` for the port-I/O bus.
    PioWrite {
        /// The port.
        port: u16,
        /// The bytes written.
        data: &'a [u8],
    },
    /// An `IN` for the port-I/O bus; complete it with the bus's answer.
    PioRead {
        /// The port.
        port: u16,
        /// Bytes to answer.
        size: u8,
    },
    /// Convert guest pages between private and shared (an SNP guest's
    /// page-state change, or a fault on a page of the wrong kind).
    ConvertPages {
        /// First address.
        gpa: u64,
        /// Bytes.
        len: u64,
        /// Make them private (true) or shared.
        private: bool,
        /// Whether the exit is a hypercall waiting for its result.
        hypercall: bool,
    },
    /// Nothing to do (a cut-short run).
    Continue,
    /// An exit that is not ours to act on; logged and skipped.
    Ignore(String),
    /// The vCPU is done.
    End(VcpuEnd),
}

/// Maps an exit to its action. The doorbell port only counts when
/// `doorbell` is enabled for this VM; otherwise it is a bus port like any
/// other (with no device on it).
pub fn dispatch(exit: &VmExit, doorbell: bool) -> ExitAction<'_> {
    match exit {
        VmExit::SnpReqCerts(request) => ExitAction::ServeCerts(*request),
        VmExit::IoOut { port, data } if doorbell && *port == DOORBELL_PORT => {
            match <[u8; 4]>::try_from(data.as_slice()) {
                Ok(value) => ExitAction::RingDoorbell {
                    mailbox: u64::from(u32::from_le_bytes(value)),
                },
                Err(_) => ExitAction::Ignore(format!(
                    "{}-byte write to the doorbell port {port:#x} (needs 4)",
                    data.len()
                )),
            }
        }
        VmExit::IoOut { port, data } => ExitAction::PioWrite { port: *port, data },
        VmExit::IoIn { port, size } => ExitAction::PioRead {
            port: *port,
            size: *size,
        },
        VmExit::MapGpaRange {
            gpa,
            npages,
            private,
        } => match npages.checked_mul(4096) {
            Some(len) if gpa.checked_add(len).is_some() => ExitAction::ConvertPages {
                gpa: *gpa,
                len,
                private: *private,
                hypercall: true,
            },
            _ => ExitAction::ConvertPages {
                gpa: *gpa,
                len: 0,
                private: *private,
                hypercall: true,
            },
        },
        VmExit::MemoryFault { gpa, size, private } => ExitAction::ConvertPages {
            gpa: *gpa,
            len: *size,
            private: *private,
            hypercall: false,
        },
        VmExit::Terminated {
            reason_set,
            reason_code,
        } => ExitAction::End(VcpuEnd::GuestTerminated {
            reason_set: *reason_set,
            reason_code: *reason_code,
        }),
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
            data: hypervisor::PioData::from_slice(&value.to_le_bytes()),
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
    fn the_doorbell_rings_only_when_enabled() {
        assert_eq!(
            dispatch(&out(DOORBELL_PORT, 0x3000), true),
            ExitAction::RingDoorbell { mailbox: 0x3000 }
        );
        assert_eq!(
            dispatch(&out(DOORBELL_PORT, 0x3000), false),
            ExitAction::PioWrite {
                port: DOORBELL_PORT,
                data: &0x3000u32.to_le_bytes()
            }
        );
        let short = VmExit::IoOut {
            port: DOORBELL_PORT,
            data: hypervisor::PioData::from_slice(&[1]),
        };
        assert!(matches!(dispatch(&short, true), ExitAction::Ignore(_)));
    }

    #[test]
    fn other_ports_go_to_the_bus() {
        assert_eq!(
            dispatch(&out(0x5e4, 7), true),
            ExitAction::PioWrite {
                port: 0x5e4,
                data: &[7, 0, 0, 0]
            }
        );
        assert_eq!(
            dispatch(
                &VmExit::IoIn {
                    port: 0x60,
                    size: 2
                },
                true
            ),
            ExitAction::PioRead {
                port: 0x60,
                size: 2
            }
        );
    }

    #[test]
    fn snp_page_conversions_and_termination() {
        assert_eq!(
            dispatch(
                &VmExit::MapGpaRange {
                    gpa: 0x20000,
                    npages: 2,
                    private: false
                },
                false
            ),
            ExitAction::ConvertPages {
                gpa: 0x20000,
                len: 0x2000,
                private: false,
                hypercall: true
            }
        );
        // A range that overflows converts nothing (and is refused).
        assert!(matches!(
            dispatch(
                &VmExit::MapGpaRange {
                    gpa: u64::MAX - 4095,
                    npages: 2,
                    private: true
                },
                false
            ),
            ExitAction::ConvertPages { len: 0, .. }
        ));
        assert_eq!(
            dispatch(
                &VmExit::MemoryFault {
                    gpa: 0x3000,
                    size: 4096,
                    private: true
                },
                false
            ),
            ExitAction::ConvertPages {
                gpa: 0x3000,
                len: 4096,
                private: true,
                hypercall: false
            }
        );
        assert_eq!(
            dispatch(
                &VmExit::Terminated {
                    reason_set: 0,
                    reason_code: 3
                },
                false
            ),
            ExitAction::End(VcpuEnd::GuestTerminated {
                reason_set: 0,
                reason_code: 3
            })
        );
    }

    #[test]
    fn other_exits() {
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
