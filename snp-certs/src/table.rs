//! The GHCB certificate table: the bytes an SNP guest receives.
//!
//! # Format
//!
//! A table is a list of 24-byte entries, closed by an entry whose 24 bytes
//! are all zero (the terminator), followed by the certificate bytes:
//!
//! ```text
//! offset 0         entry 0: guid [16 bytes] | offset u32 LE | length u32 LE
//! offset 24        entry 1: ...
//! offset 24*n      terminator: 24 zero bytes
//! offset 24*(n+1)  certificate data, usually packed in entry order
//! ```
//!
//! * `guid` names the certificate (see [`crate::guid`]), stored in RFC 4122
//!   byte order (the order `uuid` prints).
//! * `offset` is counted from the first byte of the table (not from the end
//!   of the header) and must point past the terminator.
//! * `length` is the certificate's size in bytes; certificates should be
//!   DER-encoded X.509 (or a DER CRL).
//!
//! # Validation
//!
//! [`CertTable::parse`] checks every entry and rejects, with its own
//! [`TableError`], a table without terminator, an entry pointing into the
//! header, an entry past the end of the table or whose `offset + length`
//! overflows 32 bits, a zero-length entry, a GUID used twice, more than
//! [`MAX_ENTRIES`] entries and a table larger than [`MAX_TABLE_SIZE`]. It then reports, without rejecting,
//! [`TableWarning`]s: a table too large for Linux guests
//! ([`LINUX_GUEST_MAX_SIZE`]), PEM-encoded entries, GUIDs that look
//! byte-swapped, and a table without report signer.
//!
//! Parsing never reads outside the given slice, whatever its content: every
//! offset comes from an untrusted file.

use std::fmt;

use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

use crate::guid::CertKind;

/// Size of one table entry (and of the terminator).
pub const ENTRY_SIZE: usize = 24;

/// Largest table a Linux guest can receive: its certificate buffer
/// (`SEV_FW_BLOB_MAX_SIZE`) is 16 KiB.
pub const LINUX_GUEST_MAX_SIZE: usize = 16 * 1024;

/// Largest table this crate accepts at all (1 MiB, 256 guest pages). Real
/// chains are a few KiB; anything near this size is a mistake.
pub const MAX_TABLE_SIZE: usize = 1024 * 1024;

/// Most entries a table may have. Real tables have at most six (VCEK or
/// VLEK, ASK, ARK, CRL, extra platform information); the cap keeps parsing,
/// which runs on every guest request, cheap whatever the file holds.
pub const MAX_ENTRIES: usize = 64;

/// A table with no entries: just the terminator. This is what a guest
/// receives when no certificate file is configured.
pub const EMPTY_TABLE: [u8; ENTRY_SIZE] = [0; ENTRY_SIZE];

