//! Running a firmware or key update command while this process holds a
//! lock, shared by `snp-certs lock` and `snp-certs refresh`.
//!
//! While the command runs, this process blocks `SIGINT`, `SIGTERM`,
//! `SIGHUP` and `SIGCHLD` and waits for them with `sigwaitinfo`:
//! `SIGCHLD` means the command may have ended (it is reaped); the others,
//! when sent to this process alone (by `kill`, a service manager), are
//! forwarded to the command, which decides how to stop; signals the
//! terminal sends to the whole foreground process group reach the command
//! directly and are not sent twice. The command starts with an empty
//! signal mask. The exit status is reported as a shell does: the exit
//! code, or 128 + the signal number.
//!
//! Once the command has ended, the signal mask is restored, so a `SIGINT`
//! or `SIGTERM` arriving afterwards (while the tool reads a new table or
//! rewrites the file) ends the tool as usual; the kernel releases its lock
//! when it dies, and an in-place rewrite defers them until the file is
//! whole (see `snp_certs::update`). [`stop_requested`] tells whether a stop
//! signal was forwarded, so the caller can skip what it would have done
//! after the command.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};

/// The last stop signal (`SIGINT`, `SIGTERM`, `SIGHUP`) forwarded to a
/// command, 0 if none.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The stop signal forwarded to the command, if one was: the operator or a
/// service manager asked this tool to stop while the command ran.
pub fn stop_requested() -> Option<libc::c_int> {
    match STOP_SIGNAL.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// Gives `SIGINT` and `SIGTERM` their default action and unblocks them,
/// whatever the parent left (a shell starts background jobs with `SIGINT`
/// ignored): a tool that holds, or waits for, a lock others wait for must
/// stop when asked. The kernel releases its locks when it dies.
pub fn default_stop_signals() -> io::Result<()> {
    let mut set = empty_set();
    // SAFETY: `set` is an initialised signal set; setting the default
    // disposition installs no handler; pthread_sigmask changes only this
    // thread's mask and `set` outlives the call.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaddset(&mut set, signal);
            libc::signal(signal, libc::SIG_DFL);
        }
        let ret = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
    }
    Ok(())
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
/// an empty mask (see `run`). Returns the mask before.
fn block_signals(set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    let mut old = empty_set();
    // SAFETY: setting SIGCHLD to its default disposition installs no
    // handler; `set` and `old` are initialised and outlive the call, and
    // pthread_sigmask changes only this thread's mask.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let ret = libc::pthread_sigmask(libc::SIG_BLOCK, set, &mut old);
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
    }
    Ok(old)
}

/// Restores the mask `block_signals` returned. Signals that arrived since
/// the last wait (pending) take effect now.
fn restore_signals(old: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `old` is an initialised set that outlives the call;
    // pthread_sigmask changes only this thread's mask.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
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
        if signal != libc::SIGCHLD {
            STOP_SIGNAL.store(signal, Ordering::Relaxed);
            if code != libc::SI_KERNEL {
                forward(&child, signal);
            }
        }
    }
}

/// The shell's exit code for a status.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

/// Runs `program` with `args` to completion, forwarding signals (see the
/// module docs). `Ok(Err(code))` when it cannot be started: 127 if not
/// found, else 126 (the message is printed).
pub fn run(program: &OsString, args: &[OsString]) -> Result<Result<ExitStatus, u8>> {
    let set = signal_set();
    let old = block_signals(&set).context("cannot block signals")?;
    let result = spawn_and_supervise(program, args, &set);
    restore_signals(&old).context("cannot restore the signal mask")?;
    result
}

fn spawn_and_supervise(
    program: &OsString,
    args: &[OsString],
    set: &libc::sigset_t,
) -> Result<Result<ExitStatus, u8>> {
    let mut command = Command::new(program);
    command.args(args);
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
            return Ok(Err(code));
        }
    };
    supervise(child, set).map(Ok)
}
