//! Creating the API socket: mode 0600 from the first moment it is
//! reachable, stale sockets replaced, live ones and other files left alone.
//!
//! The socket is bound inside a fresh private directory (mode 0700) next to
//! the wanted path, set to 0600 there, and then hard-linked into place
//! (`link` never replaces an existing file, so a socket that appears at the
//! path meanwhile is not stolen). No one else can reach it before it has
//! its final mode, and the process umask is never touched.
//!
//! The private directory makes the bind path longer than the wanted one,
//! and `bind` takes at most [`MAX_SOCKET_PATH`] bytes. When it would not
//! fit, the socket is bound through `/proc/self/fd/N/s`, N an open
//! descriptor of the private directory: the kernel resolves that to the
//! same place, in a path of about 20 bytes. So any path up to the limit
//! works, and errors name the path the user gave.
//!
//! [`listener_from_fd`] takes an inherited listening socket instead
//! (socket activation, `--api-socket fd=N`).

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::ServerError;

/// The socket's mode.
pub const SOCKET_MODE: u32 = 0o600;

/// Longest socket path in bytes: `sun_path` holds 108 with the final NUL.
pub const MAX_SOCKET_PATH: usize = 107;

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
    /// A new private directory in `parent`, for the socket at `path`
    /// (which errors name).
    fn create(parent: &Path, path: &Path) -> Result<PrivateDir, ServerError> {
        let pid = std::process::id();
        let mut last = None;
        for attempt in 0..100u32 {
            let dir = parent.join(format!(".snp-api.{pid}.{attempt}"));
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(PrivateDir(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => return Err(bind_error(path, source)),
            }
        }
        let source = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
        Err(bind_error(path, source))
    }
}

fn bind_error(path: &Path, source: io::Error) -> ServerError {
    ServerError::Bind {
        path: path.to_owned(),
        source,
    }
}

/// Binds a socket at `temp` in `dir`, through `/proc/self/fd` if `temp` is
/// too long for `bind` (the directory's descriptor is open while it binds).
fn bind_in(dir: &Path, temp: &Path) -> io::Result<UnixListener> {
    if temp.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixListener::bind(temp);
    }
    let handle = File::open(dir)?;
    let short = format!("/proc/self/fd/{}/s", handle.as_raw_fd());
    let listener = UnixListener::bind(&short);
    drop(handle);
    listener
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
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(ServerError::PathTooLong {
            path: path.to_owned(),
            length,
        });
    }
    check_existing(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = PrivateDir::create(parent, path)?;
    let temp = dir.0.join("s");
    let listener = bind_in(&dir.0, &temp).map_err(|source| bind_error(path, source))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|source| bind_error(path, source))?;
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

/// Takes the inherited descriptor `fd` as the API's listening socket
/// (socket activation). It must be a listening Unix stream socket; it is
/// made close-on-exec, so children do not inherit it.
pub fn listener_from_fd(fd: RawFd) -> Result<UnixListener, ServerError> {
    let fail = |reason: String| ServerError::InheritedFd { fd, reason };
    // SAFETY: F_GETFD on any integer is harmless; it only reports whether
    // the descriptor is open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fd < 0 || flags < 0 {
        return Err(fail(format!("not open: {}", io::Error::last_os_error())));
    }
    let option = |name: libc::c_int| -> Result<libc::c_int, ServerError> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and `len` is the
        // size of `value`; the kernel writes at most that much.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(fail(format!("not a socket: {e}")));
        }
        Ok(value)
    };
    if option(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(fail("not a Unix domain socket".to_owned()));
    }
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(fail("not a stream socket".to_owned()));
    }
    if option(libc::SO_ACCEPTCONN)? == 0 {
        return Err(fail("not listening".to_owned()));
    }
    // SAFETY: setting FD_CLOEXEC on an open descriptor has no
    // memory-safety preconditions.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(fail(format!(
            "cannot set close-on-exec: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to
    // this process for the API (`--api-socket fd=N`); nothing else in the
    // process owns it, so taking ownership cannot close it twice.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixListener::from(owned))
}
