//! The host cache of verified KDS documents.
//!
//! # Layout
//!
//! ```text
//! {cache}/
//!   vcek/{product}/cert_chain.pem      ASK then ARK, PEM, as KDS serves it
//!   vcek/{product}/crl.der             the ARK's CRL, DER
//!   vcek/{product}/{hwid}/{tcb}.der    one VCEK, DER; {tcb} = bl3-tee0-snp8-ucode115[-fmcN]
//!   vlek/{product}/cert_chain.pem      ASVK then ARK
//!   vlek/{product}/crl.der
//!   pacing/{host}                      next request time (see crate::pacing)
//! ```
//!
//! `{product}` is `milan`, `genoa` or `turin`, `{hwid}` lower-case hex.
//!
//! # Where
//!
//! [`default_dir`]: for root the host-wide `/var/cache/snp-certs/kds`,
//! shared by every process on the host (and so is its pacing). For anyone
//! else the first of these that can be created and written:
//! `$XDG_CACHE_HOME/snp-certs/kds` (when `XDG_CACHE_HOME` is an absolute
//! path), `$HOME/.cache/snp-certs/kds`, and `$TMPDIR/snp-certs-UID/kds`
//! (`/tmp` without `TMPDIR`; the `snp-certs-UID` directory made mode
//! 0700 and used only if it is the user's own and nobody else can write
//! it). A caller can always name another directory.
//! VCEKs never change for a given chip and TCB and are kept for good;
//! chains are kept until their certificates expire (they are checked on
//! every use); a CRL is used until its `nextUpdate` and then fetched
//! again.
//!
//! # Writers and readers
//!
//! Only documents that passed verification are stored. Each is written to
//! a temporary file in the same directory, synced, and renamed over its
//! name, so a reader in another process sees the old file or the new one,
//! never a part. This is a private cache, not a certs file that VMMs lock:
//! rename is right here. Readers need no lock; what they read is verified
//! again before use, and an entry that fails is treated as missing.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use snp_certs::file::{CertsFileError, open_regular};

use crate::error::KdsError;
use crate::identity::{PlatformId, Product};
use crate::url::Family;

/// The host-wide cache directory, root's default.
pub const SYSTEM_DIR: &str = "/var/cache/snp-certs/kds";

/// The cache below a user's cache home (`~/.cache`).
const USER_SUBDIR: &str = "snp-certs/kds";

/// One place the cache may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDirChoice {
    /// The cache directory.
    pub dir: PathBuf,
    /// For the fallback under the shared temporary directory: the per-user
    /// directory above it, which must be the user's own and writable by
    /// nobody else.
    pub private_parent: Option<PathBuf>,
}

/// The cache directories to try, in order: see the module docs.
/// `xdg_cache_home`, `home` and `tmp` are the values of `XDG_CACHE_HOME`,
/// `HOME` and the temporary directory.
pub fn default_dirs(
    euid: u32,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
    tmp: &Path,
) -> Vec<CacheDirChoice> {
    let plain = |dir: PathBuf| CacheDirChoice {
        dir,
        private_parent: None,
    };
    if euid == 0 {
        return vec![plain(PathBuf::from(SYSTEM_DIR))];
    }
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let mut dirs = Vec::new();
    if let Some(xdg) = absolute(xdg_cache_home) {
        dirs.push(plain(xdg.join(USER_SUBDIR)));
    }
    if let Some(home) = absolute(home) {
        dirs.push(plain(home.join(".cache").join(USER_SUBDIR)));
    }
    let private = tmp.join(format!("snp-certs-{euid}"));
    dirs.push(CacheDirChoice {
        dir: private.join("kds"),
        private_parent: Some(private),
    });
    dirs
}

/// This process's user and the cache directories to try for it.
fn own_choices() -> (u32, Vec<CacheDirChoice>) {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let choices = default_dirs(
        euid,
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
        &std::env::temp_dir(),
    );
    (euid, choices)
}

/// The first default cache directory for this process's user, without
/// touching the file system (see [`default_dir`] for one that is usable).
pub fn first_default_dir() -> PathBuf {
    own_choices()
        .1
        .into_iter()
        .next()
        .map_or_else(|| PathBuf::from(SYSTEM_DIR), |c| c.dir)
}

/// This process's default cache directory: the first of
/// [`default_dirs`] that exists or can be created, and can be written.
pub fn default_dir() -> Result<PathBuf, KdsError> {
    let (euid, choices) = own_choices();
    let mut tried = Vec::new();
    for choice in choices {
        match usable(&choice, euid) {
            Ok(()) => return Ok(choice.dir),
            Err(e) => tried.push(format!("{}: {e}", choice.dir.display())),
        }
    }
    Err(KdsError::NoCacheDir { tried })
}

