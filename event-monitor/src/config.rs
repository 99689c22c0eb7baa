//! Where events go and how: `--event-monitor path=FILE|fd=N[,capacity=N][,format=F]`.

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use option_parser::{OptionError, Options};
use serde::{Deserialize, Serialize};

use crate::format::EventFormat;

/// Queue capacity (in events) used when none is configured.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Largest queue capacity accepted. The queue is allocated up front, so this
/// bounds its memory (about 100 MiB of slots at most).
pub const MAX_CAPACITY: usize = 1 << 20;

/// Why an event monitor option or configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The option value is empty.
    #[error("Empty event monitor option: expected path=FILE or fd=N")]
    Empty,
    /// A value without any `key=`, such as a bare path.
    #[error("Event monitor option {0:?} names no key: write path={0} for a file, or fd=N")]
    BarePath(String),
    /// The option string is malformed: an item without `=`, an unknown or
    /// repeated key, an unclosed quote.
    #[error("Invalid event monitor option")]
    Syntax(#[from] OptionError),
    /// Both `path` and `fd` given.
    #[error("Event monitor takes either path=FILE or fd=N, not both")]
    BothTargets,
    /// Neither `path` nor `fd` given.
    #[error("Event monitor needs an output: path=FILE or fd=N")]
    NoTarget,
    /// `path=` with nothing after it.
    #[error("Event monitor path is empty")]
    EmptyPath,
    /// `fd=` with something other than a non-negative 32-bit integer.
    #[error("Invalid event monitor fd {0:?}: expected a non-negative integer")]
    InvalidFd(String),
    /// `capacity=` with something other than an integer in `1..=MAX_CAPACITY`.
    #[error(
        "Invalid event monitor capacity {0:?}: expected an integer from 1 to {max}",
        max = MAX_CAPACITY
    )]
    InvalidCapacity(String),
    /// `format=` with an unknown format.
    #[error(
        "Invalid event monitor format {0:?}: expected {names}",
        names = EventFormat::NAMES.join(" or ")
    )]
    InvalidFormat(String),
}

/// The output events are written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTarget {
    /// A file, opened for appending and created if missing. Opening a FIFO
    /// waits for a reader, as a shell redirection does.
    Path(PathBuf),
    /// An open file descriptor, inherited from the process that started the
    /// VMM. [`EventMonitor::start`](crate::EventMonitor::start) takes
    /// ownership of it: the monitor closes it when it stops, and nothing else
    /// in the process may use or close it afterwards.
    Fd(RawFd),
}

/// Configuration of the event monitor.
///
/// Parsed from the `--event-monitor` option value with [`FromStr`]
/// (`path=FILE`, `fd=N`, optionally followed by `,capacity=N` and
/// `,format=json-lines|cloud-hypervisor`), and carried in JSON as
/// `{"path": "FILE"}` or `{"fd": N}` with an optional `"capacity"` and
/// `"format"`; unknown JSON fields are refused. [`fmt::Display`] gives back
/// the option syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig", into = "RawConfig")]
pub struct EventMonitorConfig {
    /// Where the events go.
    pub target: EventTarget,
    /// How many events may wait in the queue before new ones are dropped.
    pub capacity: usize,
    /// How events are written (see [`EventFormat`]).
    pub format: EventFormat,
}

impl EventMonitorConfig {
    /// Events appended to the file at `path`, default capacity.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self {
            target: EventTarget::Path(path.into()),
            capacity: DEFAULT_CAPACITY,
            format: EventFormat::default(),
        }
    }

    /// Events written to `fd` (ownership passes to the monitor when it starts),
    /// default capacity.
    pub fn fd(fd: RawFd) -> Self {
        Self {
            target: EventTarget::Fd(fd),
            capacity: DEFAULT_CAPACITY,
            format: EventFormat::default(),
        }
    }

    /// The same configuration writing in `format`.
    #[must_use]
    pub fn with_format(self, format: EventFormat) -> Self {
        Self { format, ..self }
    }

    /// The same configuration with another queue capacity.
    #[must_use]
    pub fn with_capacity(self, capacity: usize) -> Self {
        Self { capacity, ..self }
    }

    /// Checks the values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.target {
            EventTarget::Path(path) if path.as_os_str().is_empty() => {
                return Err(ConfigError::EmptyPath);
            }
            EventTarget::Fd(fd) if *fd < 0 => return Err(ConfigError::InvalidFd(fd.to_string())),
            _ => {}
        }
        validate_capacity(self.capacity)
    }
}

