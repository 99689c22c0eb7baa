//! The monitor (owner of the writer thread) and its senders.

use std::convert::Infallible;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::{ConfigError, EventMonitorConfig, EventTarget, validate_capacity};
use crate::counters::Shared;
use crate::writer::{Msg, Output, Writer};
use crate::{Event, EventFormat, Properties};

/// How long [`EventMonitor::shutdown`] (and dropping the monitor) waits for
/// queued events to be written.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the event monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The output file cannot be opened.
    #[error("Cannot open event monitor file {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What open(2) said.
        source: io::Error,
    },
    /// The output path is a FIFO that no process has open for reading.
    #[error("Event monitor FIFO {} has no reader; start its consumer first", path.display())]
    NoReader {
        /// The FIFO.
        path: PathBuf,
    },
    /// The fd is not an open file descriptor. It was left alone.
    #[error("Event monitor fd {fd} is not an open file descriptor")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// What fcntl(2) said.
        source: io::Error,
    },
    /// The fd is open for reading only. It was left alone.
    #[error("Event monitor fd {fd} is not open for writing")]
    NotWritable {
        /// The descriptor.
        fd: RawFd,
    },
    /// The writer thread cannot be started (the output has been closed).
    #[error("Cannot start the event monitor thread")]
    Spawn(#[source] io::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Inner {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

/// What [`EventMonitor::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events accepted by the output over the monitor's life.
    pub written: u64,
    /// Events dropped over the monitor's life (full queue, failed writes,
    /// events sent after shutdown began).
    pub dropped: u64,
    /// Whether the writer finished within the timeout. If not (the output is
    /// stuck, e.g. a pipe nobody reads), the writer thread is left to finish on
    /// its own and still owns the output; counters may still change.
    pub complete: bool,
}

/// The running event monitor: owns the writer thread and the output.
///
/// Dropping it shuts it down as [`EventMonitor::shutdown`] does.
pub struct EventMonitor {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the writer thread ends.
    done: mpsc::Receiver<Infallible>,
}

impl EventMonitor {
    /// Opens the configured output and starts the writer thread.
    ///
    /// For [`EventTarget::Fd`] the descriptor is first checked to be open and
    /// writable ([`Error::BadFd`], [`Error::NotWritable`]; it is then left
    /// alone). Past those checks the monitor owns it: it sets close-on-exec on
    /// it and closes it when the writer stops, or at once if starting fails.
    /// Starting twice with the same `fd=N` is a bug (a double close).
    pub fn start(config: &EventMonitorConfig) -> Result<(EventMonitor, EventSender)> {
        config.validate()?;
        let file = match &config.target {
            EventTarget::Path(path) => open_path(path)?,
            EventTarget::Fd(fd) => take_fd(*fd)?,
        };
        Self::spawn(Output::File(file), config.capacity, config.format)
    }

    /// Starts a monitor that writes to `writer` instead of a file, for
    /// embedding and tests. The monitor batches by itself, so `writer` should
    /// not buffer; it is flushed after each batch.
    pub fn start_with_writer(
        writer: impl Write + Send + 'static,
        capacity: usize,
    ) -> Result<(EventMonitor, EventSender)> {
        Self::start_with_writer_in(writer, capacity, EventFormat::default())
    }

    /// [`EventMonitor::start_with_writer`] writing in `format`.
    pub fn start_with_writer_in(
        writer: impl Write + Send + 'static,
        capacity: usize,
        format: EventFormat,
    ) -> Result<(EventMonitor, EventSender)> {
        validate_capacity(capacity)?;
        Self::spawn(Output::Writer(Box::new(writer)), capacity, format)
    }

    fn spawn(
        output: Output,
        capacity: usize,
        format: EventFormat,
    ) -> Result<(EventMonitor, EventSender)> {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            closing: AtomicBool::new(false),
            written: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_io: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel(capacity);
        let (done_tx, done) = mpsc::channel::<Infallible>();
        let writer = Writer::new(output, Arc::clone(&shared), format);
        let thread = thread::Builder::new()
            .name("event-monitor".into())
            .spawn(move || {
                let _done = done_tx;
                writer.run(rx);
            })
            .map_err(Error::Spawn)?;
        let inner = Arc::new(Inner { tx, shared });
        let sender = EventSender {
            inner: Some(Arc::clone(&inner)),
        };
        Ok((
            EventMonitor {
                inner,
                thread: Some(thread),
                done,
            },
            sender,
        ))
    }

    /// Another sender for this monitor.
    pub fn sender(&self) -> EventSender {
        EventSender {
            inner: Some(Arc::clone(&self.inner)),
        }
    }

    /// Events accepted by the output so far.
    pub fn written(&self) -> u64 {
        self.inner.shared.written()
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped()
    }

