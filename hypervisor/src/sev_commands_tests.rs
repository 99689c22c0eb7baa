//! The commands as built for any backend, against a scripted
//! `KVM_MEMORY_ENCRYPT_OP` that answers as the kernel may: progress in
//! steps, `EAGAIN`, no progress, refusals (a CPUID page with firmware's
//! corrections written back).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::snp_cpuid::{CpuidEntry, encode_page};

/// What the scripted kernel does with the next command.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Processes this many pages of a launch update (all, for others).
    Pages(u64),
    /// `EAGAIN`.
    Again,
    /// Succeeds without processing anything.
    Nothing,
    /// Fails with this errno and firmware error.
    Fail(i32, u32),
    /// Fails with `EIO` after writing `page` at the update's address (as
    /// firmware rewrites a CPUID page it refuses).
    Rewrite(&'static [u8]),
}

/// A `KVM_MEMORY_ENCRYPT_OP` that follows a script, then processes
/// everything, and records each command's id, `sev_fd` and what it saw.
struct Scripted {
    script: Mutex<VecDeque<Answer>>,
    seen: Mutex<Vec<(u32, u32, String)>>,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Answer>) -> Scripted {
        Scripted {
            script: Mutex::new(script.into_iter().collect()),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> Vec<(u32, u32, String)> {
        self.seen.lock().unwrap().clone()
    }
}

impl MemoryEncryptOp for Scripted {
    fn memory_encrypt_op(
        &self,
        sev_fd: u32,
        command: SevCommand<'_>,
    ) -> Result<(), SevCommandError> {
        let id = command.id();
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Pages(u64::MAX));
        let fail = |errno, fw_error| SevCommandError {
            errno: Errno::new(errno),
            fw_error,
        };
        let what = match command {
            SevCommand::LaunchUpdate(u) => {
                let what = format!(
                    "gfn {:#x} uaddr {:#x} len {:#x}",
                    u.gfn_start, u.uaddr, u.len
                );
                match answer {
                    Answer::Pages(n) => {
                        let bytes = n.saturating_mul(4096).min(u.len);
                        u.gfn_start += bytes / 4096;
                        u.uaddr += bytes;
                        u.len -= bytes;
                    }
                    Answer::Rewrite(page) => {
                        // SAFETY: `uaddr` is the VMM's mapping of the page
                        // being updated, a page long (the test's memory).
                        unsafe {
                            std::ptr::copy_nonoverlapping(page.as_ptr(), u.uaddr as *mut u8, 4096)
                        };
                    }
                    _ => {}
                }
                what
            }
            SevCommand::LaunchFinish(f) => format!("host_data {:?}", &f.host_data[..4]),
            SevCommand::LaunchStart(s) => format!("policy {:#x}", s.policy),
            SevCommand::Init2(_) | SevCommand::EnableReqCerts => String::new(),
        };
        self.seen.lock().unwrap().push((id, sev_fd, what));
        match answer {
            Answer::Again => Err(fail(libc::EAGAIN, 0)),
            Answer::Fail(errno, fw) => Err(fail(errno, fw)),
            Answer::Rewrite(_) => Err(fail(libc::EIO, 0x16)),
            Answer::Pages(_) | Answer::Nothing => Ok(()),
        }
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

#[test]
fn the_command_numbers_are_the_kernels() {
    // include/uapi/linux/kvm.h: KVM_SEV_SNP_LAUNCH_START = 100, then
    // UPDATE, FINISH, and KVM_SEV_SNP_ENABLE_REQ_CERTS = 103.
    assert_eq!(
        [
            KVM_SEV_SNP_LAUNCH_START,
            KVM_SEV_SNP_LAUNCH_UPDATE,
            KVM_SEV_SNP_LAUNCH_FINISH,
            KVM_SEV_SNP_ENABLE_REQ_CERTS
        ],
        [100, 101, 102, 103]
    );
}

#[test]
fn a_user_address_is_found_for_ranges_inside_one_region_only() {
    let mem = memory();
    let base = mem.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;
    assert_eq!(user_address(&mem, 0x2000, 0x1000), Some(base + 0x2000));
    assert_eq!(
        user_address(&mem, 0xf000, 0x1000),
        Some(base + 0xf000),
        "to the end"
    );
    assert_eq!(user_address(&mem, 0xf000, 0x1001), None, "past the end");
    assert_eq!(user_address(&mem, 0x10000, 1), None, "outside");
}

#[test]
fn a_launch_update_is_issued_again_until_the_kernel_has_processed_it_all() {
    let mem = memory();
    let kernel = Scripted::new([
        Answer::Pages(1),
        Answer::Again,
        Answer::Nothing,
        Answer::Pages(2),
    ]);
    SnpCommands::new(&kernel, 9)
        .launch_update(&mem, 0x4000, 0x4000, SnpPageType::Normal)
        .unwrap();
    let base = mem.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;
    let update = |gfn: u64, len: u64| {
        (
            KVM_SEV_SNP_LAUNCH_UPDATE,
            9,
            format!("gfn {gfn:#x} uaddr {:#x} len {len:#x}", base + gfn * 4096),
        )
    };
    assert_eq!(
        kernel.seen(),
        [
            update(4, 0x4000),
            update(5, 0x3000),
            update(5, 0x3000),
            update(5, 0x3000),
            update(7, 0x1000)
        ]
    );
}

#[test]
fn a_kernel_that_stalls_is_waited_out_up_to_a_limit() {
    let mem = memory();
    // As many stalls as tolerated, progress, as many again: done.
    let mut script = vec![Answer::Again; MAX_STALLS as usize];
    script.push(Answer::Pages(1));
    script.extend(vec![Answer::Nothing; MAX_STALLS as usize]);
    let kernel = Scripted::new(script);
    SnpCommands::new(&kernel, 9)
        .launch_update(&mem, 0x4000, 0x2000, SnpPageType::Normal)
        .unwrap();
    assert_eq!(kernel.seen().len(), 2 * MAX_STALLS as usize + 2);
    // One stall more: given up.
    for stall in [Answer::Again, Answer::Nothing] {
        let kernel = Scripted::new(vec![stall; MAX_STALLS as usize + 1]);
        let error = SnpCommands::new(&kernel, 9)
            .launch_update(&mem, 0x4000, 0x1000, SnpPageType::Normal)
            .unwrap_err();
        assert!(
            matches!(error, HypervisorError::SnpLaunchOrder(why) if why.contains("no progress")),
            "{error:?}"
        );
        assert_eq!(kernel.seen().len(), MAX_STALLS as usize + 1);
    }
}

/// A kernel that says it processed everything but left `gfn_start`
/// short.
struct Miscounting;

impl MemoryEncryptOp for Miscounting {
    fn memory_encrypt_op(&self, _: u32, command: SevCommand<'_>) -> Result<(), SevCommandError> {
        if let SevCommand::LaunchUpdate(u) = command {
            u.len = 0;
        }
        Ok(())
    }
}

#[test]
fn an_update_that_ends_elsewhere_than_its_range_is_an_error() {
    let error = SnpCommands::new(&Miscounting, 9)
        .launch_update(&memory(), 0x4000, 0x2000, SnpPageType::Normal)
        .unwrap_err();
    assert!(
        matches!(error, HypervisorError::SnpLaunchOrder(why) if why.contains("ended somewhere")),
        "{error:?}"
    );
}

#[test]
fn finish_carries_the_host_data_and_start_the_policy() {
    let kernel = Scripted::new([]);
    let commands = SnpCommands::new(&kernel, 4);
    commands.launch_start(crate::DEFAULT_SNP_POLICY).unwrap();
    let mut host_data = [0u8; 32];
    host_data[..4].copy_from_slice(&[1, 2, 3, 4]);
    commands.launch_finish(host_data).unwrap();
    assert_eq!(
        kernel.seen(),
        [
            (KVM_SEV_SNP_LAUNCH_START, 4, "policy 0x30000".to_owned()),
            (
                KVM_SEV_SNP_LAUNCH_FINISH,
                4,
                "host_data [1, 2, 3, 4]".to_owned()
            )
        ]
    );
    assert!(format!("{commands:?}").contains("sev_fd: 4"));
}

#[test]
fn enabling_certificate_requests_names_why_it_failed() {
    let refused = |errno| {
        let kernel = Scripted::new([Answer::Fail(errno, 0)]);
        SnpCommands::new(&kernel, 9).enable_req_certs().unwrap_err()
    };
    assert!(matches!(
        refused(libc::EINVAL),
        HypervisorError::SnpReqCertsRejected(_)
    ));
    assert!(matches!(
        refused(libc::ENOTTY),
        HypervisorError::SnpUnsupported { .. }
    ));
    assert!(matches!(
        refused(libc::EBADF),
        HypervisorError::EnableSnpReqCerts(_)
    ));
}

thread_local! {
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// This thread's error lines.
struct ThreadLog;

impl log::Log for ThreadLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            LINES.with(|l| l.borrow_mut().push(record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: ThreadLog = ThreadLog;

#[test]
fn a_refused_cpuid_page_is_logged_entry_by_entry() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Error);
    let entry = |eax| CpuidEntry {
        eax_in: 7,
        eax,
        ..Default::default()
    };
    let mem = memory();
    let provided = encode_page(&[entry(1), entry(2)]).unwrap();
    mem.write_slice(&provided, GuestAddress(0x3000)).unwrap();
    // Firmware corrects the second entry.
    let corrected: &'static [u8] = encode_page(&[entry(1), entry(5)]).unwrap().leak();
    let kernel = Scripted::new([Answer::Rewrite(corrected)]);
    let error = SnpCommands::new(&kernel, 9)
        .launch_update(&mem, 0x3000, 0x1000, SnpPageType::Cpuid)
        .unwrap_err();
    assert!(
        matches!(error, HypervisorError::SnpCommand { fw_error: 0x16, .. }),
        "{error:?}"
    );
    let lines = LINES.with(|l| l.borrow().clone());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("1 entries differ"), "{lines:?}");
    assert!(
        lines[1].starts_with("CPUID 0x7.0x0: provided eax 0x00000002")
            && lines[1].contains("firmware expects eax 0x00000005"),
        "{lines:?}"
    );
    // Other page types are not compared.
    LINES.with(|l| l.borrow_mut().clear());
    let kernel = Scripted::new([Answer::Rewrite(corrected)]);
    mem.write_slice(&provided, GuestAddress(0x3000)).unwrap();
    SnpCommands::new(&kernel, 9)
        .launch_update(&mem, 0x3000, 0x1000, SnpPageType::Normal)
        .unwrap_err();
    assert!(LINES.with(|l| l.borrow().is_empty()));
}