/// Why a table is not valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TableError {
    /// The table is larger than [`MAX_TABLE_SIZE`].
    #[error("Table is {size} bytes, larger than the limit of {max} bytes")]
    TooLarge {
        /// Size of the table.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("Table has more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// No all-zero terminator entry before the end of the data.
    #[error("No terminator entry: the table ends after {entries} entries without 24 zero bytes")]
    MissingTerminator {
        /// Complete entries seen before the data ran out.
        entries: usize,
    },
    /// An entry has a null GUID but a non-zero offset or length.
    #[error("Entry {index} has a null GUID but is not an all-zero terminator")]
    MalformedTerminator {
        /// Index of the entry.
        index: usize,
    },
    /// The null GUID, which only the terminator may have, given to an entry.
    #[error("Entry {index} has the null GUID, which only the terminator may use")]
    NullGuid {
        /// Index of the entry.
        index: usize,
    },
    /// An entry's data starts inside the entry list or terminator.
    #[error(
        "Entry {index} ({kind}) starts at offset {offset}, inside the {header_len}-byte header"
    )]
    OffsetInHeader {
        /// Index of the entry.
        index: usize,
        /// What the entry holds.
        kind: CertKind,
        /// Its offset.
        offset: u32,
        /// Size of entries plus terminator.
        header_len: usize,
    },
    /// `offset + length` does not fit in 32 bits.
    #[error("Entry {index} ({kind}): offset {offset} + length {length} overflows 32 bits")]
    EntryOverflow {
        /// Index of the entry.
        index: usize,
        /// What the entry holds.
        kind: CertKind,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
    },
    /// An entry's data ends past the end of the table.
    #[error(
        "Entry {index} ({kind}) spans bytes {offset}..{end}, past the end of the {size}-byte table"
    )]
    PastEnd {
        /// Index of the entry.
        index: usize,
        /// What the entry holds.
        kind: CertKind,
        /// Its offset.
        offset: u32,
        /// `offset + length`.
        end: u64,
        /// Size of the table.
        size: usize,
    },
    /// An entry has length zero.
    #[error("Entry {index} ({kind}) has length zero")]
    ZeroLength {
        /// Index of the entry.
        index: usize,
        /// What the entry holds.
        kind: CertKind,
    },
    /// Two entries have the same GUID.
    #[error("Entry {index} repeats the GUID {guid} ({kind}) of entry {first}")]
    DuplicateGuid {
        /// Index of the repeated entry.
        index: usize,
        /// Index of the first entry with that GUID.
        first: usize,
        /// The GUID.
        guid: Uuid,
        /// What it names.
        kind: CertKind,
    },
}

/// Something legal but probably wrong about a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "warning", rename_all = "kebab-case")]
pub enum TableWarning {
    /// The table is larger than a Linux guest can receive.
    ExceedsLinuxGuestLimit {
        /// Size of the table.
        size: usize,
    },
    /// An entry holds PEM text, not DER; some verifiers accept DER only.
    PemEncoded {
        /// Index of the entry.
        index: usize,
        /// What the entry holds.
        kind: CertKind,
    },
    /// A GUID equals a well-known one with its first fields byte-swapped.
    SwappedGuid {
        /// Index of the entry.
        index: usize,
        /// The GUID found.
        guid: Uuid,
        /// The kind it probably meant.
        looks_like: CertKind,
    },
    /// The table has entries but neither a VCEK nor a VLEK.
    NoReportSigner,
}

impl fmt::Display for TableWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableWarning::ExceedsLinuxGuestLimit { size } => write!(
                f,
                "Table is {size} bytes: Linux guests cannot receive more than {LINUX_GUEST_MAX_SIZE}"
            ),
            TableWarning::PemEncoded { index, kind } => write!(
                f,
                "Entry {index} ({kind}) is PEM text; use DER (some verifiers accept only DER)"
            ),
            TableWarning::SwappedGuid {
                index,
                guid,
                looks_like,
            } => write!(
                f,
                "Entry {index} GUID {guid} looks like the {looks_like} GUID with byte-swapped fields"
            ),
            TableWarning::NoReportSigner => {
                f.write_str("Table has no VCEK or VLEK: guests cannot verify their report")
            }
        }
    }
}

/// How an entry's bytes are encoded, judged from their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Starts with a DER SEQUENCE tag.
    Der,
    /// Starts with a PEM armour line.
    Pem,
    /// Neither.
    Unknown,
}

impl Encoding {
    /// Guess the encoding of certificate bytes.
    pub fn detect(data: &[u8]) -> Encoding {
        let text = data.trim_ascii_start();
        if text.starts_with(b"-----BEGIN ") {
            Encoding::Pem
        } else if data.first() == Some(&0x30) {
            Encoding::Der
        } else {
            Encoding::Unknown
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Der => "DER",
            Encoding::Pem => "PEM",
            Encoding::Unknown => "unknown",
        })
    }
}

/// One validated entry of a [`CertTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry<'a> {
    /// The entry's GUID.
    pub guid: Uuid,
    /// What the GUID names.
    pub kind: CertKind,
    /// Offset of the data from the start of the table.
    pub offset: u32,
    /// The certificate bytes (`length` bytes at `offset`).
    pub data: &'a [u8],
}

