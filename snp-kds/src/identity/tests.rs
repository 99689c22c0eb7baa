use super::report::{REPORT_LEN, from_report_bytes, synthetic_report};
use super::*;

const MILAN_HWID: &str = "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc\
                          15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6";

#[test]
fn products_parse_and_name_themselves() {
    assert_eq!("milan".parse::<Product>().unwrap(), Product::Milan);
    assert_eq!(" Genoa".parse::<Product>().unwrap(), Product::Genoa);
    assert_eq!("TURIN".parse::<Product>().unwrap(), Product::Turin);
    // Bergamo and Siena are Genoa parts, as snpguest maps them.
    assert_eq!("bergamo".parse::<Product>().unwrap(), Product::Genoa);
    assert_eq!("Siena".parse::<Product>().unwrap(), Product::Genoa);
    let e = "rome".parse::<Product>().unwrap_err();
    assert!(
        e.to_string()
            .contains("milan, genoa, bergamo, siena or turin"),
        "{e}"
    );
    assert_eq!(Product::Turin.kds_name(), "Turin");
    assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
    assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
    assert_eq!(Product::from_cpuid(0x19, 0xa0), Some(Product::Genoa));
    assert_eq!(Product::from_cpuid(0x1a, 0x02), Some(Product::Turin));
    assert_eq!(Product::from_cpuid(0x17, 0x31), None);
}

#[test]
fn milan_and_genoa_tcb_layout() {
    // bl=byte0, tee=byte1, snp=byte6, ucode=byte7.
    let t = TcbLevels::parse("0xdb18000000000004", Product::Milan).unwrap();
    assert_eq!(
        t,
        TcbLevels {
            bootloader: 4,
            tee: 0,
            snp: 0x18,
            microcode: 0xdb,
            fmc: None
        }
    );
    assert_eq!(t.to_raw(Product::Milan), 0xdb18_0000_0000_0004);
    assert_eq!(t.to_string(), "bl=4,tee=0,snp=24,ucode=219");
    assert_eq!(TcbLevels::parse(&t.to_string(), Product::Genoa).unwrap(), t);
    assert_eq!(t.cache_key(), "bl4-tee0-snp24-ucode219");
}

#[test]
fn turin_tcb_layout_has_fmc() {
    // fmc=byte0, bl=byte1, tee=byte2, snp=byte3, ucode=byte7.
    let t = TcbLevels::parse("4D00000003020105", Product::Turin).unwrap();
    assert_eq!(
        t,
        TcbLevels {
            fmc: Some(5),
            bootloader: 1,
            tee: 2,
            snp: 3,
            microcode: 0x4d,
        }
    );
    assert_eq!(t.to_raw(Product::Turin), 0x4d00_0000_0302_0105);
    assert_eq!(t.to_string(), "bl=1,tee=2,snp=3,ucode=77,fmc=5");
    assert_eq!(t.cache_key(), "bl1-tee2-snp3-ucode77-fmc5");
    // Turin needs fmc; the others refuse it.
    let e = TcbLevels::parse("bl=1,tee=2,snp=3,ucode=77", Product::Turin).unwrap_err();
    assert!(e.to_string().contains("fmc=N"), "{e}");
    let e = TcbLevels::parse("bl=1,tee=2,snp=3,ucode=77,fmc=0", Product::Milan).unwrap_err();
    assert!(matches!(e, IdentityError::TcbNoFmc { .. }), "{e}");
}

#[test]
fn tcb_syntax_errors() {
    for bad in [
        "",
        "xyz",
        "0x",
        "11112222333344445",
        "bl=1,tee=2,snp=3,ucode=256",
        "bl=1,bl=2,tee=0,snp=0,ucode=0",
        "bl=1,tee=2,snp=3,ucode=4,speed=9",
        "bl:1",
    ] {
        assert!(TcbLevels::parse(bad, Product::Milan).is_err(), "{bad:?}");
    }
    let e = TcbLevels::parse("bl=1,tee=2,ucode=3", Product::Milan).unwrap_err();
    assert!(e.to_string().contains("snp=N"), "{e}");
    // Spaces work as separators, order does not matter.
    let t = TcbLevels::parse("ucode=9 snp=0 tee=0 bl=0 fmc=0", Product::Turin).unwrap();
    assert_eq!(t.microcode, 9);
}

