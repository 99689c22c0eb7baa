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
//! [`ValidTable::check`] is the one validation: it checks every entry and
//! rejects, with its own [`TableError`], a table without terminator, an
//! entry pointing into the header, an entry past the end of the table or
//! whose `offset + length` overflows 32 bits, a zero-length entry, a GUID
//! used twice, more than [`MAX_ENTRIES`] entries and a table larger than
//! [`MAX_TABLE_SIZE`]. It allocates nothing (it runs under the lock on
//! every guest request); [`CertTable::parse`] adds the list of entries for
//! tools. A valid table then reports, without rejecting,
//! [`TableWarning`]s: a table too large for Linux guests, PEM-encoded
//! entries, GUIDs that look byte-swapped, and a table without report
//! signer.
//!
//! Validation never reads outside the given slice, whatever its content:
//! every offset comes from an untrusted file.
//!
//! # The guest limit
//!
//! Linux guests offer at most [`LINUX_GUEST_MAX_SIZE`] bytes for the
//! table. [`exceeds_guest_limit`] is the one comparison with that limit:
//! serving a request, validating a configuration, the operator tool and
//! the host check all ask it.

mod builder;
mod parse;
mod warning;

pub use builder::TableBuilder;
pub use parse::{CertEntry, CertTable, Encoding, ValidTable};
use thiserror::Error;
use uuid::Uuid;
pub use warning::TableWarning;

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

/// Whether a table of `size` bytes is refused because a Linux guest
/// cannot receive it: it is larger than [`LINUX_GUEST_MAX_SIZE`] and
/// `allow_large` (the setting for guests known to offer a larger buffer)
/// is off. The one place the limit is compared; everything that checks
/// it calls this.
pub fn exceeds_guest_limit(size: u64, allow_large: bool) -> bool {
    !allow_large && size > LINUX_GUEST_MAX_SIZE as u64
}

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

#[cfg(test)]
mod tests;
