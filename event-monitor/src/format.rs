//! How events are written: JSON lines (the default), or Cloud
//! Hypervisor's own format (`format=cloud-hypervisor`).
//!
//! Both carry the same envelope as Cloud Hypervisor's event monitor
//! (its `event_monitor` crate): `timestamp` (the time since the monitor
//! started, `{"secs": …, "nanos": …}`, as serde writes a `Duration`),
//! `source`, `event` and `properties`. They differ in framing and in the
//! property values:
//!
//! | | JSON lines | Cloud Hypervisor |
//! | --- | --- | --- |
//! | one event | one compact object and `\n` | one pretty-printed object and `\n\n` |
//! | reading it | one `serde_json::from_str` per line | split the file at `\n\n`, one `from_str` per piece (as CH's tests do) |
//! | property values | typed JSON: numbers, booleans, strings, `null`, arrays, objects | strings only: a string as it is, anything else as its compact JSON text (`4`, `true`, `null`, `[1,2]`) |
//! | no properties | `{}` | `null` |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Event;

/// The output format of the event stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventFormat {
    /// One compact JSON object per line, typed property values.
    #[default]
    JsonLines,
    /// Cloud Hypervisor's: pretty-printed objects each followed by a blank
    /// line, string property values, `null` for no properties.
    CloudHypervisor,
}

impl EventFormat {
    /// Every format, as the option spells it.
    pub const NAMES: &[&str] = &["json-lines", "cloud-hypervisor"];

    /// The option's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventFormat::JsonLines => "json-lines",
            EventFormat::CloudHypervisor => "cloud-hypervisor",
        }
    }

    /// What ends one event in the output.
    pub fn terminator(self) -> &'static [u8] {
        match self {
            EventFormat::JsonLines => b"\n",
            EventFormat::CloudHypervisor => b"\n\n",
        }
    }

    /// Appends `event` and its terminator to `out`.
    pub fn write(self, event: &Event, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            EventFormat::JsonLines => serde_json::to_writer(&mut *out, event)?,
            EventFormat::CloudHypervisor => {
                serde_json::to_writer_pretty(&mut *out, &CloudHypervisorEvent::from(event))?
            }
        }
        out.extend_from_slice(self.terminator());
        Ok(())
    }
}

impl fmt::Display for EventFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<EventFormat, String> {
        match s {
            "json-lines" => Ok(EventFormat::JsonLines),
            "cloud-hypervisor" => Ok(EventFormat::CloudHypervisor),
            _ => Err(s.to_owned()),
        }
    }
}

/// An event as Cloud Hypervisor's `event_monitor` serialises one.
#[derive(Serialize)]
struct CloudHypervisorEvent<'a> {
    timestamp: std::time::Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<std::collections::BTreeMap<&'a str, String>>,
}

impl<'a> From<&'a Event> for CloudHypervisorEvent<'a> {
    fn from(e: &'a Event) -> CloudHypervisorEvent<'a> {
        let properties = (!e.properties.is_empty()).then(|| {
            e.properties
                .iter()
                .map(|(key, value)| {
                    let text = match value {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key.as_str(), text)
                })
                .collect()
        });
        CloudHypervisorEvent {
            timestamp: e.timestamp,
            source: &e.source,
            event: &e.event,
            properties,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;

    fn event(properties: Value) -> Event {
        Event {
            timestamp: Duration::new(3, 250),
            source: "snp-certs".into(),
            event: "delivered".into(),
            properties: properties.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn json_lines_are_typed_one_per_line() {
        let mut out = Vec::new();
        let e = event(json!({"vcpu": 0, "ret": 0, "certs_file": "/c.bin", "warnings": []}));
        EventFormat::JsonLines.write(&e, &mut out).unwrap();
        EventFormat::JsonLines.write(&e, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(serde_json::from_str::<Event>(lines[0]).unwrap(), e);
    }

    /// Read as Cloud Hypervisor's integration tests read its event file:
    /// split at blank lines, each piece one JSON object whose property
    /// values are strings.
    #[test]
    fn cloud_hypervisor_format_reads_as_ch_reads_it() {
        let mut out = Vec::new();
        let typed = event(json!({"vcpu": 0, "ok": true, "certs_file": "/c.bin",
                                 "detail": null, "warnings": ["a", "b"]}));
        EventFormat::CloudHypervisor
            .write(&typed, &mut out)
            .unwrap();
        EventFormat::CloudHypervisor
            .write(&event(json!({})), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n\n"), "{text:?}");
        let pieces: Vec<Value> = text
            .trim()
            .split("\n\n")
            .map(|piece| serde_json::from_str(piece).unwrap())
            .collect();
        assert_eq!(pieces.len(), 2, "{text}");
        assert_eq!(
            pieces[0],
            json!({"timestamp": {"secs": 3, "nanos": 250}, "source": "snp-certs",
                   "event": "delivered",
                   "properties": {"vcpu": "0", "ok": "true", "certs_file": "/c.bin",
                                  "detail": "null", "warnings": "[\"a\",\"b\"]"}})
        );
        assert_eq!(pieces[1]["properties"], Value::Null);
        assert!(text.starts_with("{\n  \"timestamp\""), "pretty, as CH's");
    }

    #[test]
    fn names_round_trip() {
        for name in EventFormat::NAMES {
            assert_eq!(name.parse::<EventFormat>().unwrap().as_str(), *name);
        }
        assert!("ch".parse::<EventFormat>().is_err());
    }
}
