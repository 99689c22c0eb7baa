//! Well-known certificate GUIDs of the GHCB certificate table.
//!
//! Each entry of an SNP certificate table names its certificate by a GUID.
//! The GUIDs below are the ones AMD, the Linux kernel and the public tools
//! (virtee `sev`, `snphost`, `snpguest`, go-sev-guest) agree on. They are
//! stored in the table in RFC 4122 byte order, i.e. the order in which
//! [`uuid::Uuid`] prints them: `63da758d-e664-...` is stored as the bytes
//! `63 da 75 8d e6 64 ...`.
//!
//! Some hosts have been seen writing GUIDs with the first three fields
//! byte-swapped (the Microsoft "mixed-endian" GUID layout).
//! [`CertKind::from_swapped_guid`] recognises those so that validation can
//! warn about them.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

/// What a certificate table entry holds, as told by its GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// Versioned Chip Endorsement Key: signs reports on this chip and TCB.
    Vcek,
    /// Versioned Loaded Endorsement Key: a cloud provider's report signer.
    Vlek,
    /// AMD SEV Key (or, for VLEK chains, AMD SEV VLEK Key, ASVK).
    Ask,
    /// AMD Root Key, self-signed.
    Ark,
    /// Certificate revocation list for the ASK/ASVK.
    Crl,
    /// Extra platform information (used by go-sev-guest only).
    ExtraPlatformInfo,
    /// Any other GUID: kept and served as is.
    Other,
}

/// The GUIDs of the well-known kinds, in table byte order.
const KNOWN: [(CertKind, Uuid); 6] = [
    (
        CertKind::Vcek,
        Uuid::from_u128(0x63da758d_e664_4564_adc5_f4b93be8accd),
    ),
    (
        CertKind::Vlek,
        Uuid::from_u128(0xa8074bc2_a25a_483e_aae6_39c045a0b8a1),
    ),
    (
        CertKind::Ask,
        Uuid::from_u128(0x4ab7b379_bbac_4fe4_a02f_05aef327c782),
    ),
    (
        CertKind::Ark,
        Uuid::from_u128(0xc0b406a4_a803_4952_9743_3fb6014cd0ae),
    ),
    (
        CertKind::Crl,
        Uuid::from_u128(0x92f81bc3_5811_4d3d_97ff_d19f88dc67ea),
    ),
    (
        CertKind::ExtraPlatformInfo,
        Uuid::from_u128(0xecae0c0f_9502_43b1_afa2_0ae2e0d565b6),
    ),
];

impl CertKind {
    /// The kind a GUID names; [`CertKind::Other`] for GUIDs not listed here.
    pub fn from_guid(guid: &Uuid) -> CertKind {
        KNOWN
            .iter()
            .find(|(_, known)| known == guid)
            .map_or(CertKind::Other, |(kind, _)| *kind)
    }

    /// The well-known kind whose GUID equals `guid` with its first three
    /// fields byte-swapped, if any: a sign of a writer that used the
    /// mixed-endian layout by mistake.
    pub fn from_swapped_guid(guid: &Uuid) -> Option<CertKind> {
        let swapped = Uuid::from_bytes_le(*guid.as_bytes());
        match CertKind::from_guid(&swapped) {
            CertKind::Other => None,
            kind => Some(kind),
        }
    }

    /// The GUID of a well-known kind; `None` for [`CertKind::Other`].
    pub fn guid(self) -> Option<Uuid> {
        KNOWN
            .iter()
            .find(|(kind, _)| *kind == self)
            .map(|(_, guid)| *guid)
    }

    /// Short lower-case name, as used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            CertKind::Vcek => "vcek",
            CertKind::Vlek => "vlek",
            CertKind::Ask => "ask",
            CertKind::Ark => "ark",
            CertKind::Crl => "crl",
            CertKind::ExtraPlatformInfo => "extra-platform-info",
            CertKind::Other => "other",
        }
    }
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertKind::Vcek => "VCEK",
            CertKind::Vlek => "VLEK",
            CertKind::Ask => "ASK/ASVK",
            CertKind::Ark => "ARK",
            CertKind::Crl => "CRL",
            CertKind::ExtraPlatformInfo => "extra platform info",
            CertKind::Other => "other",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_guids_round_trip() {
        for (kind, guid) in KNOWN {
            assert_eq!(CertKind::from_guid(&guid), kind);
            assert_eq!(kind.guid(), Some(guid));
        }
        assert_eq!(CertKind::Other.guid(), None);
    }

    #[test]
    fn guid_bytes_are_in_rfc4122_order() {
        let vcek = CertKind::Vcek.guid().unwrap();
        assert_eq!(&vcek.as_bytes()[..4], &[0x63, 0xda, 0x75, 0x8d]);
        assert_eq!(vcek.to_string(), "63da758d-e664-4564-adc5-f4b93be8accd");
    }

    #[test]
    fn swapped_guid_is_recognised() {
        let ark = CertKind::Ark.guid().unwrap();
        let (a, b, c, d) = ark.as_fields();
        let swapped = Uuid::from_fields_le(a, b, c, d);
        assert_ne!(swapped, ark);
        assert_eq!(CertKind::from_guid(&swapped), CertKind::Other);
        assert_eq!(CertKind::from_swapped_guid(&swapped), Some(CertKind::Ark));
        assert_eq!(CertKind::from_swapped_guid(&ark), None);
    }
}
