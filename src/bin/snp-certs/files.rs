//! Reading input files and certs files, and writing new output files.
//!
//! A certs file is read under its shared lock, like a VMM reads it, so a
//! tool never looks at a half-updated table.
//!
//! Inputs (certificates, new tables) are plain files read whole, with a
//! size cap so a wrong path (a device, a huge log) fails fast. They are
//! opened non-blocking and refused unless they are regular files, so no
//! input (a FIFO nobody writes to, a terminal) can hang a tool. A new certs
//! file is written to a temporary file in the same directory, synced, and
//! then linked into place with `renameat2(RENAME_NOREPLACE)`, which fails
//! if the name exists: a file that exists may be live (a VMM may be serving
//! it right now), and a live file must only be changed in place under the
//! exclusive lock (`snp-certs update`).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use snp_certs::CertsReader;
use snp_certs::table::{CertTable, LINUX_GUEST_MAX_SIZE, MAX_TABLE_SIZE};
use snp_certs_verify::x509::{ParsedCert, ParsedCrl};

/// Largest input file read (a certificate, CRL or table): 1 MiB.
const MAX_INPUT: u64 = MAX_TABLE_SIZE as u64;

/// Reads the certs file `path` under its shared lock (waiting at most
/// `timeout_ms`), and runs `use_table` on it while the lock is held.
/// `action` names the command in errors ("cannot inspect FILE").
pub fn with_locked_table<T>(
    path: &Path,
    timeout_ms: u64,
    action: &str,
    use_table: impl FnOnce(&CertTable<'_>) -> T,
) -> Result<T> {
    let mut reader = CertsReader::new();
    let locked = match reader.lock_and_read(path, std::time::Duration::from_millis(timeout_ms)) {
        Ok(locked) => locked,
        Err(e) => {
            // A certificate handed over where a table is wanted.
            if let Some(what) = read_input(path).ok().and_then(|b| single_document(&b)) {
                bail!(
                    "{} is {what}, not a certificate table; use `snp-certs build` or `import-dir`",
                    path.display()
                );
            }
            return Err(
                anyhow::Error::new(e).context(format!("cannot {action} {}", path.display()))
            );
        }
    };
    let table = CertTable::parse(locked.bytes).context("invalid table")?;
    Ok(use_table(&table))
}

/// What `bytes` is if it is one certificate or CRL, PEM or DER, such as
/// "a PEM certificate": an operator handed a certificate to a command
/// that wants a table.
pub fn single_document(bytes: &[u8]) -> Option<&'static str> {
    let pem = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
    let what = if ParsedCert::parse(bytes).is_ok() {
        "certificate"
    } else if ParsedCrl::parse(bytes).is_ok() {
        "CRL"
    } else {
        return None;
    };
    Some(match (pem, what) {
        (true, "certificate") => "a PEM certificate",
        (false, "certificate") => "a DER certificate",
        (true, _) => "a PEM CRL",
        (false, _) => "a DER CRL",
    })
}

/// Refuses a table of `size` bytes for `what` if a Linux guest could not
/// receive it, unless `allow_large`.
pub fn check_guest_limit(size: usize, allow_large: bool, what: &Path) -> Result<()> {
    if snp_certs::table::exceeds_guest_limit(size as u64, allow_large) {
        bail!(
            "{}: the table is {size} bytes, and Linux guests cannot receive more than \
             {LINUX_GUEST_MAX_SIZE} (their certificate buffer is 16 KiB); store DER, drop \
             extra entries, or pass --allow-large for guests known to offer more",
            what.display()
        );
    }
    Ok(())
}

/// Opens a file the user named for reading without ever blocking
/// (`O_NONBLOCK | O_NOCTTY`: a FIFO nobody writes to, a tty or a device
/// cannot hang the tool), and refuses at once anything that is not a
/// regular file ("NAME is a FIFO, not a regular file"): the library's own
/// check, the one the VMM applies to certs files.
pub fn open_input(path: &Path) -> Result<File> {
    Ok(snp_certs::file::open_regular(path)?)
}

/// Reads a whole input file of at most 1 MiB (opened with [`open_input`]).
pub fn read_input(path: &Path) -> Result<Vec<u8>> {
    let file = open_input(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT {
        bail!("{} is larger than {MAX_INPUT} bytes", path.display());
    }
    Ok(bytes)
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

/// Moves `from` to `to` unless `to` exists (Linux `renameat2` with
/// `RENAME_NOREPLACE`).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = match (cstring(from), cstring(to)) {
        (Ok(from), Ok(to)) => (from, to),
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    // SAFETY: both paths are valid NUL-terminated strings that outlive the
    // call; AT_FDCWD makes relative paths relative to the working directory.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The error for an output that exists already.
pub fn exists_error(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} exists and may be served to guests right now; write the new table to a new file \
         and replace the live one in place under the lock with `snp-certs update {} --from NEW`",
        path.display(),
        path.display()
    )
}

/// Writes `bytes` to a new file at `path`, atomically: other processes see
/// no file or the complete file. Refuses if `path` exists.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(exists_error(path));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (temp, mut file) = tempfile_in(&dir)?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", temp.display()));
    }
    drop(file);
    if let Err(e) = rename_noreplace(&temp, path) {
        let _ = fs::remove_file(&temp);
        if e.kind() == io::ErrorKind::AlreadyExists {
            return Err(exists_error(path));
        }
        return Err(e).with_context(|| format!("cannot create {}", path.display()));
    }
    // Make the new name durable too.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a uniquely named temporary file in `dir` (mode 0644 less umask).
fn tempfile_in(dir: &Path) -> Result<(PathBuf, File)> {
    let pid = std::process::id();
    for attempt in 0..100u32 {
        let path = dir.join(format!(".snp-certs.{pid}.{attempt}.tmp"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create a file in {}", dir.display()));
            }
        }
    }
    bail!("cannot create a temporary file in {}", dir.display())
}
