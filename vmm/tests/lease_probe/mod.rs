//! Watching the lease from outside: a vCPU that looks at the certs file's
//! lock, through an open file description of its own, at every step of
//! the lease protocol, and an observer that looks at it when the payload
//! hears of the answer.
//!
//! The lock is seen with `F_OFD_GETLK` (which takes nothing): a shared
//! lock held by any other open file description conflicts with the write
//! lock it asks about. The probe sits between the runner and the real
//! vCPU (KVM or the mock), so it sees the lock as the runner enters the
//! immediate-exit run and again as that run returns, before the runner
//! can act on its result. The runner's thread is inside that run in
//! between, and only that thread can release the lease: a lock seen held
//! at both ends was held for the whole run, firmware call included.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hypervisor::{GuestMemoryMmap, HypervisorError, SnpCertsCompletion, Vcpu, VcpuKicker, VmExit};
use snp_certs::{CertKind, TableBuilder};
use vm_memory::{Bytes, GuestAddress};
use vmm::doorbell::MAILBOX_RET;
use vmm::payload::{Answered, RequestObserver};

/// A valid three-entry table (4772 bytes: two pages).
pub fn table() -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, len) in [
        (CertKind::Vcek, 1361),
        (CertKind::Ask, 1677),
        (CertKind::Ark, 1639),
    ] {
        let mut d = vec![7u8; len];
        d[0] = 0x30;
        b.add(kind, d).unwrap();
    }
    b.build().unwrap()
}

