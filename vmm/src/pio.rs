//! The port-I/O bus: devices a payload attaches to a VM's I/O ports.
//!
//! The vCPU loop handles two kinds of guest request itself, the SNP
//! certificate exit and the emulated doorbell ([`crate::doorbell`]); every
//! other `IN` and `OUT` goes to this bus. A device claims a range of ports
//! when the VM is created; the bus refuses overlapping ranges and the
//! doorbell port. An `IN` from a port no device claims reads all ones, as
//! on an empty ISA bus; an `OUT` to one is ignored.
//!
//! An access costs no allocation: a write's bytes are lent to the device
//! straight from the exit, a read's answer goes into a buffer on the vCPU
//! thread's stack.
//!
//! Devices run on the vCPU thread that made the access and must return
//! promptly; one that pauses the vCPU (a guest's "sleep") waits on the
//! VM's [`StopSignal`](crate::stop::StopSignal) so a shutdown cuts it short.

use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::doorbell::DOORBELL_PORT;

/// A device on the port-I/O bus.
pub trait PioDevice: Send + Sync {
    /// The guest on vCPU `vcpu` wrote `data` to `port`.
    fn write(&self, vcpu: u8, port: u16, data: &[u8]);

    /// The guest on vCPU `vcpu` reads `data.len()` bytes from `port`.
    /// The default reads all ones.
    fn read(&self, vcpu: u8, port: u16, data: &mut [u8]) {
        let _ = (vcpu, port);
        data.fill(0xff);
    }
}

/// Why a device could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range is empty or wraps past port 0xffff.
    #[error("Invalid port range {first:#x}+{len}")]
    BadRange {
        /// First port.
        first: u16,
        /// Number of ports.
        len: u16,
    },
    /// The range overlaps a device already attached, or the doorbell.
    #[error("Ports {first:#x}..={last:#x} are already taken")]
    Taken {
        /// First port asked for.
        first: u16,
        /// Last port asked for.
        last: u16,
    },
}

/// The devices of one VM, by port range.
#[derive(Default)]
pub struct PioBus {
    devices: Vec<(RangeInclusive<u16>, Arc<dyn PioDevice>)>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.devices.iter().map(|(r, _)| r.clone()).collect();
        f.debug_struct("PioBus").field("ranges", &ranges).finish()
    }
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> PioBus {
        PioBus::default()
    }

    /// Attaches `device` to the `len` ports from `first`.
    pub fn attach(
        &mut self,
        first: u16,
        len: u16,
        device: Arc<dyn PioDevice>,
    ) -> Result<(), BusError> {
        let last = len
            .checked_sub(1)
            .and_then(|n| first.checked_add(n))
            .ok_or(BusError::BadRange { first, len })?;
        let range = first..=last;
        let clashes = range.contains(&DOORBELL_PORT)
            || self
                .devices
                .iter()
                .any(|(r, _)| r.start() <= range.end() && range.start() <= r.end());
        if clashes {
            return Err(BusError::Taken { first, last });
        }
        self.devices.push((range, device));
        Ok(())
    }

    fn device(&self, port: u16) -> Option<&Arc<dyn PioDevice>> {
        self.devices
            .iter()
            .find(|(r, _)| r.contains(&port))
            .map(|(_, d)| d)
    }

    /// Delivers an `OUT`. Returns whether a device took it.
    pub fn write(&self, vcpu: u8, port: u16, data: &[u8]) -> bool {
        match self.device(port) {
            Some(device) => {
                device.write(vcpu, port, data);
                true
            }
            None => false,
        }
    }

    /// Answers an `IN`: from the device on `port`, or all ones.
    pub fn read(&self, vcpu: u8, port: u16, data: &mut [u8]) {
        match self.device(port) {
            Some(device) => device.read(vcpu, port, data),
            None => data.fill(0xff),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u8, u16, Vec<u8>)>>);

    impl PioDevice for Recorder {
        fn write(&self, vcpu: u8, port: u16, data: &[u8]) {
            self.0.lock().unwrap().push((vcpu, port, data.to_vec()));
        }

        fn read(&self, _: u8, port: u16, data: &mut [u8]) {
            data.fill(port as u8);
        }
    }

    #[test]
    fn writes_and_reads_reach_the_device_on_the_port() {
        let mut bus = PioBus::new();
        let dev = Arc::new(Recorder::default());
        bus.attach(0x5e4, 8, dev.clone()).unwrap();
        assert!(bus.write(1, 0x5e8, &[1, 2]));
        assert!(!bus.write(1, 0x5ec, &[3]));
        assert_eq!(*dev.0.lock().unwrap(), [(1, 0x5e8, vec![1, 2])]);
        let mut data = [0; 2];
        bus.read(0, 0x5e4, &mut data);
        assert_eq!(data, [0xe4; 2]);
        bus.read(0, 0x80, &mut data);
        assert_eq!(data, [0xff; 2], "no device: all ones");
    }

    #[test]
    fn overlaps_bad_ranges_and_the_doorbell_are_refused() {
        let mut bus = PioBus::new();
        let dev: Arc<dyn PioDevice> = Arc::new(Recorder::default());
        bus.attach(0x100, 4, dev.clone()).unwrap();
        assert!(bus.attach(0x103, 1, dev.clone()).is_err());
        assert!(bus.attach(0xfe, 3, dev.clone()).is_err());
        bus.attach(0x104, 1, dev.clone()).unwrap();
        assert_eq!(
            bus.attach(DOORBELL_PORT - 1, 2, dev.clone()),
            Err(BusError::Taken {
                first: DOORBELL_PORT - 1,
                last: DOORBELL_PORT
            })
        );
        assert!(matches!(
            bus.attach(0x10, 0, dev.clone()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.attach(0xffff, 2, dev),
            Err(BusError::BadRange { .. })
        ));
    }
}
