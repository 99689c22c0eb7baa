//! Tests with a file or an in-memory writer as the output.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

/// Polls `cond` until it holds or `secs` pass; returns whether it held.
pub(super) fn wait_until(secs: u64, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    cond()
}

fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub(super) fn parse(line: &str) -> Event {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// `format=cloud-hypervisor`: the file reads as Cloud Hypervisor's tests
/// read CH's event file (split at blank lines), string property values.
#[test]
fn cloud_hypervisor_format_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ev.json");
    let config: EventMonitorConfig = format!("path={},format=cloud-hypervisor", path.display())
        .parse()
        .unwrap();
    let (monitor, events) = EventMonitor::start(&config).unwrap();
    events.event("vm", "booted", [("vcpus", json!(2))]);
    events.event("vmm", "stopped", []);
    assert_eq!(monitor.shutdown().written, 2);
    let text = fs::read_to_string(&path).unwrap();
    let events: Vec<Value> = text
        .trim()
        .split("\n\n")
        .map(|piece| serde_json::from_str(piece).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["event"], "booted");
    assert_eq!(events[0]["properties"], json!({"vcpus": "2"}));
    assert_eq!(events[1]["properties"], Value::Null);
    assert!(events[1]["timestamp"]["nanos"].is_u64());
}

#[test]
fn lines_parse_back_with_exact_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ev.jsonl");
    let (monitor, events) = EventMonitor::start(&EventMonitorConfig::path(&path)).unwrap();
    events.event(
        "snp-certs",
        "delivered",
        [
            ("npages", json!(4)),
            ("cached", json!(true)),
            ("file", json!("/etc/certs")),
        ],
    );
    events.event("vm", "booted", []);
    let report = monitor.shutdown();
    assert_eq!(
        report,
        ShutdownReport {
            written: 2,
            dropped: 0,
            complete: true
        }
    );

    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);
    assert!(
        !lines[0].contains(": ") && !lines[0].contains(", "),
        "not compact: {}",
        lines[0]
    );
    let value: Value = serde_json::from_str(&lines[0]).unwrap();
    let object = value.as_object().unwrap();
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["event", "properties", "source", "timestamp"]);
    let timestamp = object["timestamp"].as_object().unwrap();
    assert_eq!(timestamp.len(), 2);
    assert!(timestamp["secs"].as_u64().unwrap() < 600);
    assert!(timestamp["nanos"].as_u64().unwrap() < 1_000_000_000);
    assert_eq!(object["source"], "snp-certs");
    assert_eq!(object["event"], "delivered");
    assert_eq!(
        object["properties"],
        json!({"npages": 4, "cached": true, "file": "/etc/certs"})
    );

    let second = parse(&lines[1]);
    assert_eq!(
        (second.source.as_str(), second.event.as_str()),
        ("vm", "booted")
    );
    assert!(second.properties.is_empty());
    assert!(lines[1].contains(r#""properties":{}"#));
}

#[test]
fn ordering_preserved_and_shutdown_flushes_everything_queued() {
    const COUNT: u64 = 5000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ev.jsonl");
    let config = EventMonitorConfig::path(&path).with_capacity(COUNT as usize);
    let (monitor, events) = EventMonitor::start(&config).unwrap();
    for seq in 0..COUNT {
        events.event("test", "seq", [("seq", json!(seq))]);
    }
    // Shut down at once: whatever is still queued must be written.
    let report = monitor.shutdown();
    assert_eq!(
        report,
        ShutdownReport {
            written: COUNT,
            dropped: 0,
            complete: true
        }
    );

    let lines = read_lines(&path);
    assert_eq!(lines.len() as u64, COUNT);
    let mut last = Duration::ZERO;
    for (expected, line) in (0..COUNT).zip(&lines) {
        let event = parse(line);
        assert_eq!(event.properties["seq"], json!(expected));
        assert!(
            event.timestamp >= last,
            "timestamps go backwards at {expected}"
        );
        last = event.timestamp;
    }
}

#[test]
fn per_thread_ordering_preserved_across_senders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ev.jsonl");
    let (monitor, events) = EventMonitor::start(&EventMonitorConfig::path(&path)).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|vcpu| {
            let events = events.clone();
            thread::spawn(move || {
                for seq in 0..1000 {
                    events.event("vcpu", "step", [("vcpu", json!(vcpu)), ("seq", json!(seq))]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let report = monitor.shutdown();
    assert_eq!(report.written, 2000);
    let mut next = [0u64; 2];
    for line in read_lines(&path) {
        let event = parse(&line);
        let vcpu = event.properties["vcpu"].as_u64().unwrap() as usize;
        assert_eq!(event.properties["seq"], json!(next[vcpu]));
        next[vcpu] += 1;
    }
    assert_eq!(next, [1000, 1000]);
}

#[test]
fn events_reach_the_file_before_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ev.jsonl");
    fs::write(&path, "{\"earlier\":1}\n").unwrap();
    let (monitor, events) = EventMonitor::start(&EventMonitorConfig::path(&path)).unwrap();
    events.event("vm", "booted", [("vcpus", json!(2))]);
    // A reader tailing the file sees the event while the monitor still runs.
    assert!(
        wait_until(10, || read_lines(&path).len() == 2),
        "event not flushed"
    );
    let lines = read_lines(&path);
    assert_eq!(
        lines[0], "{\"earlier\":1}",
        "existing content must be kept (append)"
    );
    assert_eq!(parse(&lines[1]).properties["vcpus"], json!(2));
    assert_eq!(events.written(), 1);
    drop(monitor);
}

#[test]
fn drop_without_shutdown_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ev.jsonl");
    let (monitor, events) = EventMonitor::start(&EventMonitorConfig::path(&path)).unwrap();
    for seq in 0..100 {
        events.event("test", "seq", [("seq", json!(seq))]);
    }
    drop(monitor);
    assert_eq!(read_lines(&path).len(), 100);
    assert_eq!(events.written(), 100);
}

#[test]
fn bad_paths_and_capacities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/ev.jsonl");
    let err = EventMonitor::start(&EventMonitorConfig::path(&missing)).unwrap_err();
    assert!(
        matches!(&err, Error::Open { path, .. } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().contains("no/such/dir"));

    let err = EventMonitor::start_with_writer(io::sink(), 0).unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::InvalidCapacity(_))),
        "{err}"
    );
    let zero = EventMonitorConfig::path(dir.path().join("ev")).with_capacity(0);
    assert!(matches!(EventMonitor::start(&zero), Err(Error::Config(_))));
}

