use super::*;

fn der(tag: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0x30];
    v.extend(std::iter::repeat_n(tag, len.saturating_sub(1)));
    v
}

fn sample() -> Vec<u8> {
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, der(1, 1300)).unwrap();
    b.add(CertKind::Ask, der(2, 1600)).unwrap();
    b.add(CertKind::Ark, der(3, 1500)).unwrap();
    b.build().unwrap()
}

/// Writes one raw entry into a table buffer.
fn put_entry(table: &mut [u8], index: usize, guid: Uuid, offset: u32, length: u32) {
    let at = index * ENTRY_SIZE;
    table[at..at + 16].copy_from_slice(guid.as_bytes());
    table[at + 16..at + 20].copy_from_slice(&offset.to_le_bytes());
    table[at + 20..at + 24].copy_from_slice(&length.to_le_bytes());
}

#[test]
fn builder_round_trips_through_parser() {
    let bytes = sample();
    let table = CertTable::parse(&bytes).unwrap();
    let kinds: Vec<_> = table.entries().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [CertKind::Vcek, CertKind::Ask, CertKind::Ark]);
    assert_eq!(table.header_len(), 4 * ENTRY_SIZE);
    assert_eq!(table.entries()[0].offset as usize, 4 * ENTRY_SIZE);
    assert_eq!(table.entries()[0].data, der(1, 1300).as_slice());
    assert_eq!(table.entries()[2].data, der(3, 1500).as_slice());
    assert_eq!(bytes.len(), 4 * ENTRY_SIZE + 1300 + 1600 + 1500);
    assert!(table.warnings().is_empty(), "{:?}", table.warnings());
    assert_eq!(table.used_len(), bytes.len());
    assert_eq!(table.get(CertKind::Ask).unwrap().encoding(), Encoding::Der);
}

#[test]
fn empty_table_is_valid() {
    let table = CertTable::parse(&EMPTY_TABLE).unwrap();
    assert!(table.entries().is_empty());
    assert!(table.warnings().is_empty());
    assert_eq!(table.used_len(), ENTRY_SIZE);
    assert_eq!(TableBuilder::new().build().unwrap(), EMPTY_TABLE);
}

#[test]
fn unknown_guid_is_kept_as_other() {
    let guid = Uuid::from_u128(0x1234);
    let mut b = TableBuilder::new();
    b.add(CertKind::Vlek, der(1, 10)).unwrap();
    b.add_guid(guid, der(9, 10)).unwrap();
    let bytes = b.build().unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert_eq!(table.entries()[1].kind, CertKind::Other);
    assert_eq!(table.entries()[1].guid, guid);
}

#[test]
fn missing_terminator_is_rejected() {
    let bytes = sample();
    // Only the entries, no terminator and no data.
    assert_eq!(
        CertTable::parse(&bytes[..3 * ENTRY_SIZE]),
        Err(TableError::MissingTerminator { entries: 3 })
    );
    assert_eq!(
        CertTable::parse(&bytes[..3 * ENTRY_SIZE + 10]),
        Err(TableError::MissingTerminator { entries: 3 })
    );
    assert_eq!(
        CertTable::parse(&[]),
        Err(TableError::MissingTerminator { entries: 0 })
    );
}

#[test]
fn malformed_terminator_is_rejected() {
    let mut bytes = EMPTY_TABLE.to_vec();
    bytes[20] = 1;
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::MalformedTerminator { index: 0 })
    );
}

#[test]
fn offset_inside_header_is_rejected() {
    let mut bytes = sample();
    let vcek = CertKind::Vcek.guid().unwrap();
    put_entry(&mut bytes, 0, vcek, 80, 1300);
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::OffsetInHeader {
            index: 0,
            kind: CertKind::Vcek,
            offset: 80,
            header_len: 96
        })
    );
}

#[test]
fn entry_past_end_is_rejected() {
    let mut bytes = sample();
    let ark = CertKind::Ark.guid().unwrap();
    let offset = (bytes.len() - 1500) as u32;
    put_entry(&mut bytes, 2, ark, offset, 1501);
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::PastEnd {
            index: 2,
            kind: CertKind::Ark,
            offset,
            end: u64::from(offset) + 1501,
            size: bytes.len()
        })
    );
}

#[test]
fn overflowing_entry_is_rejected() {
    let mut bytes = sample();
    let ask = CertKind::Ask.guid().unwrap();
    put_entry(&mut bytes, 1, ask, 1000, u32::MAX - 10);
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::EntryOverflow {
            index: 1,
            kind: CertKind::Ask,
            offset: 1000,
            length: u32::MAX - 10
        })
    );
}

