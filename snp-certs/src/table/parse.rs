//! Reading a table: one validating pass over the header that allocates
//! nothing ([`ValidTable`], what a guest request uses under the lock), and
//! the entry list built from it for tools ([`CertTable`]).

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use super::{ENTRY_SIZE, MAX_ENTRIES, MAX_TABLE_SIZE, TableError, TableWarning, warning};
use crate::guid::CertKind;

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

/// One validated entry of a table.
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

/// One raw entry: GUID bytes, offset, length.
fn fields(entry: &[u8; ENTRY_SIZE]) -> ([u8; 16], u32, u32) {
    let (guid, rest) = entry.split_at(16);
    let (offset, length) = rest.split_at(4);
    (
        guid.try_into().unwrap_or_default(),
        u32::from_le_bytes(offset.try_into().unwrap_or_default()),
        u32::from_le_bytes(length.try_into().unwrap_or_default()),
    )
}

/// An entry's GUID as one number, for comparisons (0: the null GUID).
fn guid_of(entry: &[u8; ENTRY_SIZE]) -> u128 {
    u128::from_ne_bytes(entry[..16].try_into().unwrap_or_default())
}

/// The `index`th entry's bytes, if `bytes` holds all of them.
fn entry_at(bytes: &[u8], index: usize) -> Option<&[u8; ENTRY_SIZE]> {
    let start = index.checked_mul(ENTRY_SIZE)?;
    bytes
        .get(start..start.checked_add(ENTRY_SIZE)?)?
        .try_into()
        .ok()
}

/// The `index`th raw entry, if `bytes` holds all of it.
fn raw_entry(bytes: &[u8], index: usize) -> Option<([u8; 16], u32, u32)> {
    entry_at(bytes, index).map(fields)
}