/// Creates the directory if needed and checks that this user can write
/// it (and, for the fallback, that its private parent is safe).
fn usable(choice: &CacheDirChoice, euid: u32) -> io::Result<()> {
    if let Some(private) = &choice.private_parent {
        match fs::DirBuilder::new().mode(0o700).create(private) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = fs::symlink_metadata(private)?;
        if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a directory of this user's that only it can write",
                    private.display()
                ),
            ));
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&choice.dir)?;
    let path = std::ffi::CString::new(choice.dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a valid NUL-terminated string for the call.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Largest cache file read.
const MAX_FILE: u64 = 1024 * 1024;

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir` (created when first written).
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_owned(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn product_dir(&self, product: Product, family: Family) -> PathBuf {
        self.dir.join(family.name()).join(product.name())
    }

    /// Where a product's chain is kept.
    pub fn chain_path(&self, product: Product, family: Family) -> PathBuf {
        self.product_dir(product, family).join("cert_chain.pem")
    }

    /// Where a product's CRL is kept.
    pub fn crl_path(&self, product: Product, family: Family) -> PathBuf {
        self.product_dir(product, family).join("crl.der")
    }

    /// Where a VCEK is kept.
    pub fn vcek_path(&self, id: &PlatformId) -> PathBuf {
        self.product_dir(id.product, Family::Vcek)
            .join(id.hwid.to_hex())
            .join(format!("{}.der", id.tcb.cache_key()))
    }

    /// Reads an entry; `None` if there is none. The entry is opened
    /// without blocking and must be a regular file: a FIFO or device put
    /// in its place cannot hang a fetch. At most 1 MiB is read (a bigger
    /// entry then fails verification).
    pub fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, KdsError> {
        let file = match open_regular(path) {
            Ok(file) => file,
            Err(CertsFileError::Missing { .. }) => return Ok(None),
            Err(e) => {
                return Err(KdsError::Cache {
                    path: path.to_owned(),
                    source: io::Error::other(e.to_string()),
                });
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE)
            .read_to_end(&mut bytes)
            .map_err(|source| KdsError::Cache {
                path: path.to_owned(),
                source,
            })?;
        Ok(Some(bytes))
    }

    /// Stores an entry atomically (see [`write_atomic`]).
    pub fn store(&self, path: &Path, bytes: &[u8]) -> Result<(), KdsError> {
        write_atomic(path, bytes).map_err(|source| KdsError::Cache {
            path: path.to_owned(),
            source,
        })
    }
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same
/// directory (created if missing, mode 0755), synced, then renamed over
/// `path`; the directory is synced too. Readers see the old file or the
/// new one. Only for private files: never for a live certs file, which
/// VMMs lock (see `snp_certs::update`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (temp, mut file) = temp_file(dir, &name)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a new temporary file next to the entry `name`, mode 0644.
fn temp_file(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    for _ in 0..100 {
        let path = dir.join(format!(".{name}.{pid}.{:08x}.tmp", fastrand::u32(..)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary file name",
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn readers_see_whole_entries_while_a_writer_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path()));
        let path = dir.path().join("vcek/milan/cert_chain.pem");
        let (a, b) = (vec![b'a'; 64 * 1024], vec![b'b'; 48 * 1024]);
        cache.store(&path, &a).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (cache, path, stop) = (Arc::clone(&cache), path.clone(), Arc::clone(&stop));
                let (a, b) = (a.clone(), b.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u32;
                    while !stop.load(Ordering::Acquire) || reads == 0 {
                        let got = cache.read(&path).unwrap().unwrap();
                        assert!(got == a || got == b, "torn read of {} bytes", got.len());
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 0..200 {
            cache
                .store(&path, if i % 2 == 0 { &b } else { &a })
                .unwrap();
        }
        stop.store(true, Ordering::Release);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cert_chain.pem"]);
        assert_eq!(cache.read(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn root_gets_the_host_cache_and_users_their_own() {
        let tmp = Path::new("/tmp");
        let dirs = |euid, xdg: Option<&str>, home: Option<&str>| -> Vec<PathBuf> {
            default_dirs(euid, xdg.map(Into::into), home.map(Into::into), tmp)
                .into_iter()
                .map(|c| c.dir)
                .collect()
        };
        assert_eq!(
            dirs(0, Some("/x"), Some("/root")),
            [PathBuf::from(SYSTEM_DIR)]
        );
        assert_eq!(
            dirs(1000, Some("/x/cache"), Some("/home/u")),
            [
                PathBuf::from("/x/cache/snp-certs/kds"),
                PathBuf::from("/home/u/.cache/snp-certs/kds"),
                PathBuf::from("/tmp/snp-certs-1000/kds"),
            ]
        );
        // A relative XDG_CACHE_HOME is ignored, as the XDG spec says.
        assert_eq!(
            dirs(65534, Some("cache"), None),
            [PathBuf::from("/tmp/snp-certs-65534/kds")]
        );
    }

    #[test]
    fn the_shared_tmp_fallback_must_be_the_users_own() {
        let tmp = tempfile::tempdir().unwrap();
        // SAFETY: geteuid() has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let choice = CacheDirChoice {
            dir: tmp.path().join(format!("snp-certs-{euid}/kds")),
            private_parent: Some(tmp.path().join(format!("snp-certs-{euid}"))),
        };
        usable(&choice, euid).unwrap();
        let parent = choice.private_parent.clone().unwrap();
        assert_eq!(fs::metadata(&parent).unwrap().mode() & 0o777, 0o700);
        // Made writable by others (someone else's trap): refused.
        fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let e = usable(&choice, euid).unwrap_err();
        assert!(e.to_string().contains("only it can write"), "{e}");
    }
}