pub(crate) fn validate_capacity(capacity: usize) -> Result<(), ConfigError> {
    if (1..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(ConfigError::InvalidCapacity(capacity.to_string()))
    }
}

impl FromStr for EventMonitorConfig {
    type Err = ConfigError;

    /// Parses `path=FILE|fd=N[,capacity=N][,format=F]` with the workspace's one
    /// option parser, so a path holding a comma is quoted as everywhere
    /// else: `path="/var/log/a,b.jsonl"`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        if s.is_empty() {
            return Err(ConfigError::Empty);
        }
        if !s.contains('=') && !KEYS.contains(&s) {
            return Err(ConfigError::BarePath(s.to_owned()));
        }
        let options = Options::parse(s, KEYS, false)?;
        let fd = options
            .get("fd")
            .map(|v| v.parse().map_err(|_| ConfigError::InvalidFd(v.to_owned())))
            .transpose()?;
        let capacity = options
            .get("capacity")
            .map(|v| {
                v.parse()
                    .map_err(|_| ConfigError::InvalidCapacity(v.to_owned()))
            })
            .transpose()?;
        let format = options
            .get("format")
            .map(|v| {
                v.parse()
                    .map_err(|_| ConfigError::InvalidFormat(v.to_owned()))
            })
            .transpose()?;
        RawConfig {
            path: options.get("path").map(PathBuf::from),
            fd,
            capacity,
            format,
        }
        .try_into()
    }
}

/// The keys of `--event-monitor`.
const KEYS: &[&str] = &["path", "fd", "capacity", "format"];

impl fmt::Display for EventMonitorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            EventTarget::Path(path) => {
                let path = path.display().to_string();
                if path.contains(',') {
                    write!(f, "path=\"{path}\"")?;
                } else {
                    write!(f, "path={path}")?;
                }
            }
            EventTarget::Fd(fd) => write!(f, "fd={fd}")?,
        }
        if self.capacity != DEFAULT_CAPACITY {
            write!(f, ",capacity={}", self.capacity)?;
        }
        if self.format != EventFormat::default() {
            write!(f, ",format={}", self.format)?;
        }
        Ok(())
    }
}

/// The flat form shared by the option parser and the JSON representation.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd: Option<RawFd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capacity: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<EventFormat>,
}

impl TryFrom<RawConfig> for EventMonitorConfig {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let target = match (raw.path, raw.fd) {
            (Some(_), Some(_)) => return Err(ConfigError::BothTargets),
            (None, None) => return Err(ConfigError::NoTarget),
            (Some(path), None) => EventTarget::Path(path),
            (None, Some(fd)) => EventTarget::Fd(fd),
        };
        let config = Self {
            target,
            capacity: raw.capacity.unwrap_or(DEFAULT_CAPACITY),
            format: raw.format.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }
}