#[test]
fn disabled_sender_is_a_no_op() {
    let events = EventSender::disabled();
    assert!(!events.is_enabled());
    assert!(!EventSender::default().is_enabled());
    events.event("vm", "booted", [("x", json!(1))]);
    assert_eq!((events.dropped(), events.written()), (0, 0));
    assert_eq!(format!("{events:?}"), "EventSender { enabled: false }");
}

/// Accepts 10 bytes, then fails once with ENOSPC, then accepts everything.
struct FlakyWriter {
    out: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl Write for FlakyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut state = self.out.lock().unwrap();
        state.1 += 1;
        let n = match state.1 {
            1 => data.len().min(10),
            2 => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => data.len(),
        };
        state.0.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn failed_write_is_counted_and_a_torn_line_is_terminated() {
    let out = Arc::new(Mutex::new((Vec::new(), 0)));
    let writer = FlakyWriter {
        out: Arc::clone(&out),
    };
    let (monitor, events) = EventMonitor::start_with_writer(writer, 16).unwrap();
    events.event("test", "lost", []);
    assert!(
        wait_until(10, || events.dropped() == 1),
        "first batch not failed"
    );
    assert_eq!(events.written(), 0);
    events.event("test", "kept", [("n", json!(1))]);
    events.event("test", "kept", [("n", json!(2))]);
    let report = monitor.shutdown();
    assert_eq!(
        report,
        ShutdownReport {
            written: 2,
            dropped: 1,
            complete: true
        }
    );

    let bytes = out.lock().unwrap().0.clone();
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text:?}");
    assert_eq!(
        lines[0], r#"{"timestam"#,
        "the torn line ends where the write stopped"
    );
    assert_eq!(parse(lines[1]).properties["n"], json!(1));
    assert_eq!(parse(lines[2]).properties["n"], json!(2));
}

#[test]
fn event_with_takes_a_map() {
    let out = Arc::new(Mutex::new((Vec::new(), 2))); // past its failures
    let (monitor, events) = EventMonitor::start_with_writer(
        FlakyWriter {
            out: Arc::clone(&out),
        },
        4,
    )
    .unwrap();
    let mut properties = crate::Properties::new();
    properties.insert("certs_timeout".into(), json!(100));
    events.event_with("api", "config-changed", properties.clone());
    assert_eq!(monitor.shutdown().written, 1);
    let text = String::from_utf8(out.lock().unwrap().0.clone()).unwrap();
    assert_eq!(parse(text.trim_end()).properties, properties);
}
