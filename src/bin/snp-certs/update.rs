//! `snp-certs update`: replace a live certs file's content in place under
//! the exclusive lock (the library's `snp_certs::update` does the work).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use snp_certs::lock::LockError;
use snp_certs::table::CertTable;
use snp_certs::update::{self, UpdateError, UpdateOptions, UpdateReport};

use crate::chain_report::{self, ChainCheck};
use crate::files::{check_guest_limit, read_input};

/// Exit code when the lock could not be taken in time (EX_TEMPFAIL).
pub const EXIT_LOCK_TIMEOUT: u8 = 75;

/// Default wait for readers, in milliseconds.
pub const DEFAULT_WRITER_TIMEOUT_MS: u64 = 10_000;

/// Replace the content of a live certs file with the table in NEW, in
/// place (same inode), under the exclusive lock: readers finish first, and
/// no reader sees a half-written file. NEW must be a valid table whose
/// chain verifies (unless --allow-unverified). Never renames over FILE.
/// Exit code 0 on success, 1 when NEW's chain does not verify, 75 when
/// readers kept the lock past the timeout, 2 on other errors.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The live certs file.
    file: PathBuf,
    /// The new table (as written by `snp-certs build`).
    #[arg(long, value_name = "NEW")]
    from: PathBuf,
    /// Maximum time in milliseconds to wait for readers to release the file.
    #[arg(long, default_value_t = DEFAULT_WRITER_TIMEOUT_MS)]
    timeout: u64,
    #[command(flatten)]
    check: NewTableArgs,
    /// Overwrite FILE even if it does not hold a certificate table now
    /// (normally refused, in case FILE names the wrong file).
    #[arg(long)]
    force: bool,
}

/// How a new table is checked before it goes live.
#[derive(Debug, Clone, Args)]
pub struct NewTableArgs {
    /// Install the table even if its chain does not verify (loudly warned).
    #[arg(long)]
    pub allow_unverified: bool,
    /// Install a table above 16 KiB, for guests known to offer a larger
    /// buffer (Linux guests cannot receive it).
    #[arg(long)]
    pub allow_large: bool,
    #[command(flatten)]
    pub time: ChainCheck,
}

/// Reads and checks a new table. `Ok(None)` when its chain fails and
/// unverified tables are not allowed (the problems are printed).
pub fn check_new_table(path: &Path, args: &NewTableArgs) -> Result<Option<Vec<u8>>> {
    let bytes = read_input(path)?;
    let table = CertTable::parse(&bytes)
        .with_context(|| format!("{} is not a valid certificate table", path.display()))?;
    check_guest_limit(bytes.len(), args.allow_large, path)?;
    for w in table.warnings() {
        eprintln!("warning: {}: {w}", path.display());
    }
    let roots = args.time.roots()?;
    let report = args.time.verify(&table, &roots);
    if !report.is_verified() {
        if !args.allow_unverified {
            for line in chain_report::lines(&report, false) {
                eprintln!("{line}");
            }
            eprintln!(
                "snp-certs: not installing {}: its chain does not verify \
                 (--allow-unverified installs it anyway)",
                path.display()
            );
            return Ok(None);
        }
        eprintln!("{}", chain_report::unverified_warning(&report));
    }
    Ok(Some(bytes))
}

/// One line describing a finished update.
pub fn describe(report: &UpdateReport) -> String {
    let ms = |us: u128| us as f64 / 1000.0;
    if report.unchanged {
        format!(
            "{} already holds this table; nothing written (lock wait {:.3} ms)",
            report.path.display(),
            ms(report.lock_wait_us)
        )
    } else {
        format!(
            "updated {} in place: {} -> {} bytes (lock wait {:.3} ms, held {:.3} ms)",
            report.path.display(),
            report.old_len,
            report.new_len,
            ms(report.lock_wait_us),
            ms(report.held_us)
        )
    }
}

/// Whether an update error is a lock timeout.
pub fn is_lock_timeout(e: &UpdateError) -> bool {
    matches!(
        e,
        UpdateError::Lock {
            source: LockError::Timeout { .. },
            ..
        }
    )
}

/// Runs `update`.
pub fn run(args: &UpdateArgs) -> Result<ExitCode> {
    let Some(new) = check_new_table(&args.from, &args.check)? else {
        return Ok(ExitCode::from(1));
    };
    let options = UpdateOptions {
        timeout: Duration::from_millis(args.timeout),
        overwrite_non_table: args.force,
    };
    match update::rewrite_in_place_with(&args.file, &new, &options) {
        Ok(report) => {
            outln!("{}", describe(&report));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if is_lock_timeout(&e) => {
            eprintln!(
                "snp-certs: {:#}; readers (VMMs serving guests) kept the file locked; \
                 nothing was written, try again or raise --timeout",
                anyhow::Error::new(e)
            );
            Ok(ExitCode::from(EXIT_LOCK_TIMEOUT))
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("cannot update {}", args.file.display())))
        }
    }
}
