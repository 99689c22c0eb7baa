//! The system-call floor the serve benches compare against: raw `open`,
//! whole-file OFD locks (`fcntl(F_OFD_SETLK[W])`), `pread` and `close`,
//! with no library in between, plus the process's CPU time.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;

/// One whole-file OFD lock call: `kind` is `F_RDLCK`, `F_WRLCK` or
/// `F_UNLCK`, `cmd` is `F_OFD_SETLK` (try) or `F_OFD_SETLKW` (wait).
pub fn ofd_lock<F: AsRawFd + ?Sized>(
    fd: &F,
    kind: libc::c_int,
    cmd: libc::c_int,
) -> io::Result<()> {
    // SAFETY: all-zero is a valid `flock` (whole file, l_pid 0 as OFD
    // locks require); the type and whence are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the descriptor is open for the duration of the call (the
    // caller owns it); `fl` is initialised and outlives the call.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &fl) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// [`ofd_lock`] with `F_OFD_SETLK` where nothing conflicts; panics on error.
pub fn ofd_set(fd: libc::c_int, kind: libc::c_int) {
    if let Err(e) = ofd_lock(&fd, kind, libc::F_OFD_SETLK) {
        panic!("fcntl: {e}");
    }
}

/// Raw `open(path, O_RDONLY | O_CLOEXEC)`; panics on error.
pub fn open_raw(path: &CString) -> libc::c_int {
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open: {}", io::Error::last_os_error());
    fd
}

/// Raw `close` of a descriptor from [`open_raw`].
pub fn close_raw(fd: libc::c_int) {
    // SAFETY: `fd` was opened by `open_raw` and is closed exactly once.
    unsafe { libc::close(fd) };
}

/// One `pread` from offset 0 into `buf`; returns the bytes read.
pub fn pread_raw(fd: libc::c_int, buf: &mut [u8]) -> usize {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes and outlives
    // the call; `fd` is open.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n >= 0, "pread: {}", io::Error::last_os_error());
    n as usize
}

/// The floor of one request: open, shared lock, read, unlock, close.
pub fn floor_open(path: &CString, buf: &mut [u8]) -> usize {
    let fd = open_raw(path);
    ofd_set(fd, libc::F_RDLCK);
    let n = pread_raw(fd, buf);
    ofd_set(fd, libc::F_UNLCK);
    close_raw(fd);
    n
}

/// User + system CPU of this process so far, ns.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: all-zero is a valid `rusage`; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable for the duration of the call.
    let ret = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(ret, 0, "getrusage: {}", io::Error::last_os_error());
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