impl From<EventMonitorConfig> for RawConfig {
    fn from(config: EventMonitorConfig) -> Self {
        let (path, fd) = match config.target {
            EventTarget::Path(path) => (Some(path), None),
            EventTarget::Fd(fd) => (None, Some(fd)),
        };
        Self {
            path,
            fd,
            capacity: Some(config.capacity),
            format: (config.format != EventFormat::default()).then_some(config.format),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfigError::*;

    fn parse(s: &str) -> Result<EventMonitorConfig, ConfigError> {
        s.parse()
    }

    #[test]
    fn parses_valid_forms() {
        assert_eq!(
            parse("path=/tmp/ev.jsonl"),
            Ok(EventMonitorConfig::path("/tmp/ev.jsonl"))
        );
        assert_eq!(
            parse("path=rel/ev=1.jsonl"),
            Ok(EventMonitorConfig::path("rel/ev=1.jsonl"))
        );
        assert_eq!(
            parse("path=\"/var/log/a,b.jsonl\""),
            Ok(EventMonitorConfig::path("/var/log/a,b.jsonl"))
        );
        assert_eq!(parse("fd=3"), Ok(EventMonitorConfig::fd(3)));
        assert_eq!(parse("fd=0"), Ok(EventMonitorConfig::fd(0)));
        assert_eq!(
            parse("fd=3,capacity=16"),
            Ok(EventMonitorConfig::fd(3).with_capacity(16))
        );
        assert_eq!(
            parse("capacity=1,path=/x"),
            Ok(EventMonitorConfig::path("/x").with_capacity(1))
        );
        assert_eq!(parse("fd=3").map(|c| c.capacity), Ok(DEFAULT_CAPACITY));
    }

    #[test]
    fn rejects_each_invalid_form() {
        let cases: &[(&str, ConfigError)] = &[
            ("", Empty),
            ("path", Syntax(OptionError::MissingValue("path".into()))),
            ("path=/a,b", Syntax(OptionError::MissingValue("b".into()))),
            (
                "path=/a,",
                Syntax(OptionError::EmptyItem("path=/a,".into())),
            ),
            (
                "path=\"/a",
                Syntax(OptionError::UnterminatedQuote("path=\"/a".into())),
            ),
            (
                "file=/a",
                Syntax(OptionError::UnknownKey {
                    key: "file".into(),
                    known: "path, fd, capacity, format".into(),
                }),
            ),
            (
                "path=/a,path=/b",
                Syntax(OptionError::DuplicateKey("path".into())),
            ),
            ("fd=3,fd=4", Syntax(OptionError::DuplicateKey("fd".into()))),
            (
                "fd=3,capacity=1,capacity=2",
                Syntax(OptionError::DuplicateKey("capacity".into())),
            ),
            ("path=/a,fd=3", BothTargets),
            (
                "/var/log/events.jsonl",
                BarePath("/var/log/events.jsonl".into()),
            ),
            ("capacity=8", NoTarget),
            ("path=", EmptyPath),
            ("fd=", InvalidFd(String::new())),
            ("fd=abc", InvalidFd("abc".into())),
            ("fd=-1", InvalidFd("-1".into())),
            ("fd=3x", InvalidFd("3x".into())),
            ("fd=99999999999", InvalidFd("99999999999".into())),
            ("fd=3,capacity=0", InvalidCapacity("0".into())),
            ("fd=3,capacity=lots", InvalidCapacity("lots".into())),
            ("fd=3,capacity=-5", InvalidCapacity("-5".into())),
            ("fd=3,capacity=1048577", InvalidCapacity("1048577".into())),
            ("fd=3,format=ch", InvalidFormat("ch".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).as_ref(), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            parse("/path").unwrap_err().to_string(),
            "Event monitor option \"/path\" names no key: write path=/path for a file, or fd=N"
        );
        let err = parse("file=/a").unwrap_err();
        assert_eq!(err.to_string(), "Invalid event monitor option");
        assert_eq!(
            std::error::Error::source(&err).map(ToString::to_string),
            Some("Unknown option \"file\", expected one of: path, fd, capacity, format".to_owned())
        );
        assert!(
            InvalidCapacity("0".into())
                .to_string()
                .ends_with("from 1 to 1048576")
        );
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "path=/tmp/ev.jsonl",
            "fd=7",
            "fd=7,capacity=10",
            "path=a b,capacity=1",
            "path=\"/a,b\"",
            "fd=7,format=cloud-hypervisor",
            "path=/x,capacity=3,format=cloud-hypervisor",
        ] {
            let config = parse(input).unwrap();
            assert_eq!(config.to_string(), input);
            assert_eq!(parse(&config.to_string()), Ok(config));
        }
    }

    #[test]
    fn json_round_trips_flat() {
        let config = EventMonitorConfig::path("/tmp/ev.jsonl").with_capacity(64);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"path": "/tmp/ev.jsonl", "capacity": 64})
        );
        let back: EventMonitorConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);

        let fd: EventMonitorConfig = serde_json::from_str(r#"{"fd": 5}"#).unwrap();
        assert_eq!(fd, EventMonitorConfig::fd(5));
    }

    #[test]
    fn json_refuses_invalid_configs() {
        for (json, needle) in [
            (r#"{"path": "/a", "mode": "x"}"#, "unknown field `mode`"),
            (r#"{"path": "/a", "fd": 3}"#, "not both"),
            (r#"{"capacity": 3}"#, "needs an output"),
            (r#"{}"#, "needs an output"),
            (r#"{"fd": -2}"#, "Invalid event monitor fd"),
            (
                r#"{"fd": 2, "capacity": 0}"#,
                "Invalid event monitor capacity",
            ),
            (r#"{"path": ""}"#, "path is empty"),
        ] {
            let err = serde_json::from_str::<EventMonitorConfig>(json).unwrap_err();
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn validate_checks_public_fields() {
        assert_eq!(
            EventMonitorConfig::fd(-1).validate(),
            Err(InvalidFd("-1".into()))
        );
        assert_eq!(EventMonitorConfig::path("").validate(), Err(EmptyPath));
        let zero = EventMonitorConfig::fd(1).with_capacity(0);
        assert_eq!(zero.validate(), Err(InvalidCapacity("0".into())));
        assert_eq!(EventMonitorConfig::fd(1).validate(), Ok(()));
    }
}
