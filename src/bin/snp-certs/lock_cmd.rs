//! `snp-certs lock FILE -- COMMAND`: run a firmware or key update command
//! while holding the exclusive lock on the certs file.
//!
//! The lock is an OFD lock on a descriptor opened close-on-exec, so the
//! command and anything it starts do not inherit it: the lock lasts exactly
//! as long as this process holds it, and a grandchild left running in the
//! background cannot keep it. While the command runs, this process blocks
//! `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGCHLD` and waits for them with
//! `sigwaitinfo`:
//!
//! * `SIGCHLD`: the command may have ended; reap it, then release.
//! * `SIGINT`, `SIGTERM`, `SIGHUP` sent to this process (by `kill`, a
//!   service manager, …) are forwarded to the command, which decides how
//!   to stop; the lock is held until it has. Signals the terminal sends to
//!   the whole foreground process group (Ctrl-C) reach the command
//!   directly and are not sent a second time.
//!
//! The exit status is the command's: its exit code, or 128 + the signal
//! number if a signal killed it, as a shell reports it. If this process is
//! killed with `SIGKILL`, the kernel closes its descriptors and so releases
//! the lock; the command keeps running, unprotected.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use snp_certs::update::{ExclusiveLock, UpdateOptions};

use crate::update::{
    DEFAULT_WRITER_TIMEOUT_MS, EXIT_LOCK_TIMEOUT, NewTableArgs, check_new_table, describe,
    is_lock_timeout,
};

/// Run COMMAND while holding the exclusive lock on FILE, so that no guest
/// is served certificates while firmware or keys change (e.g. `snphost
/// commit`, `snphost vlek-load`). Exits with the command's status (128 +
/// signal if it was killed); 75 if the lock was not taken in time (the
/// command is not run); 126/127 if the command cannot be run.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The certs file guests are served from.
    file: PathBuf,
    /// Maximum time in milliseconds to wait for readers to release the file.
    #[arg(long, default_value_t = DEFAULT_WRITER_TIMEOUT_MS)]
    timeout: u64,
    /// After COMMAND succeeds, and still under the same lock, replace the
    /// content of FILE in place with the table in NEW (which COMMAND may
    /// have written). Nothing is replaced if COMMAND fails.
    #[arg(long, value_name = "NEW")]
    update_from: Option<PathBuf>,
    #[command(flatten)]
    check: NewTableArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// The signals waited for while the command runs.
const WAITED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD];

fn signal_set() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in WAITED {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

fn empty_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Blocks the waited-for signals on this (the only) thread, and makes
/// sure `SIGCHLD` is not ignored (an inherited `SIG_IGN` would make the
/// kernel reap the command behind our back). The command is started with
/// an empty mask (see `run`).
fn block_signals(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: setting SIGCHLD to its default disposition installs no
    // handler; `set` is initialised and outlives the call, and
    // pthread_sigmask changes only this thread's mask.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let ret = libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut());
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
    }
    Ok(())
}

/// Waits for one of the blocked signals; returns its number and code.
fn wait_signal(set: &libc::sigset_t) -> io::Result<(libc::c_int, libc::c_int)> {
    loop {
        // SAFETY: `set` is an initialised signal set and `info` a zeroed
        // siginfo_t that sigwaitinfo fills in; both outlive the call.
        let (ret, info) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            (libc::sigwaitinfo(set, &mut info), info)
        };
        if ret > 0 {
            return Ok((ret, info.si_code));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Forwards `signal` to the child.
fn forward(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill() has no memory-safety preconditions; the child has not
    // been reaped yet (we reap only below), so its pid is still its own.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Runs the child to completion, forwarding signals.
fn supervise(mut child: Child, set: &libc::sigset_t) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the command")? {
            return Ok(status);
        }
        let (signal, code) = wait_signal(set).context("cannot wait for signals")?;
        if signal != libc::SIGCHLD && code != libc::SI_KERNEL {
            forward(&child, signal);
        }
    }
}

/// The shell's exit code for a status.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

/// Runs `lock`.
pub fn run(args: &LockArgs) -> Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no command given after --");
    };
    let lock = match ExclusiveLock::acquire(&args.file, Duration::from_millis(args.timeout)) {
        Ok(lock) => lock,
        Err(e) if is_lock_timeout(&e) => {
            eprintln!(
                "snp-certs: {:#}; the command was not run",
                anyhow::Error::new(e)
            );
            return Ok(ExitCode::from(EXIT_LOCK_TIMEOUT));
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot lock {}", args.file.display()))
            );
        }
    };
    let set = signal_set();
    block_signals(&set).context("cannot block signals")?;
    let mut command = Command::new(program);
    command.args(rest);
    let empty = empty_set();
    // SAFETY: the closure runs in the child between fork and exec, touches
    // only its copy of `empty`, and calls pthread_sigmask, which is
    // async-signal-safe. It gives the command the unblocked signal mask a
    // program expects (ours has the waited-for signals blocked).
    unsafe {
        command.pre_exec(move || {
            let ret = libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if ret == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(ret))
            }
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("snp-certs: cannot run {}: {e}", program.to_string_lossy());
            return Ok(ExitCode::from(code));
        }
    };
    let status = supervise(child, &set)?;
    let code = exit_code(status);
    if let Some(new_path) = &args.update_from {
        if !status.success() {
            eprintln!(
                "snp-certs: the command failed ({status}); {} was not updated",
                args.file.display()
            );
        } else {
            let Some(new) = check_new_table(new_path, &args.check)? else {
                return Ok(ExitCode::from(1));
            };
            let report = lock
                .rewrite(&new, &UpdateOptions::default())
                .with_context(|| format!("cannot update {}", args.file.display()))?;
            eprintln!("{}", describe(&report));
        }
    }
    lock.release();
    Ok(ExitCode::from(code))
}