#[test]
fn zero_length_entry_is_rejected() {
    let mut bytes = sample();
    let vcek = CertKind::Vcek.guid().unwrap();
    put_entry(&mut bytes, 0, vcek, 96, 0);
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::ZeroLength {
            index: 0,
            kind: CertKind::Vcek
        })
    );
    assert_eq!(
        TableBuilder::new()
            .add(CertKind::Ark, Vec::new())
            .map(|_| ()),
        Err(TableError::ZeroLength {
            index: 0,
            kind: CertKind::Ark
        })
    );
}

#[test]
fn duplicate_guid_is_rejected() {
    let mut bytes = sample();
    let vcek = CertKind::Vcek.guid().unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    let (offset, length) = (
        table.entries()[2].offset,
        table.entries()[2].data.len() as u32,
    );
    put_entry(&mut bytes, 2, vcek, offset, length);
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::DuplicateGuid {
            index: 2,
            first: 0,
            guid: vcek,
            kind: CertKind::Vcek
        })
    );
    let mut b = TableBuilder::new();
    b.add(CertKind::Ark, der(1, 5)).unwrap();
    assert!(matches!(
        b.add(CertKind::Ark, der(1, 5)),
        Err(TableError::DuplicateGuid {
            index: 1,
            first: 0,
            ..
        })
    ));
}

#[test]
fn null_guid_and_other_kind_are_refused_by_builder() {
    let mut b = TableBuilder::new();
    assert_eq!(
        b.add(CertKind::Other, der(1, 5)).map(|_| ()),
        Err(TableError::NullGuid { index: 0 })
    );
    assert_eq!(
        b.add_guid(Uuid::nil(), der(1, 5)).map(|_| ()),
        Err(TableError::NullGuid { index: 0 })
    );
}

#[test]
fn oversized_table_is_rejected() {
    let mut bytes = vec![0u8; MAX_TABLE_SIZE + 1];
    bytes[..ENTRY_SIZE].fill(0);
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::TooLarge {
            size: MAX_TABLE_SIZE + 1,
            max: MAX_TABLE_SIZE
        })
    );
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, der(1, MAX_TABLE_SIZE)).unwrap();
    assert!(matches!(b.build(), Err(TableError::TooLarge { .. })));
}

#[test]
fn table_above_linux_limit_warns() {
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, der(1, LINUX_GUEST_MAX_SIZE)).unwrap();
    let bytes = b.build().unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert_eq!(
        table.warnings(),
        [TableWarning::ExceedsLinuxGuestLimit { size: bytes.len() }]
    );
    // Exactly at the limit: no warning.
    let mut b = TableBuilder::new();
    b.add(
        CertKind::Vcek,
        der(1, LINUX_GUEST_MAX_SIZE - 2 * ENTRY_SIZE),
    )
    .unwrap();
    let bytes = b.build().unwrap();
    assert_eq!(bytes.len(), LINUX_GUEST_MAX_SIZE);
    assert!(CertTable::parse(&bytes).unwrap().warnings().is_empty());
}

#[test]
fn pem_entry_warns() {
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, der(1, 100)).unwrap();
    b.add(
        CertKind::Ark,
        b"\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_vec(),
    )
    .unwrap();
    let bytes = b.build().unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert_eq!(table.entries()[1].encoding(), Encoding::Pem);
    assert_eq!(
        table.warnings(),
        [TableWarning::PemEncoded {
            index: 1,
            kind: CertKind::Ark
        }]
    );
}

#[test]
fn swapped_guid_warns() {
    let vcek = CertKind::Vcek.guid().unwrap();
    let (a, b2, c, d) = vcek.as_fields();
    let swapped = Uuid::from_fields_le(a, b2, c, d);
    let mut b = TableBuilder::new();
    b.add(CertKind::Vlek, der(1, 10)).unwrap();
    b.add_guid(swapped, der(1, 10)).unwrap();
    let bytes = b.build().unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert_eq!(
        table.warnings(),
        [TableWarning::SwappedGuid {
            index: 1,
            guid: swapped,
            looks_like: CertKind::Vcek
        }]
    );
}