    /// Stops accepting events, writes what is queued and stops the writer,
    /// waiting at most [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub fn shutdown(self) -> ShutdownReport {
        self.shutdown_timeout(DEFAULT_SHUTDOWN_TIMEOUT)
    }

    /// As [`EventMonitor::shutdown`], waiting at most `timeout`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> ShutdownReport {
        self.finish(timeout)
    }

    fn finish(&mut self, timeout: Duration) -> ShutdownReport {
        let complete = match self.thread.take() {
            None => true,
            Some(thread) => self.stop_writer(thread, timeout),
        };
        ShutdownReport {
            written: self.written(),
            dropped: self.dropped(),
            complete,
        }
    }

    fn stop_writer(&self, thread: JoinHandle<()>, timeout: Duration) -> bool {
        self.inner.shared.closing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            // Wake a writer idle on an empty queue. If the queue is full the
            // writer is busy and sees the flag after draining; the wake is
            // retried on each tick anyway, so no interleaving is missed.
            let _ = self.inner.tx.try_send(Msg::Wake);
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(never) => match never {},
                Err(RecvTimeoutError::Disconnected) => {
                    if thread.join().is_err() {
                        log::error!("event monitor: the writer thread panicked");
                    }
                    return true;
                }
                Err(RecvTimeoutError::Timeout) if left.is_zero() => {
                    log::warn!(
                        "event monitor: output stuck after {timeout:?}; \
                         queued events may stay unwritten"
                    );
                    return false;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl Drop for EventMonitor {
    fn drop(&mut self) {
        self.finish(DEFAULT_SHUTDOWN_TIMEOUT);
    }
}

impl fmt::Debug for EventMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventMonitor")
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .field("running", &self.thread.is_some())
            .finish()
    }
}

/// Opens `path` for appending without ever blocking (see the crate docs):
/// on a FIFO without a reader, `open(2)` fails with `ENXIO` at once.
fn open_path(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ENXIO) {
                Error::NoReader {
                    path: path.to_owned(),
                }
            } else {
                Error::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        })
}

/// Validates `fd` and takes ownership of it.
fn take_fd(fd: RawFd) -> Result<File> {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is safe to
    // pass and a closed one yields EBADF.
    let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fd_flags < 0 {
        return Err(Error::BadFd {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: as above, F_GETFL only reads the open file status flags.
    let status = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if status < 0 {
        return Err(Error::BadFd {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    if !matches!(status & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR) {
        return Err(Error::NotWritable { fd });
    }
    // SAFETY: fcntl(F_GETFD) showed that `fd` is open, and by the documented
    // contract of `fd=N` the process that configured it hands it over to the
    // monitor: nothing else in this process owns, uses or closes it from now on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Keep it out of child processes. Failure only risks a leak into a child.
    // SAFETY: F_SETFD sets the flags of the descriptor we now own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, fd_flags | libc::FD_CLOEXEC) } < 0 {
        log::debug!("event monitor: cannot set FD_CLOEXEC on fd {fd}");
    }
    Ok(File::from(owned))
}

/// A cheap, cloneable handle that reports events to the monitor.
///
/// Use [`EventSender::disabled`] (also its [`Default`]) when no monitor is
/// configured: it ignores events at the cost of one branch.
#[derive(Clone, Default)]
pub struct EventSender {
    inner: Option<Arc<Inner>>,
}

impl EventSender {
    /// A sender that ignores every event (no monitor configured).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Whether events go anywhere; callers may skip building costly properties.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Reports an event. Never blocks and never does I/O: if the queue is full
    /// or the monitor is shutting down, the event is dropped and counted.
    ///
    /// ```
    /// # let events = event_monitor::EventSender::disabled();
    /// use serde_json::json;
    /// events.event("snp-certs", "busy", [("vcpu", json!(1)), ("waited_us", json!(100_000))]);
    /// events.event("vm", "booted", []);
    /// ```
    pub fn event<'a>(
        &self,
        source: &str,
        event: &str,
        properties: impl IntoIterator<Item = (&'a str, Value)>,
    ) {
        if self.is_enabled() {
            let properties = properties
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            self.event_with(source, event, properties);
        }
    }

    /// As [`EventSender::event`], with properties already in a map.
    pub fn event_with(&self, source: &str, event: &str, properties: Properties) {
        let Some(inner) = &self.inner else { return };
        let shared = &inner.shared;
        if shared.closing.load(Ordering::Relaxed) {
            shared.dropped_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let event = Event {
            timestamp: shared.start.elapsed(),
            source: source.to_owned(),
            event: event.to_owned(),
            properties,
        };
        if inner.tx.try_send(Msg::Event(event)).is_err() {
            shared.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped so far (0 for a disabled sender).
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.shared.dropped())
    }

    /// Events accepted by the output so far (0 for a disabled sender).
    pub fn written(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.shared.written())
    }
}

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSender")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

#[cfg(test)]
mod fd_tests;
#[cfg(test)]
mod fifo_tests;
#[cfg(test)]
mod tests;