#[test]
fn hwids_have_their_products_length() {
    let h = Hwid::parse(MILAN_HWID, Product::Milan).unwrap();
    assert_eq!(h.as_bytes().len(), 64);
    assert_eq!(h.to_hex(), MILAN_HWID);
    assert_eq!(
        Hwid::parse(&MILAN_HWID.to_uppercase(), Product::Genoa).unwrap(),
        h
    );
    let e = Hwid::parse("1e550a8ee5cf9f4d", Product::Milan).unwrap_err();
    assert!(e.to_string().contains("128 hex digits"), "{e}");
    // Turin: 8 bytes, or the first 8 of a 64-byte chip ID.
    let t = Hwid::parse("1e550a8ee5cf9f4d", Product::Turin).unwrap();
    let mut long = t.to_hex();
    long.push_str(&"0".repeat(112));
    assert_eq!(Hwid::parse(&long, Product::Turin).unwrap(), t);
    assert_eq!(
        Hwid::parse(MILAN_HWID, Product::Turin).unwrap().to_hex(),
        MILAN_HWID[..16]
    );
    assert!(Hwid::parse(&MILAN_HWID[..40], Product::Turin).is_err());
    assert!(matches!(
        Hwid::parse(&"0".repeat(128), Product::Milan),
        Err(IdentityError::MaskedChipId)
    ));
    assert!(Hwid::parse("xyz", Product::Turin).is_err());
    assert!(Hwid::parse("abc", Product::Turin).is_err());
}

fn milan_id() -> PlatformId {
    PlatformId {
        product: Product::Milan,
        hwid: Hwid::parse(MILAN_HWID, Product::Milan).unwrap(),
        tcb: TcbLevels::parse("bl=3,tee=0,snp=8,ucode=115", Product::Milan).unwrap(),
    }
}

#[test]
fn report_offsets() {
    let id = milan_id();
    let bytes = synthetic_report(&id, 3, Some((0x19, 0x01)));
    assert_eq!(bytes.len(), REPORT_LEN);
    // REPORTED_TCB at 0x180, CHIP_ID at 0x1A0, as in the ABI spec.
    assert_eq!(bytes[0x180], 3);
    assert_eq!(bytes[0x186], 8);
    assert_eq!(bytes[0x187], 115);
    assert_eq!(&bytes[0x1a0..0x1e0], id.hwid.as_bytes());
    let bytes: [u8; REPORT_LEN] = bytes.try_into().unwrap();
    assert_eq!(from_report_bytes(&bytes, None).unwrap(), id);
    assert_eq!(from_report_bytes(&bytes, Some(Product::Milan)).unwrap(), id);
    let e = from_report_bytes(&bytes, Some(Product::Genoa)).unwrap_err();
    assert!(
        matches!(e, IdentityError::ReportProductMismatch { .. }),
        "{e}"
    );
}

#[test]
fn version_2_reports_need_the_product_unless_turin() {
    let id = milan_id();
    let bytes: [u8; REPORT_LEN] = synthetic_report(&id, 2, None).try_into().unwrap();
    assert!(matches!(
        from_report_bytes(&bytes, None),
        Err(IdentityError::ReportProductUnknown { version: 2 })
    ));
    assert_eq!(from_report_bytes(&bytes, Some(Product::Milan)).unwrap(), id);
    let turin = PlatformId {
        product: Product::Turin,
        hwid: Hwid::parse("1e550a8ee5cf9f4d", Product::Turin).unwrap(),
        tcb: TcbLevels::parse("bl=0,tee=0,snp=0,ucode=9,fmc=0", Product::Turin).unwrap(),
    };
    let bytes: [u8; REPORT_LEN] = synthetic_report(&turin, 2, None).try_into().unwrap();
    assert_eq!(from_report_bytes(&bytes, None).unwrap(), turin);
    let mut masked = bytes;
    masked[0x1a0..0x1e0].fill(0);
    assert!(matches!(
        from_report_bytes(&masked, Some(Product::Turin)),
        Err(IdentityError::MaskedChipId)
    ));
    let mut old = bytes;
    old[0] = 1;
    assert!(matches!(
        from_report_bytes(&old, None),
        Err(IdentityError::ReportVersion(1))
    ));
}

#[test]
fn report_files_must_be_whole_reports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.bin");
    std::fs::write(&path, synthetic_report(&milan_id(), 5, Some((0x19, 0x01)))).unwrap();
    assert_eq!(report::from_report_file(&path, None).unwrap(), milan_id());
    std::fs::write(&path, [0u8; 100]).unwrap();
    let e = report::from_report_file(&path, None).unwrap_err();
    assert!(e.to_string().contains("1184-byte"), "{e}");
    let e = report::from_report_file(&dir.path().join("none"), None).unwrap_err();
    assert!(matches!(e, IdentityError::ReportRead { .. }), "{e}");
}

#[test]
fn no_dev_sev_is_a_clear_error() {
    if std::path::Path::new("/dev/sev").exists() {
        return; // An SNP host: nothing to show here.
    }
    let e = host::read_host(None).unwrap_err();
    assert!(matches!(e, IdentityError::HostOpen(_)), "{e:?}");
    assert!(e.to_string().contains("/dev/sev"), "{e}");
}
