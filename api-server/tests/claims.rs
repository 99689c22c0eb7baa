//! Documented properties of the server that need a test of their own: the
//! socket never exists with another mode than 0600, and at most
//! `MAX_BLOCKING_THREADS` (4) requests are inside the VMM at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::fake_vmm as common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_server::ApiServer;
use common::Gate;
use vmm_api::{ApiError, VmmAction, VmmApi, VmmData};

/// Polls `cond` (yielding) until it holds, failing after 20 s.
fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[test]
fn the_socket_never_exists_with_another_mode_than_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let vmm = Arc::new(common::FakeVmm::default());
    for round in 0..200 {
        let started = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let path = path.clone();
            let started = Arc::clone(&started);
            move || {
                let mut modes = Vec::new();
                let mut seen = 0u64;
                loop {
                    let done = started.load(Ordering::Acquire);
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        seen += 1;
                        let mode = m.permissions().mode() & 0o7777;
                        if mode != 0o600 {
                            modes.push(mode);
                        }
                    }
                    if done {
                        return (modes, seen);
                    }
                }
            }
        });
        let server = ApiServer::start(&path, vmm.clone()).unwrap();
        started.store(true, Ordering::Release);
        let (modes, seen) = watcher.join().unwrap();
        assert!(seen > 0, "round {round}: the watcher never saw the socket");
        assert!(
            modes.is_empty(),
            "round {round}: the socket existed with modes {modes:?} (octal: 0o600 is 384)"
        );
        server.shutdown();
        assert!(!path.exists());
    }
}

/// A VMM whose every call waits at a gate, counting the calls inside.
#[derive(Default)]
struct CountingVmm {
    gate: Gate,
    inside: AtomicUsize,
    most: AtomicUsize,
    calls: Mutex<Vec<VmmAction>>,
}

impl VmmApi for CountingVmm {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ApiError> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.calls.lock().unwrap().push(action);
        self.gate.pass();
        self.inside.fetch_sub(1, Ordering::SeqCst);
        Ok(VmmData::Empty)
    }
}

/// Bytes written on `stream` that its peer has not read yet.
fn unread(stream: &UnixStream) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ on a socket stores an int through the pointer,
    // which points to a live c_int; the descriptor is open.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    n
}

#[test]
fn at_most_four_requests_are_inside_the_vmm_at_once() {
    const REQUESTS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let vmm = Arc::new(CountingVmm::default());
    vmm.gate.close();
    let server = ApiServer::start(&path, vmm.clone()).unwrap();
    let mut streams: Vec<UnixStream> = (0..REQUESTS)
        .map(|_| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(
                b"PUT /api/v1/vm.shutdown HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
            )
            .unwrap();
            s
        })
        .collect();
    poll_until("four calls are inside the VMM", || {
        vmm.inside.load(Ordering::SeqCst) == 4
    });
    // The server has read every request: the other four wait for a
    // thread, they are not inside.
    poll_until("the server has read every request", || {
        streams.iter().all(|s| unread(s) == 0)
    });
    assert_eq!(vmm.inside.load(Ordering::SeqCst), 4);
    vmm.gate.open();
    for s in &mut streams {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0; 512];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert_ne!(n, 0, "connection closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 204"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Every call got in eventually, never more than four at a time.
    assert_eq!(vmm.calls.lock().unwrap().len(), REQUESTS);
    assert_eq!(vmm.most.load(Ordering::SeqCst), 4);
    server.shutdown();
}
