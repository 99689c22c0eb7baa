//! What is legal in a table but probably wrong: reported, never refused.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use super::{Encoding, LINUX_GUEST_MAX_SIZE, ValidTable, exceeds_guest_limit};
use crate::guid::CertKind;

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

/// The warnings of a valid table, in entry order (the size first).
pub(super) fn warnings(table: &ValidTable<'_>) -> Vec<TableWarning> {
    let mut warnings = Vec::new();
    let size = table.as_bytes().len();
    if exceeds_guest_limit(size as u64, false) {
        warnings.push(TableWarning::ExceedsLinuxGuestLimit { size });
    }
    let mut has_signer = false;
    for (index, entry) in table.entries().enumerate() {
        has_signer |= matches!(entry.kind, CertKind::Vcek | CertKind::Vlek);
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
    if !table.is_empty() && !has_signer {
        warnings.push(TableWarning::NoReportSigner);
    }
    warnings
}
