//! A JSON-lines event stream for the VMM (`--event-monitor path=FILE|fd=N`).
//!
//! The VMM reports every certificate request outcome, configuration change,
//! lock wait and VM lifecycle step as one event, in the envelope of Cloud
//! Hypervisor's event monitor (`timestamp`, `source`, `event`,
//! `properties`). Events go to a file or to a file descriptor handed over
//! by a management process, by default one compact JSON object per line
//! (with `format=cloud-hypervisor`, exactly as Cloud Hypervisor writes
//! them: see [`EventFormat`] for the two side by side):
//!
//! ```text
//! {"timestamp":{"secs":12,"nanos":345678},"source":"snp-certs","event":"delivered","properties":{"npages":4,"vcpu":0}}
//! ```
//!
//! * `timestamp`: the time since the monitor was started (as Cloud
//!   Hypervisor's event monitor does), taken when [`EventSender::event`] was
//!   called, as whole seconds plus nanoseconds (`0..1_000_000_000`). Integers
//!   rather than a float, so no precision is lost and lines compare exactly.
//!   Timestamps are monotonic (they come from [`std::time::Instant`]).
//! * `source`: the component that reports, such as `"snp-certs"` or `"vm"`.
//! * `event`: what happened, such as `"delivered"` or `"busy"`.
//! * `properties`: an object whose values are any JSON values (numbers,
//!   booleans, strings, …). It is always present, possibly empty. Keys are
//!   unique (the last value given for a key wins).
//!
//! Each line ends with `\n` and contains no other newline. [`Event`] is the
//! same record as a Rust type, so readers can parse a line with
//! `serde_json::from_str::<Event>(line)`.
//!
//! # The non-blocking guarantee
//!
//! vCPU threads report events on their hot path, so [`EventSender::event`]
//! never blocks and never does I/O: it timestamps the event and puts it on a
//! bounded queue (capacity [`DEFAULT_CAPACITY`] unless configured) with a
//! non-blocking send. A dedicated writer thread serialises queued events,
//! writes them in batches and hands the batch to the kernel as soon as the
//! queue is drained, so a reader tailing the output sees events promptly.
//!
//! When the queue is full (a slow or stuck consumer) the event is dropped and
//! counted. When writing fails (a closed pipe, a full disk) the events of the
//! failed batch are counted as dropped, a warning is logged once per episode of
//! failures, and the writer keeps draining the queue so senders never stall.
//! [`EventSender::dropped`] and [`EventSender::written`] expose the counters;
//! once the queue is drained, every event sent is counted in exactly one.
//!
//! Starting never blocks either: `path=` is opened non-blocking
//! (`O_NONBLOCK | O_NOCTTY`). A regular file is created or appended to. A
//! FIFO must already have a reader (the consumer starts first): a FIFO
//! nobody has open for reading is refused at once with
//! [`Error::NoReader`] instead of hanging start-up in `open(2)` until one
//! comes. A FIFO with a reader is written like a pipe (a full pipe holds up
//! the writer thread, never a sender).
//!
//! # Example
//!
//! ```
//! use event_monitor::{EventMonitor, EventMonitorConfig};
//! use serde_json::json;
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("events.jsonl");
//! let config: EventMonitorConfig = format!("path={}", path.display()).parse()?;
//! let (monitor, events) = EventMonitor::start(&config)?;
//! events.event("snp-certs", "delivered", [("npages", json!(4)), ("cached", json!(true))]);
//! let report = monitor.shutdown();
//! assert_eq!((report.written, report.dropped), (1, 0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod counters;
mod format;
mod monitor;
mod writer;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::{ConfigError, DEFAULT_CAPACITY, EventMonitorConfig, EventTarget, MAX_CAPACITY};
pub use format::EventFormat;
pub use monitor::{
    DEFAULT_SHUTDOWN_TIMEOUT, Error, EventMonitor, EventSender, Result, ShutdownReport,
};

/// The properties of an event: a map from names to JSON values.
pub type Properties = serde_json::Map<String, serde_json::Value>;

/// One event, exactly as written on one line of the output.
///
/// Serialising it gives the line format described in the [crate
/// documentation](crate); deserialising it parses such a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Time since the monitor started, as `{"secs": u64, "nanos": u32}`.
    pub timestamp: Duration,
    /// The component that reported the event, such as `"snp-certs"`.
    pub source: String,
    /// What happened, such as `"delivered"`.
    pub event: String,
    /// Details of the event.
    #[serde(default)]
    pub properties: Properties,
}
