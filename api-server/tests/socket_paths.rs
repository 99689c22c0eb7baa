//! Where the API socket can live: long paths up to the `sun_path` limit,
//! errors that name the user's path, and inherited listening sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::fake_vmm as common;

use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use api_server::server::ServerError;
use api_server::server::socket::MAX_SOCKET_PATH;
use api_server::{ApiClient, ApiServer};
use common::FakeVmm;

/// A path of exactly `length` bytes inside `dir`.
fn path_of_length(dir: &Path, length: usize) -> PathBuf {
    let base = dir.join("s");
    let pad = length - base.as_os_str().len();
    dir.join(format!("{}s", "x".repeat(pad)))
}

#[test]
fn paths_up_to_the_limit_work() {
    let dir = tempfile::tempdir().unwrap();
    // The private directory added to these would overflow sun_path.
    for length in [100, 104, MAX_SOCKET_PATH] {
        let path = path_of_length(dir.path(), length);
        assert_eq!(path.as_os_str().len(), length);
        let server = ApiServer::start(&path, Arc::new(FakeVmm::default()))
            .unwrap_or_else(|e| panic!("{length} bytes: {e}"));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            ApiClient::new(&path).unwrap().ping().unwrap().hypervisor,
            "mock"
        );
        server.shutdown();
        assert!(!path.exists(), "{length} bytes: socket left behind");
    }
    // Nothing else is left in the directory (no private directory).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn too_long_a_path_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of_length(dir.path(), MAX_SOCKET_PATH + 1);
    let err = ApiServer::start(&path, Arc::new(FakeVmm::default())).unwrap_err();
    assert!(
        matches!(&err, ServerError::PathTooLong { path: p, length } if p == &path && *length == 108),
        "{err:?}"
    );
}

#[test]
fn errors_name_the_path_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/api.sock");
    let err = ApiServer::start(&path, Arc::new(FakeVmm::default())).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("Cannot create API socket {}", path.display())
    );
    assert!(
        !format!("{err:?}").contains(".snp-api."),
        "names the private directory: {err:?}"
    );
}

#[test]
fn an_inherited_listening_socket_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.into_raw_fd();
    let server = ApiServer::start_on_fd(fd, Arc::new(FakeVmm::default())).unwrap();
    assert_eq!(server.path(), None);
    // SAFETY: F_GETFD on an open descriptor owned by the server.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_ne!(flags & libc::FD_CLOEXEC, 0, "not close-on-exec");
    assert_eq!(
        ApiClient::new(&path).unwrap().ping().unwrap().hypervisor,
        "mock"
    );
    server.shutdown();
    // The socket file belongs to whoever made it.
    assert!(path.exists());
}

#[test]
fn other_descriptors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |fd: i32, why: &str| {
        let err = ApiServer::start_on_fd(fd, Arc::new(FakeVmm::default())).unwrap_err();
        assert!(
            matches!(&err, ServerError::InheritedFd { fd: f, reason } if *f == fd && reason.contains(why)),
            "fd {fd}: {err:?}"
        );
    };
    let file = std::fs::File::create(dir.path().join("plain")).unwrap();
    refused(file.as_raw_fd(), "not a socket");
    let datagram = UnixDatagram::unbound().unwrap();
    refused(datagram.as_raw_fd(), "not a stream socket");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    refused(tcp.as_raw_fd(), "not a Unix domain socket");
    let (unconnected, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    refused(unconnected.as_raw_fd(), "not listening");
    refused(9999, "not open");
    refused(-1, "not open");
}
