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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::KdsError;
use crate::identity::{PlatformId, Product};
use crate::url::Family;

/// The default cache directory.
pub const DEFAULT_DIR: &str = "/var/cache/snp-certs/kds";

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

    /// Reads an entry; `None` if there is none.
    pub fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, KdsError> {
        let error = |source| KdsError::Cache {
            path: path.to_owned(),
            source,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(error(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE).read_to_end(&mut bytes).map_err(error)?;
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
}