#[test]
fn table_without_signer_warns() {
    let mut b = TableBuilder::new();
    b.add(CertKind::Ask, der(1, 10)).unwrap();
    b.add(CertKind::Ark, der(1, 10)).unwrap();
    let bytes = b.build().unwrap();
    assert_eq!(
        CertTable::parse(&bytes).unwrap().warnings(),
        [TableWarning::NoReportSigner]
    );
}

#[test]
fn encoding_detection() {
    assert_eq!(Encoding::detect(&[0x30, 0x82]), Encoding::Der);
    assert_eq!(Encoding::detect(b"-----BEGIN X509 CRL-----"), Encoding::Pem);
    assert_eq!(Encoding::detect(b"hello"), Encoding::Unknown);
    assert_eq!(Encoding::detect(&[]), Encoding::Unknown);
}

#[test]
fn parser_never_panics_on_garbage() {
    // A cheap deterministic sweep: every prefix and single-byte corruption of
    // a valid table parses or fails cleanly, and accepted entries stay in
    // bounds.
    let bytes = sample();
    for len in 0..200 {
        let _ = CertTable::parse(&bytes[..len]);
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2000 {
        let mut copy = bytes.clone();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state % 96) as usize;
        copy[at] = (state >> 32) as u8;
        let checked = ValidTable::check(&copy);
        let parsed = CertTable::parse(&copy);
        // The header alone (and the size) gives the same verdict.
        let head = &copy[..copy.len().min((MAX_ENTRIES + 1) * ENTRY_SIZE)];
        assert_eq!(
            ValidTable::check_layout(head, copy.len()),
            checked.as_ref().map(|t| t.len()).map_err(Clone::clone)
        );
        assert_eq!(checked.as_ref().err(), parsed.as_ref().err());
        if let (Ok(checked), Ok(parsed)) = (checked, &parsed) {
            assert!(checked.entries().eq(parsed.entries().iter().cloned()));
            assert_eq!(checked.used_len(), parsed.used_len());
        }
        if let Ok(table) = parsed {
            for e in table.entries() {
                assert!(e.offset as usize + e.data.len() <= copy.len());
                assert!(e.offset as usize >= table.header_len());
            }
        }
    }
}

#[test]
fn too_many_entries_are_rejected() {
    let mut b = TableBuilder::new();
    for i in 0..MAX_ENTRIES {
        b.add_guid(Uuid::from_u128(i as u128 + 1), der(1, 4))
            .unwrap();
    }
    assert_eq!(
        b.add_guid(Uuid::from_u128(1000), der(1, 4)).map(|_| ()),
        Err(TableError::TooManyEntries { max: MAX_ENTRIES })
    );
    let full = b.build().unwrap();
    assert_eq!(
        CertTable::parse(&full).unwrap().entries().len(),
        MAX_ENTRIES
    );
    // One more raw entry in front of the terminator.
    let mut bytes = vec![0u8; (MAX_ENTRIES + 2) * ENTRY_SIZE + 8];
    for i in 0..=MAX_ENTRIES {
        let offset = ((MAX_ENTRIES + 2) * ENTRY_SIZE) as u32;
        put_entry(&mut bytes, i, Uuid::from_u128(i as u128 + 1), offset, 8);
    }
    assert_eq!(
        CertTable::parse(&bytes),
        Err(TableError::TooManyEntries { max: MAX_ENTRIES })
    );
}

#[test]
fn the_guest_limit_admits_16_kib_and_refuses_one_byte_more_unless_allowed() {
    assert!(!exceeds_guest_limit(0, false));
    assert!(!exceeds_guest_limit(LINUX_GUEST_MAX_SIZE as u64, false));
    assert!(exceeds_guest_limit(LINUX_GUEST_MAX_SIZE as u64 + 1, false));
    assert!(!exceeds_guest_limit(LINUX_GUEST_MAX_SIZE as u64 + 1, true));
    assert!(exceeds_guest_limit(u64::MAX, false));
}

#[test]
fn a_valid_table_lists_what_the_parsed_one_does() {
    let bytes = sample();
    let checked = ValidTable::check(&bytes).unwrap();
    let parsed = CertTable::parse(&bytes).unwrap();
    assert_eq!(checked.len(), 3);
    assert!(!checked.is_empty());
    assert!(checked.entries().eq(parsed.entries().iter().cloned()));
    assert_eq!(checked.header_len(), parsed.header_len());
    assert_eq!(checked.warnings(), parsed.warnings());
    assert!(ValidTable::check(&EMPTY_TABLE).unwrap().is_empty());
}
