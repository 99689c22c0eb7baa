//! The writer thread: drains the queue, serialises events, writes batches.
//!
//! Batching is done here rather than with a `BufWriter` so that the monitor
//! knows exactly which events reached the output when a write fails: each
//! event's end offset in the batch is kept, and after a failed write the
//! events wholly written are counted as written and the rest as dropped. An
//! event cut short by a failed write is ended with the format's terminator
//! (a newline, or a blank line in Cloud Hypervisor's format) before the
//! next batch, so a reader loses that one event and stays in step.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use crate::counters::Shared;
use crate::{Event, EventFormat};

/// A batch is written once it holds this many bytes, even if more events wait.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// What travels on the queue.
pub(crate) enum Msg {
    /// An event to write.
    Event(Event),
    /// Wakes the writer so that it notices shutdown.
    Wake,
}

/// Where the writer thread writes.
pub(crate) enum Output {
    /// A file or file descriptor; `WouldBlock` is waited out with `poll`.
    File(File),
    /// Any writer (for embedding and tests); it should not buffer.
    Writer(Box<dyn Write + Send>),
}

impl Output {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Output::File(file) => loop {
                match file.write(data) {
                    // A descriptor inherited in non-blocking mode: wait for room
                    // rather than changing flags shared with other processes.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable(file)?,
                    result => return result,
                }
            },
            Output::Writer(writer) => writer.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::File(_) => Ok(()),
            Output::Writer(writer) => writer.flush(),
        }
    }
}

fn wait_writable(file: &File) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pollfd` is a valid, exclusively borrowed array of one pollfd for
    // the whole call, as poll(2) requires; the fd stays open (we own `file`).
    let rc = unsafe { libc::poll(&mut pollfd, 1, -1) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// Blocks SIGPIPE in the calling (writer) thread, so that writing to a pipe
/// whose reader is gone fails with EPIPE even in a host program that has not
/// ignored SIGPIPE (Rust binaries ignore it; C hosts may not).
fn block_sigpipe() {
    // SAFETY: `set` is a plain-data sigset_t that sigemptyset initialises before
    // use; pthread_sigmask only changes this thread's signal mask and accepts a
    // null pointer for the old mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        log::debug!("event monitor: cannot block SIGPIPE: error {rc}");
    }
}

/// Writes `data` fully; returns how many bytes were written and the outcome.
fn write_out(out: &mut Output, data: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < data.len() {
        match out.write(&data[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, out.flush())
}

/// State of the writer thread.
pub(crate) struct Writer {
    out: Output,
    shared: Arc<Shared>,
    format: EventFormat,
    /// Serialised lines not yet written.
    buf: Vec<u8>,
    /// End offset in `buf` of each line.
    ends: Vec<usize>,
    /// The output ends in the middle of a line.
    torn: bool,
    /// The last write failed (a warning was logged).
    failing: bool,
    /// A warning about a full queue was logged.
    warned_full: bool,
}

impl Writer {
    pub(crate) fn new(out: Output, shared: Arc<Shared>, format: EventFormat) -> Self {
        Self {
            out,
            shared,
            format,
            buf: Vec::with_capacity(BATCH_BYTES + 1024),
            ends: Vec::new(),
            torn: false,
            failing: false,
            warned_full: false,
        }
    }

    /// Runs until shutdown is requested and the queue is drained, or until
    /// every sender is gone.
    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        block_sigpipe();
        while let Ok(msg) = rx.recv() {
            self.push(msg);
            while let Ok(msg) = rx.try_recv() {
                self.push(msg);
            }
            self.flush();
            if self.shared.closing.load(Ordering::SeqCst) {
                // Events that raced with the flag: write them too.
                while let Ok(msg) = rx.try_recv() {
                    self.push(msg);
                }
                self.flush();
                break;
            }
        }
        self.flush();
    }

    fn push(&mut self, msg: Msg) {
        let Msg::Event(event) = msg else { return };
        let start = self.buf.len();
        match self.format.write(&event, &mut self.buf) {
            Ok(()) => self.ends.push(self.buf.len()),
            Err(e) => {
                // Cannot happen for this type (string keys only); count it anyway.
                self.buf.truncate(start);
                self.shared.dropped_io.fetch_add(1, Ordering::Relaxed);
                log::warn!("event monitor: cannot serialise an event: {e}");
            }
        }
        if self.buf.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Writes the batch and accounts for every event in it.
    fn flush(&mut self) {
        if self.ends.is_empty() {
            return;
        }
        let (done, result) = if self.torn {
            match write_out(&mut self.out, self.format.terminator()) {
                (_, Ok(())) => {
                    self.torn = false;
                    write_out(&mut self.out, &self.buf)
                }
                (_, Err(e)) => (0, Err(e)),
            }
        } else {
            write_out(&mut self.out, &self.buf)
        };
        let written = self.ends.iter().take_while(|&&end| end <= done).count();
        let lost = self.ends.len() - written;
        self.shared
            .written
            .fetch_add(written as u64, Ordering::Relaxed);
        self.shared
            .dropped_io
            .fetch_add(lost as u64, Ordering::Relaxed);
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                log::info!("event monitor: writing events again");
            }
            Ok(()) => {}
            Err(e) => {
                if done > 0 && !self.buf[..done].ends_with(self.format.terminator()) {
                    self.torn = true;
                }
                if !self.failing {
                    self.failing = true;
                    log::warn!(
                        "event monitor: cannot write events ({e}); \
                         dropping them until the output accepts writes again"
                    );
                }
            }
        }
        self.buf.clear();
        self.ends.clear();
        if !self.warned_full && self.shared.dropped_full.load(Ordering::Relaxed) > 0 {
            self.warned_full = true;
            log::warn!("event monitor: event queue full; dropping events (see dropped count)");
        }
    }
}
