//! Writing a table: certificates packed right after the terminator in the
//! order they were added, as `snphost` and the virtee `sev` crate write
//! them.

use uuid::Uuid;

use super::{EMPTY_TABLE, ENTRY_SIZE, MAX_ENTRIES, MAX_TABLE_SIZE, TableError};
use crate::guid::CertKind;

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