/// A table that passed validation, borrowing its bytes: the result of the
/// one validating pass, [`ValidTable::check`]. It holds only the slice and
/// the entry count, so checking a table allocates nothing; the entries are
/// read from the (already checked) header when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidTable<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> ValidTable<'a> {
    /// Validates a table: see the [module docs](super) for the rules. The
    /// only validation of a table's structure; [`CertTable::parse`] builds
    /// on it.
    pub fn check(bytes: &'a [u8]) -> Result<ValidTable<'a>, TableError> {
        let count = ValidTable::check_layout(bytes, bytes.len())?;
        Ok(ValidTable { bytes, count })
    }

    /// Validates the layout of a table of `size` bytes that starts with
    /// `head` (at least its whole header, or all of it if shorter):
    /// everything [`ValidTable::check`] checks, which depends on the header
    /// and the size alone. Returns the number of entries. For a table that
    /// is not in this process's memory (read straight into a guest's).
    pub fn check_layout(head: &[u8], size: usize) -> Result<usize, TableError> {
        if size > MAX_TABLE_SIZE {
            return Err(TableError::TooLarge {
                size,
                max: MAX_TABLE_SIZE,
            });
        }
        let head = head.get(..size).unwrap_or(head);
        let complete = head.len() / ENTRY_SIZE;
        // The terminator: the first null GUID among the first
        // MAX_ENTRIES + 1 entries.
        let scanned = complete.min(MAX_ENTRIES + 1);
        let terminator = (0..scanned).find_map(|i| {
            entry_at(head, i)
                .filter(|e| guid_of(e) == 0)
                .map(|e| (i, e))
        });
        let Some((count, terminator)) = terminator else {
            return Err(match complete > MAX_ENTRIES {
                true => TableError::TooManyEntries { max: MAX_ENTRIES },
                false => TableError::MissingTerminator { entries: complete },
            });
        };
        if terminator[16..] != [0; 8] {
            return Err(TableError::MalformedTerminator { index: count });
        }
        // The terminator lies inside `head`, so this cannot overflow.
        let header_len = (count + 1) * ENTRY_SIZE;
        for index in 0..count {
            let Some(entry) = entry_at(head, index) else {
                return Err(TableError::MissingTerminator { entries: index });
            };
            let (guid, offset, length) = fields(entry);
            let kind = || CertKind::from_guid(&Uuid::from_bytes(guid));
            let same = guid_of(entry);
            let repeated =
                (0..index).find(|&j| entry_at(head, j).is_some_and(|e| guid_of(e) == same));
            if let Some(first) = repeated {
                return Err(TableError::DuplicateGuid {
                    index,
                    first,
                    guid: Uuid::from_bytes(guid),
                    kind: kind(),
                });
            }
            if (offset as usize) < header_len {
                return Err(TableError::OffsetInHeader {
                    index,
                    kind: kind(),
                    offset,
                    header_len,
                });
            }
            if length == 0 {
                return Err(TableError::ZeroLength {
                    index,
                    kind: kind(),
                });
            }
            let Some(end) = offset.checked_add(length) else {
                return Err(TableError::EntryOverflow {
                    index,
                    kind: kind(),
                    offset,
                    length,
                });
            };
            if end as usize > size {
                return Err(TableError::PastEnd {
                    index,
                    kind: kind(),
                    offset,
                    end: u64::from(end),
                    size,
                });
            }
        }
        Ok(count)
    }

    /// The raw bytes of the table.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of entries (the terminator not counted).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries, in table order.
    pub fn entries(&self) -> impl Iterator<Item = CertEntry<'a>> + 'a {
        let bytes = self.bytes;
        (0..self.count).filter_map(move |index| {
            let (guid, offset, length) = raw_entry(bytes, index)?;
            let end = offset.checked_add(length)?;
            let guid = Uuid::from_bytes(guid);
            Some(CertEntry {
                guid,
                kind: CertKind::from_guid(&guid),
                offset,
                data: bytes.get(offset as usize..end as usize)?,
            })
        })
    }

    /// Size of the entry list plus terminator.
    pub fn header_len(&self) -> usize {
        (self.count + 1) * ENTRY_SIZE
    }

    /// Bytes a guest keeps: up to the end of the last certificate (the
    /// largest `offset + length`), or the header for an empty table. Linux
    /// trims the blob it hands to user space to this length.
    pub fn used_len(&self) -> usize {
        self.entries()
            .map(|e| e.offset as usize + e.data.len())
            .fold(self.header_len(), usize::max)
    }

    /// What is legal but probably wrong about this table.
    pub fn warnings(&self) -> Vec<TableWarning> {
        warning::warnings(self)
    }
}

/// A validated certificate table borrowing its bytes, with its entries in
/// a list: for tools that look at the entries. A guest request uses
/// [`ValidTable`], which allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTable<'a> {
    table: ValidTable<'a>,
    entries: Vec<CertEntry<'a>>,
}

impl<'a> CertTable<'a> {
    /// Validates a table ([`ValidTable::check`]) and lists its entries.
    pub fn parse(bytes: &'a [u8]) -> Result<CertTable<'a>, TableError> {
        let table = ValidTable::check(bytes)?;
        Ok(CertTable {
            table,
            entries: table.entries().collect(),
        })
    }

    /// The raw bytes of the table.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.table.as_bytes()
    }

    /// The entries, in table order.
    pub fn entries(&self) -> &[CertEntry<'a>] {
        &self.entries
    }

    /// Size of the entry list plus terminator.
    pub fn header_len(&self) -> usize {
        self.table.header_len()
    }

    /// Bytes a guest keeps: see [`ValidTable::used_len`].
    pub fn used_len(&self) -> usize {
        self.table.used_len()
    }

    /// The first entry of a kind.
    pub fn get(&self, kind: CertKind) -> Option<&CertEntry<'a>> {
        self.entries.iter().find(|e| e.kind == kind)
    }

    /// What is legal but probably wrong about this table.
    pub fn warnings(&self) -> Vec<TableWarning> {
        self.table.warnings()
    }
}
