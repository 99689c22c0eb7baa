//! Cloud Hypervisor-style option strings: `key=value,key=value`.
//!
//! Every `key=value` option of the workspace goes through this one parser
//! (`snp-vmm --snp`, `--platform`, `--payload`, `--api-socket`,
//! `--event-monitor`, and `snp-remote create`), so all of them accept
//! exactly the same syntax:
//!
//! * items are separated by commas; each is `key=value`;
//! * the first item may be a bare word without `=`, the option's kind
//!   (`--payload attest,requests=3`), if the caller allows one;
//! * a value may be put in double quotes to contain commas
//!   (`certs_file="/a,b"`); the quotes are removed;
//! * keys are snake_case, as Cloud Hypervisor writes them (`certs_file`,
//!   `sev_snp`); the kebab-case spelling of a key (`certs-file`) is the
//!   same key, kept as an alias. Keys are checked against the caller's
//!   list (given in snake_case), and each key may appear once, in either
//!   spelling;
//! * switches ([`Options::switch`]) take `on`/`off` and `true`/`false` in
//!   any case, as Cloud Hypervisor's `Toggle` does (and `yes`/`no`,
//!   `1`/`0`); an empty value is off, as there.
//!
//! [`parse_size`] reads sizes such as `64M`, `1G` or `4096`.

use std::fmt::Display;
use std::str::FromStr;

use thiserror::Error;

/// Why an option string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionError {
    /// An empty item, such as in `a=1,,b=2`.
    #[error("Empty item in option string {0:?}")]
    EmptyItem(String),
    /// A double quote was opened and not closed.
    #[error("Unterminated quote in option string {0:?}")]
    UnterminatedQuote(String),
    /// A key the option does not know.
    #[error("Unknown option {key:?}, expected one of: {known}")]
    UnknownKey {
        /// The key given.
        key: String,
        /// The known keys, comma separated.
        known: String,
    },
    /// The same key twice.
    #[error("Option {0:?} given more than once")]
    DuplicateKey(String),
    /// An item without `=` where a `key=value` was expected.
    #[error("Expected key=value, got {0:?}")]
    MissingValue(String),
    /// A value that does not parse.
    #[error("Invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Not a number with an optional K, M, G or T suffix.
    #[error("Invalid size {0:?}: expected a number of bytes with an optional K, M, G or T suffix")]
    Invalid(String),
    /// Larger than 2^64 - 1 bytes.
    #[error("Size {0:?} is too large")]
    Overflow(String),
}

/// A parsed option string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    kind: Option<String>,
    pairs: Vec<(String, String)>,
}

impl Options {
    /// Parses `input`. `known` lists the accepted keys in snake_case
    /// (their kebab-case spellings are accepted too, and stored under the
    /// snake_case name); if `allow_kind`, the first item may be a bare
    /// word (see [`Options::kind`]).
    pub fn parse(input: &str, known: &[&str], allow_kind: bool) -> Result<Options, OptionError> {
        let mut options = Options::default();
        for (index, item) in split_items(input)?.into_iter().enumerate() {
            if item.is_empty() {
                return Err(OptionError::EmptyItem(input.to_owned()));
            }
            let Some((key, value)) = item.split_once('=') else {
                if index == 0 && allow_kind {
                    options.kind = Some(unquote(&item));
                    continue;
                }
                return Err(OptionError::MissingValue(item));
            };
            let canonical = key.replace('-', "_");
            if !known.contains(&canonical.as_str()) {
                return Err(OptionError::UnknownKey {
                    key: key.to_owned(),
                    known: known.join(", "),
                });
            }
            if options.get(&canonical).is_some() {
                return Err(OptionError::DuplicateKey(canonical));
            }
            options.pairs.push((canonical, unquote(value)));
        }
        Ok(options)
    }

    /// The leading bare word, such as `attest` in `attest,requests=3`.
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    /// The raw value of `key` (its snake_case name), if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed with [`FromStr`].
    pub fn parsed<T>(&self, key: &str) -> Result<Option<T>, OptionError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(key)
            .map(|value| {
                value
                    .parse()
                    .map_err(|e: T::Err| invalid(key, value, e.to_string()))
            })
            .transpose()
    }

    /// The value of `key` as a size in bytes (see [`parse_size`]).
    pub fn size(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.get(key)
            .map(|value| parse_size(value).map_err(|e| invalid(key, value, e.to_string())))
            .transpose()
    }

    /// The value of `key` as a switch (see [`parse_switch`]).
    pub fn switch(&self, key: &str) -> Result<Option<bool>, OptionError> {
        self.get(key)
            .map(|value| {
                parse_switch(value).ok_or_else(|| {
                    invalid(
                        key,
                        value,
                        "expected on or off (or true or false)".to_owned(),
                    )
                })
            })
            .transpose()
    }
}

/// Reads a switch as Cloud Hypervisor's `Toggle` does: `on`, `true` (and
/// `yes`, `1`) are on; `off`, `false` (and `no`, `0`) and the empty string
/// are off; letters in any case. `None` for anything else.
pub fn parse_switch(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "" | "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn invalid(key: &str, value: &str, reason: String) -> OptionError {
    OptionError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

/// Splits at commas outside double quotes, keeping the quotes.
fn split_items(input: &str) -> Result<Vec<String>, OptionError> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in input.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err(OptionError::UnterminatedQuote(input.to_owned()));
    }
    items.push(current);
    Ok(items)
}

