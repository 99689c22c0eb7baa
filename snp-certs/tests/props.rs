//! Property tests (256 cases each) of the table parser and the serve path:
//! the parser never panics and what it accepts is in bounds, built tables
//! parse back to what was put in, and a request with any `gpa` and
//! `npages` gets one of the four answers without a byte written outside
//! the table's place in guest memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use snp_certs::serve::PAGE_SIZE;
use snp_certs::table::{CertTable, TableBuilder};
use snp_certs::{BusyBudget, CertsConfig, CertsReader, CertsRequest, OutcomeKind, Reason, serve};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Up to 4 entries with distinct GUIDs and 0-600 bytes each.
fn entries() -> impl Strategy<Value = Vec<(u128, Vec<u8>)>> {
    prop::collection::btree_map(
        any::<u128>(),
        prop::collection::vec(any::<u8>(), 1..600),
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn build(entries: &[(u128, Vec<u8>)]) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (guid, data) in entries {
        b.add_guid(uuid::Uuid::from_u128(*guid), data.clone())
            .unwrap();
    }
    b.build().unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_and_stays_in_bounds(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(table) = CertTable::parse(&bytes) {
            let header = (table.entries().len() + 1) * 24;
            for e in table.entries() {
                let start = e.offset as usize;
                prop_assert!(start >= header);
                prop_assert!(start + e.data.len() <= bytes.len());
                prop_assert_eq!(e.data, &bytes[start..start + e.data.len()]);
            }
        }
    }

    #[test]
    fn built_tables_parse_back(entries in entries()) {
        let bytes = build(&entries);
        let table = CertTable::parse(&bytes).unwrap();
        prop_assert_eq!(table.entries().len(), entries.len());
        for (e, (guid, data)) in table.entries().iter().zip(&entries) {
            prop_assert_eq!(e.guid, uuid::Uuid::from_u128(*guid));
            prop_assert_eq!(e.data, &data[..]);
        }
    }

    #[test]
    fn any_request_gets_a_legal_answer_and_writes_only_the_table(
        entries in entries(),
        gpa_page in 0u64..40,
        misalign in prop_oneof![Just(0u64), 1u64..4096],
        npages in prop_oneof![0u64..8, any::<u64>()],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs.bin");
        let table = build(&entries);
        std::fs::write(&path, &table).unwrap();
        // Two regions of 8 pages with a hole of 8 pages between them.
        let ranges = [(GuestAddress(0), 0x8000), (GuestAddress(0x10000), 0x8000)];
        let memory = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        for (start, size) in ranges {
            memory.write_slice(&vec![0xa5; size], start).unwrap();
        }
        let gpa = gpa_page * PAGE_SIZE + misalign;
        let mut config = CertsConfig::with_file(&path);
        config.certs_timeout = 0;
        let mut reader = CertsReader::new();
        let outcome = serve(&mut reader, &config, &BusyBudget::new(), CertsRequest { gpa, npages }, &memory);
        let written: &[u8] = match outcome.kind {
            OutcomeKind::Delivered => {
                prop_assert_eq!(outcome.reason, Reason::Served);
                &table
            }
            OutcomeKind::NeedPages => {
                prop_assert_eq!(outcome.npages, (table.len() as u64).div_ceil(PAGE_SIZE));
                &[]
            }
            OutcomeKind::Failed => {
                prop_assert!(matches!(
                    outcome.reason,
                    Reason::GpaMisaligned | Reason::BufferOverflows | Reason::OutsideGuestRam
                ));
                &[]
            }
            OutcomeKind::Busy => {
                prop_assert!(false, "busy with nobody holding the lock");
                &[]
            }
        };
        for (start, size) in ranges {
            let mut bytes = vec![0; size];
            memory.read_slice(&mut bytes, start).unwrap();
            for (i, b) in bytes.iter().enumerate() {
                let addr = start.0 + i as u64;
                let expected = if addr >= gpa && addr - gpa < written.len() as u64 {
                    written[(addr - gpa) as usize]
                } else {
                    0xa5
                };
                prop_assert_eq!(*b, expected, "byte {:#x}", addr);
            }
        }
    }
}