/// A temporary directory holding `certs.bin` with `bytes`.
pub fn certs_dir(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Whether another open file description holds a lock on `probe`'s file:
/// `F_OFD_GETLK` for a write lock on the whole file, which any shared
/// lock conflicts with.
pub fn locked_elsewhere(probe: &File) -> bool {
    // SAFETY: `flock` is plain old data; all-zero is a valid value (the
    // whole file from offset 0, l_pid 0 as OFD requests require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the fd is open for the lifetime of `probe`; `fl` is an
    // initialised `flock` the kernel overwrites in place.
    let ret = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(ret, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    assert_ne!(
        fl.l_type,
        libc::F_WRLCK as libc::c_short,
        "nobody takes the certs file exclusively here"
    );
    fl.l_type == libc::F_RDLCK as libc::c_short
}

/// What the probe saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// The exit was completed (`complete_snp_req_certs`), the lock as
    /// seen then.
    Completed {
        /// Held by the VMM.
        locked: bool,
    },
    /// A run with the immediate-exit flag began.
    LeaseRunEntered {
        /// Held by the VMM.
        locked: bool,
        /// The answer was already written: the exit completed, or the
        /// doorbell's mailbox holds a `ret`.
        answered: bool,
        /// The firmware already had the guest's report request.
        firmware: bool,
    },
    /// That run returned, before the runner saw its result.
    LeaseRunReturned {
        /// Held by the VMM.
        locked: bool,
        /// The firmware had the guest's report request.
        firmware: bool,
        /// What it returned (`Interrupted`: KVM's `EINTR`).
        exit: Result<VmExit, String>,
    },
    /// A run that may execute guest code began.
    GuestRunEntered {
        /// Held by the VMM.
        locked: bool,
    },
    /// The payload's observer heard of an answer.
    Observed {
        /// Held by the VMM.
        locked: bool,
    },
}

/// Whether the firmware has received the guest's report request (on the
/// kernel model: it wrote the response page).
pub type FirmwareWitness = Box<dyn Fn() -> bool + Send + Sync>;

/// The probe's own view of the certs file, and what it saw.
pub struct Probe {
    file: File,
    /// The doorbell mailbox, whose `ret` the guest set to all ones.
    mailbox: Option<(Arc<GuestMemoryMmap>, u64)>,
    firmware: Option<FirmwareWitness>,
    seen: Mutex<Vec<Sighting>>,
}

impl Probe {
    /// A probe of `path` (its own open file description); `mailbox`: the
    /// doorbell mailbox's memory and address, if the guest uses one.
    pub fn new(path: &Path, mailbox: Option<(Arc<GuestMemoryMmap>, u64)>) -> Arc<Probe> {
        Probe::with_firmware(path, mailbox, None)
    }

    /// [`Probe::new`], also noting whether `firmware` says the firmware
    /// has the guest's request.
    pub fn with_firmware(
        path: &Path,
        mailbox: Option<(Arc<GuestMemoryMmap>, u64)>,
        firmware: Option<FirmwareWitness>,
    ) -> Arc<Probe> {
        Arc::new(Probe {
            file: File::open(path).unwrap(),
            mailbox,
            firmware,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn firmware_has_it(&self) -> bool {
        self.firmware.as_ref().is_some_and(|has_it| has_it())
    }

    /// Whether the VMM holds its shared lock now.
    pub fn locked(&self) -> bool {
        locked_elsewhere(&self.file)
    }

    fn see(&self, sighting: Sighting) {
        self.seen.lock().unwrap().push(sighting);
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Sighting> {
        self.seen.lock().unwrap().clone()
    }

    fn mailbox_answered(&self) -> bool {
        self.mailbox.as_ref().is_some_and(|(memory, gpa)| {
            memory
                .read_obj::<u64>(GuestAddress(gpa + MAILBOX_RET))
                .unwrap()
                != u64::MAX
        })
    }
}

impl RequestObserver for Probe {
    fn answered(&self, _: &Answered) {
        self.see(Sighting::Observed {
            locked: self.locked(),
        });
    }
}

/// Which step of the protocol the probed vCPU makes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: every call is passed on.
    None,
    /// Completing the certificate exit fails (as it does for a `ret`
    /// KVM refuses), without reaching the vCPU.
    Completion,
    /// The immediate-exit run is passed on (the kernel completes the
    /// request), then fails as `KVM_RUN` can (`EFAULT`).
    LeaseRun,
}

/// A vCPU that reports to a [`Probe`] at each step of the lease protocol.
pub struct ProbedVcpu {
    inner: Box<dyn Vcpu>,
    probe: Arc<Probe>,
    fault: Fault,
    immediate_exit: bool,
    completed: bool,
}

impl ProbedVcpu {
    /// `inner`, watched by `probe`.
    pub fn new(inner: Box<dyn Vcpu>, probe: Arc<Probe>, fault: Fault) -> ProbedVcpu {
        ProbedVcpu {
            inner,
            probe,
            fault,
            immediate_exit: false,
            completed: false,
        }
    }
}

impl Vcpu for ProbedVcpu {
    fn setup_real_mode(&mut self, entry: u64) -> Result<(), HypervisorError> {
        self.inner.setup_real_mode(entry)
    }

    fn setup_long_mode(&mut self, entry: u64, page_table: u64) -> Result<(), HypervisorError> {
        self.inner.setup_long_mode(entry, page_table)
    }

    fn run(&mut self) -> Result<VmExit, HypervisorError> {
        let probe = Arc::clone(&self.probe);
        if !self.immediate_exit {
            probe.see(Sighting::GuestRunEntered {
                locked: probe.locked(),
            });
            return self.inner.run();
        }
        probe.see(Sighting::LeaseRunEntered {
            locked: probe.locked(),
            answered: std::mem::take(&mut self.completed) || probe.mailbox_answered(),
            firmware: probe.firmware_has_it(),
        });
        let mut run = self.inner.run();
        if self.fault == Fault::LeaseRun && run.is_ok() {
            run = Err(HypervisorError::Run(hypervisor::Errno::new(libc::EFAULT)));
        }
        probe.see(Sighting::LeaseRunReturned {
            locked: probe.locked(),
            firmware: probe.firmware_has_it(),
            exit: run.as_ref().map(Clone::clone).map_err(|e| e.to_string()),
        });
        run
    }

    fn complete_io_in(&mut self, data: &[u8]) -> Result<(), HypervisorError> {
        self.inner.complete_io_in(data)
    }

    fn complete_snp_req_certs(&mut self, c: SnpCertsCompletion) -> Result<(), HypervisorError> {
        let done = match self.fault {
            Fault::Completion => Err(HypervisorError::NoPendingExit("SNP certificate request")),
            _ => self.inner.complete_snp_req_certs(c),
        };
        self.completed = done.is_ok();
        self.probe.see(Sighting::Completed {
            locked: self.probe.locked(),
        });
        done
    }

    fn complete_hypercall(&mut self, ret: u64) -> Result<(), HypervisorError> {
        self.inner.complete_hypercall(ret)
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.immediate_exit = on;
        self.inner.set_immediate_exit(on);
    }

    fn kicker(&self) -> VcpuKicker {
        self.inner.kicker()
    }
}

/// The sightings of one delivered request whose lease the protocol kept
/// until its immediate-exit run returned: the lock held from the answer
/// to the end of that run, free when the payload hears of it and when
/// the guest runs again. `completed`: the answer went through
/// `complete_snp_req_certs` (the KVM exit) rather than a mailbox;
/// `firmware`: the probe has a firmware witness, which must see the
/// request reach firmware inside the immediate-exit run.
pub fn one_lease(completed: bool, firmware: bool) -> Vec<Sighting> {
    let mut seen = Vec::new();
    if completed {
        seen.push(Sighting::Completed { locked: true });
    }
    seen.extend([
        Sighting::LeaseRunEntered {
            locked: true,
            answered: true,
            firmware: false,
        },
        Sighting::LeaseRunReturned {
            locked: true,
            firmware,
            exit: Ok(VmExit::Interrupted),
        },
        Sighting::Observed { locked: false },
        Sighting::GuestRunEntered { locked: false },
    ]);
    seen
}
