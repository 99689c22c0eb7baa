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
//! number if a signal killed it, as a shell reports it.
//!
//! No input can hang the tool while it holds the lock: with
//! `--update-from NEW`, a NEW that exists already is opened non-blocking,
//! refused unless it is a regular file, and validated **before** the lock
//! is taken (and read again after the command, which may rewrite it).
//! `SIGINT` and `SIGTERM` keep their default action outside the command's
//! lifetime (an inherited ignore is reset), so a stop request while
//! waiting for the lock or reading NEW ends the tool at once and the
//! kernel releases the lock; a stop request while the command runs is
//! forwarded to it, and then nothing is updated. If this process is
//! killed with `SIGKILL`, the kernel closes its descriptors and so releases
//! the lock; the command keeps running, unprotected.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use snp_certs::update::{ExclusiveLock, UpdateOptions};

use crate::child;
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

/// Reads and checks NEW before the lock is taken, if it exists already:
/// a NEW that is not a regular file, or not a valid table, is refused
/// before anyone is made to wait. `Ok(None)` when its chain fails (the
/// problems are printed); `Ok(Some(None))` when NEW does not exist yet
/// (the command is expected to write it).
fn precheck_new(new_path: &Path, args: &NewTableArgs) -> Result<Option<Option<Vec<u8>>>> {
    match std::fs::symlink_metadata(new_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(None)),
        _ => Ok(check_new_table(new_path, args)?.map(Some)),
    }
}

/// Runs `lock`.
pub fn run(args: &LockArgs) -> Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no command given after --");
    };
    child::default_stop_signals().context("cannot reset SIGINT and SIGTERM")?;
    if let Some(new_path) = &args.update_from {
        match precheck_new(new_path, &args.check) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(ExitCode::from(1)),
            Err(e) => return Err(e.context("the command was not run")),
        }
    }
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
    let status = match child::run(program, rest)? {
        Ok(status) => status,
        Err(code) => return Ok(ExitCode::from(code)),
    };
    let code = child::exit_code(status);
    if let Some(new_path) = &args.update_from {
        if let Some(signal) = child::stop_requested() {
            eprintln!(
                "snp-certs: stopped by signal {signal} while the command ran; {} was not updated",
                args.file.display()
            );
            let code = if status.success() {
                u8::try_from(128 + signal).unwrap_or(255)
            } else {
                code
            };
            return Ok(ExitCode::from(code));
        }
        if !status.success() {
            eprintln!(
                "snp-certs: the command failed ({status}); {} was not updated",
                args.file.display()
            );
        } else {
            // Read again: the command may have written NEW.
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