impl CertEntry<'_> {
    /// Encoding of the data.
    pub fn encoding(&self) -> Encoding {
        Encoding::detect(self.data)
    }
}

/// A validated certificate table borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTable<'a> {
    bytes: &'a [u8],
    entries: Vec<CertEntry<'a>>,
}

/// Reads the `index`th raw entry, if the slice holds all of it.
fn raw_entry(bytes: &[u8], index: usize) -> Option<(Uuid, u32, u32)> {
    let start = index.checked_mul(ENTRY_SIZE)?;
    let raw: &[u8; ENTRY_SIZE] = bytes
        .get(start..start.checked_add(ENTRY_SIZE)?)?
        .try_into()
        .ok()?;
    let (guid, rest) = raw.split_at(16);
    let (offset, length) = rest.split_at(4);
    Some((
        Uuid::from_slice(guid).ok()?,
        u32::from_le_bytes(offset.try_into().ok()?),
        u32::from_le_bytes(length.try_into().ok()?),
    ))
}

impl<'a> CertTable<'a> {
    /// Parses and validates a table. See the module docs for the rules.
    pub fn parse(bytes: &'a [u8]) -> Result<CertTable<'a>, TableError> {
        if bytes.len() > MAX_TABLE_SIZE {
            return Err(TableError::TooLarge {
                size: bytes.len(),
                max: MAX_TABLE_SIZE,
            });
        }
        let mut raw = Vec::new();
        loop {
            let index = raw.len();
            let Some((guid, offset, length)) = raw_entry(bytes, index) else {
                return Err(TableError::MissingTerminator { entries: index });
            };
            if guid.is_nil() {
                if offset != 0 || length != 0 {
                    return Err(TableError::MalformedTerminator { index });
                }
                break;
            }
            if index == MAX_ENTRIES {
                return Err(TableError::TooManyEntries { max: MAX_ENTRIES });
            }
            raw.push((guid, offset, length));
        }
        // The loop above stopped at a terminator that lies inside `bytes`,
        // so this cannot overflow.
        let header_len = (raw.len() + 1) * ENTRY_SIZE;
        let mut entries: Vec<CertEntry<'a>> = Vec::with_capacity(raw.len());
        for (index, (guid, offset, length)) in raw.into_iter().enumerate() {
            let kind = CertKind::from_guid(&guid);
            if let Some(first) = entries.iter().position(|e| e.guid == guid) {
                return Err(TableError::DuplicateGuid {
                    index,
                    first,
                    guid,
                    kind,
                });
            }
            if (offset as usize) < header_len {
                return Err(TableError::OffsetInHeader {
                    index,
                    kind,
                    offset,
                    header_len,
                });
            }
            if length == 0 {
                return Err(TableError::ZeroLength { index, kind });
            }
            let Some(end) = offset.checked_add(length) else {
                return Err(TableError::EntryOverflow {
                    index,
                    kind,
                    offset,
                    length,
                });
            };
            let Some(data) = bytes.get(offset as usize..end as usize) else {
                return Err(TableError::PastEnd {
                    index,
                    kind,
                    offset,
                    end: u64::from(end),
                    size: bytes.len(),
                });
            };
            entries.push(CertEntry {
                guid,
                kind,
                offset,
                data,
            });
        }
        Ok(CertTable { bytes, entries })
    }

    /// The raw bytes of the table.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The entries, in table order.
    pub fn entries(&self) -> &[CertEntry<'a>] {
        &self.entries
    }

    /// Size of the entry list plus terminator.
    pub fn header_len(&self) -> usize {
        (self.entries.len() + 1) * ENTRY_SIZE
    }

    /// Bytes a guest keeps: up to the end of the last certificate (the
    /// largest `offset + length`), or the header for an empty table. Linux
    /// trims the blob it hands to user space to this length.
    pub fn used_len(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.offset as usize + e.data.len())
            .fold(self.header_len(), usize::max)
    }