fn unquote(value: &str) -> String {
    value.replace('"', "")
}

/// Parses a size in bytes: a decimal number with an optional binary
/// suffix `K`, `M`, `G` or `T` (either case), such as `4096`, `64M`, `1G`.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let (digits, shift) = match input.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(SizeError::Invalid(input.to_owned())),
            };
            (&input[..i], shift)
        }
        _ => (input, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::Invalid(input.to_owned()));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(input.to_owned()))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(input.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_kind() {
        let o = Options::parse(
            "attest,requests=3,interval_ms=10",
            &["requests", "interval_ms"],
            true,
        )
        .unwrap();
        assert_eq!(o.kind(), Some("attest"));
        assert_eq!(o.get("requests"), Some("3"));
        assert_eq!(o.parsed::<u32>("interval_ms").unwrap(), Some(10));
        assert_eq!(o.parsed::<u32>("missing").unwrap(), None);
    }

    #[test]
    fn kind_only_where_allowed() {
        let err = Options::parse("attest", &["requests"], false).unwrap_err();
        assert_eq!(err, OptionError::MissingValue("attest".into()));
        let err = Options::parse("requests=1,attest", &["requests"], true).unwrap_err();
        assert_eq!(err, OptionError::MissingValue("attest".into()));
    }

    #[test]
    fn quotes_protect_commas() {
        let o = Options::parse(
            "certs_file=\"/a,b\",certs_timeout=5",
            &["certs_file", "certs_timeout"],
            false,
        )
        .unwrap();
        assert_eq!(o.get("certs_file"), Some("/a,b"));
        assert_eq!(o.get("certs_timeout"), Some("5"));
        let err = Options::parse("certs_file=\"/a", &["certs_file"], false).unwrap_err();
        assert!(matches!(err, OptionError::UnterminatedQuote(_)));
    }

    #[test]
    fn values_may_contain_equals() {
        let o = Options::parse("certs_file=/a=b", &["certs_file"], false).unwrap();
        assert_eq!(o.get("certs_file"), Some("/a=b"));
    }

    #[test]
    fn refusals() {
        let known = ["boot"];
        assert!(matches!(
            Options::parse("boot=1,,", &known, false),
            Err(OptionError::EmptyItem(_))
        ));
        assert!(matches!(
            Options::parse("", &known, false),
            Err(OptionError::EmptyItem(_))
        ));
        let err = Options::parse("bot=1", &known, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown option \"bot\", expected one of: boot"
        );
        assert_eq!(
            Options::parse("boot=1,boot=2", &known, false).unwrap_err(),
            OptionError::DuplicateKey("boot".into())
        );
        let o = Options::parse("boot=x", &known, false).unwrap();
        let err = o.parsed::<u8>("boot").unwrap_err();
        assert!(
            err.to_string().starts_with("Invalid value \"x\" for boot"),
            "{err}"
        );
    }

    #[test]
    fn switches() {
        let o = Options::parse("a=on,b=off,c=maybe", &["a", "b", "c"], false).unwrap();
        assert_eq!(o.switch("a").unwrap(), Some(true));
        assert_eq!(o.switch("b").unwrap(), Some(false));
        assert_eq!(o.switch("d").unwrap(), None);
        assert!(o.switch("c").is_err());
    }

    #[test]
    fn switches_in_any_case_as_cloud_hypervisor() {
        for on in ["on", "ON", "On", "true", "TRUE", "True", "yes", "1"] {
            assert_eq!(parse_switch(on), Some(true), "{on}");
        }
        for off in [
            "off", "OFF", "Off", "false", "FALSE", "False", "no", "0", "",
        ] {
            assert_eq!(parse_switch(off), Some(false), "{off}");
        }
        for bad in ["onn", "2", "enabled", " on"] {
            assert_eq!(parse_switch(bad), None, "{bad}");
        }
        let o = Options::parse("doorbell=", &["doorbell"], false).unwrap();
        assert_eq!(o.switch("doorbell").unwrap(), Some(false));
    }

    #[test]
    fn snake_case_keys_with_kebab_case_aliases() {
        let known = ["certs_file", "certs_timeout"];
        let o = Options::parse("certs_file=/a,certs-timeout=5", &known, false).unwrap();
        assert_eq!(o.get("certs_file"), Some("/a"));
        assert_eq!(o.get("certs_timeout"), Some("5"));
        assert_eq!(
            o.get("certs-file"),
            None,
            "stored under the snake_case name"
        );
        assert_eq!(
            Options::parse("certs-file=/a,certs_file=/b", &known, false).unwrap_err(),
            OptionError::DuplicateKey("certs_file".into())
        );
        let err = Options::parse("certs-fil=/a", &known, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown option \"certs-fil\", expected one of: certs_file, certs_timeout"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "M", "1.5G", "-1", "64MB", "64X", " 64M", "1 G", "0x10"] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Invalid(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn size_option() {
        let o = Options::parse("size=64M", &["size"], false).unwrap();
        assert_eq!(o.size("size").unwrap(), Some(64 << 20));
        let o = Options::parse("size=lots", &["size"], false).unwrap();
        assert!(o.size("size").is_err());
    }
}
