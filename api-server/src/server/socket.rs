//! Creating the API socket: mode 0600 from the first moment it is
//! reachable, stale sockets replaced, live ones and other files left alone.
//!
//! The socket is bound inside a fresh private directory (mode 0700) next to
//! the wanted path, set to 0600 there, and then hard-linked into place
//! (`link` never replaces an existing file, so a socket that appears at the
//! path meanwhile is not stolen). No one else can reach it before it has
//! its final mode, and the process umask is never touched.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::ServerError;

/// The socket's mode.
pub const SOCKET_MODE: u32 = 0o600;

/// Identity of the socket file we created, to remove only that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> io::Result<FileId> {
        let m = fs::symlink_metadata(path)?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// What is at the socket path before we bind.
fn check_existing(path: &Path) -> Result<(), ServerError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("Replacing stale API socket {}", path.display());
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ServerError::RemoveStale {
                    path: path.to_owned(),
                    source,
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServerError::Inspect {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A private directory removed (with its contents) when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(parent: &Path) -> Result<PrivateDir, ServerError> {
        let pid = std::process::id();
        let mut last = None;
        for attempt in 0..100u32 {
            let dir = parent.join(format!(".snp-api.{pid}.{attempt}"));
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(PrivateDir(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => return Err(ServerError::Bind { path: dir, source }),
            }
        }
        let source = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
        Err(ServerError::Bind {
            path: parent.to_owned(),
            source,
        })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("Cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Binds the API socket at `path` with mode 0600.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, FileId), ServerError> {
    check_existing(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = PrivateDir::create(parent)?;
    let temp = dir.0.join("s");
    let listener = UnixListener::bind(&temp).map_err(|source| ServerError::Bind {
        path: temp.clone(),
        source,
    })?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(SOCKET_MODE)).map_err(|source| {
        ServerError::Bind {
            path: temp.clone(),
            source,
        }
    })?;
    match fs::hard_link(&temp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Someone put something there after our check.
            check_existing(path)?;
            fs::hard_link(&temp, path).map_err(|source| ServerError::Bind {
                path: path.to_owned(),
                source,
            })?;
        }
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_owned(),
                source,
            });
        }
    }
    let id = FileId::of(path).map_err(|source| ServerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    Ok((listener, id))
}

/// Removes the socket at `path` if it is still the one we created.
pub(crate) fn remove(path: &Path, id: FileId) {
    match FileId::of(path) {
        Ok(current) if current == id => {
            if let Err(e) = fs::remove_file(path) {
                log::warn!("Cannot remove API socket {}: {e}", path.display());
            }
        }
        Ok(_) => log::warn!("API socket {} was replaced; leaving it", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("Cannot inspect API socket {}: {e}", path.display()),
    }
}
