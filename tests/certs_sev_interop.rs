//! Interoperability with the virtee `sev` crate's table writer and reader.
//!
//! `sev`'s reader follows raw pointers without bounds checks, so it is fed
//! only tables this crate built and validated, copied into an 8-byte
//! aligned buffer (its entry struct holds `u32`s read through a pointer).

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "certs_support/mod.rs"]
mod common;

use common::*;
use sev::firmware::host::{CertTableEntry, CertType};
use snp_certs::CertKind;
use snp_certs::table::{CertTable, TableBuilder};
use uuid::Uuid;

/// `sev`'s view of a well-formed table.
fn sev_parse(table: &[u8]) -> Vec<CertTableEntry> {
    CertTable::parse(table).expect("only well-formed tables go to sev");
    // u64 storage gives the alignment sev's pointer reads need.
    let mut words = vec![0u64; table.len().div_ceil(8)];
    let ptr = words.as_mut_ptr().cast::<u8>();
    // SAFETY: `words` owns at least `table.len()` bytes at `ptr`, and
    // nothing else refers to them while this slice lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, table.len()) };
    bytes.copy_from_slice(table);
    CertTableEntry::vec_bytes_to_cert_table(bytes).unwrap()
}

#[test]
fn sev_parses_the_tables_we_build() {
    let other = Uuid::parse_str("0b5c2d3e-0000-4000-8000-000000000001").unwrap();
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, der("amd/milan/vcek.der")).unwrap();
    b.add(CertKind::Ask, der("amd/milan/ask.pem")).unwrap();
    b.add(CertKind::Ark, der("amd/milan/ark.pem")).unwrap();
    b.add(CertKind::Crl, der("synthetic/crl.der")).unwrap();
    b.add_guid(other, b"opaque".to_vec()).unwrap();
    let table = b.build().unwrap();
    let entries = sev_parse(&table);
    let types: Vec<CertType> = entries.iter().map(|e| e.cert_type.clone()).collect();
    assert_eq!(
        types,
        [
            CertType::VCEK,
            CertType::ASK,
            CertType::ARK,
            CertType::CRL,
            CertType::OTHER(other)
        ]
    );
    assert_eq!(entries[0].data(), der("amd/milan/vcek.der"));
    assert_eq!(entries[2].data(), der("amd/milan/ark.pem"));
    assert_eq!(entries[4].data(), b"opaque");
    // And the `build` command's output, too.
    assert_eq!(sev_parse(&chain_table("turin")).len(), 3);
}

#[test]
fn we_parse_the_tables_sev_builds() {
    let entries = vec![
        CertTableEntry::new(CertType::ARK, der("amd/genoa/ark.pem")),
        CertTableEntry::new(CertType::ASK, der("amd/genoa/ask.pem")),
        CertTableEntry::new(CertType::VLEK, der("synthetic/vlek.der")),
    ];
    let bytes = CertTableEntry::cert_table_to_vec_bytes(&entries).unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    let kinds: Vec<CertKind> = table.entries().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [CertKind::Ark, CertKind::Ask, CertKind::Vlek]);
    assert_eq!(
        table.get(CertKind::Ask).unwrap().data,
        der("amd/genoa/ask.pem")
    );
    assert!(table.warnings().is_empty());
    // Same layout as ours: entries in order, packed after the terminator.
    let mut b = TableBuilder::new();
    for e in &entries {
        b.add_guid(Uuid::parse_str(&e.guid_string()).unwrap(), e.data.clone())
            .unwrap();
    }
    assert_eq!(b.build().unwrap(), bytes);
}