    /// The first entry of a kind.
    pub fn get(&self, kind: CertKind) -> Option<&CertEntry<'a>> {
        self.entries.iter().find(|e| e.kind == kind)
    }

    /// What is legal but probably wrong about this table.
    pub fn warnings(&self) -> Vec<TableWarning> {
        let mut warnings = Vec::new();
        if self.bytes.len() > LINUX_GUEST_MAX_SIZE {
            warnings.push(TableWarning::ExceedsLinuxGuestLimit {
                size: self.bytes.len(),
            });
        }
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.encoding() == Encoding::Pem {
                warnings.push(TableWarning::PemEncoded {
                    index,
                    kind: entry.kind,
                });
            }
            if let Some(looks_like) = CertKind::from_swapped_guid(&entry.guid) {
                warnings.push(TableWarning::SwappedGuid {
                    index,
                    guid: entry.guid,
                    looks_like,
                });
            }
        }
        let has_signer = self.get(CertKind::Vcek).is_some() || self.get(CertKind::Vlek).is_some();
        if !self.entries.is_empty() && !has_signer {
            warnings.push(TableWarning::NoReportSigner);
        }
        warnings
    }
}

/// Builds a table, packing certificates right after the terminator in the
/// order they were added, as the usual writers do.
#[derive(Debug, Clone, Default)]
pub struct TableBuilder {
    entries: Vec<(Uuid, Vec<u8>)>,
}

impl TableBuilder {
    /// An empty builder.
    pub fn new() -> TableBuilder {
        TableBuilder::default()
    }

    /// Adds a certificate of a well-known kind. [`CertKind::Other`] has no
    /// GUID of its own and is refused with [`TableError::NullGuid`]: use
    /// [`TableBuilder::add_guid`] for other GUIDs.
    pub fn add(&mut self, kind: CertKind, data: Vec<u8>) -> Result<&mut Self, TableError> {
        let guid = kind.guid().unwrap_or_default();
        self.add_guid(guid, data)
    }

    /// Adds a certificate under any GUID. A null GUID would end the table
    /// early and is refused.
    pub fn add_guid(&mut self, guid: Uuid, data: Vec<u8>) -> Result<&mut Self, TableError> {
        let index = self.entries.len();
        let kind = CertKind::from_guid(&guid);
        if guid.is_nil() {
            return Err(TableError::NullGuid { index });
        }
        if index == MAX_ENTRIES {
            return Err(TableError::TooManyEntries { max: MAX_ENTRIES });
        }
        if let Some(first) = self.entries.iter().position(|(g, _)| *g == guid) {
            return Err(TableError::DuplicateGuid {
                index,
                first,
                guid,
                kind,
            });
        }
        if data.is_empty() {
            return Err(TableError::ZeroLength { index, kind });
        }
        self.entries.push((guid, data));
        Ok(self)
    }

    /// The table bytes. Fails with [`TableError::TooLarge`] above
    /// [`MAX_TABLE_SIZE`].
    pub fn build(&self) -> Result<Vec<u8>, TableError> {
        let header_len = (self.entries.len() + 1) * ENTRY_SIZE;
        let size = self
            .entries
            .iter()
            .fold(header_len, |acc, (_, data)| acc.saturating_add(data.len()));
        if size > MAX_TABLE_SIZE {
            return Err(TableError::TooLarge {
                size,
                max: MAX_TABLE_SIZE,
            });
        }
        let mut table = Vec::with_capacity(size);
        let mut offset = header_len;
        for (guid, data) in &self.entries {
            table.extend_from_slice(guid.as_bytes());
            // Both fit in u32: size <= MAX_TABLE_SIZE was checked above.
            table.extend_from_slice(&(offset as u32).to_le_bytes());
            table.extend_from_slice(&(data.len() as u32).to_le_bytes());
            offset += data.len();
        }
        table.extend_from_slice(&EMPTY_TABLE);
        for (_, data) in &self.entries {
            table.extend_from_slice(data);
        }
        Ok(table)
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
