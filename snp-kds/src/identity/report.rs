//! Reading a platform identity from a binary attestation report.
//!
//! The SEV-SNP `ATTESTATION_REPORT` structure is 1184 (0x4A0) bytes,
//! little-endian. The fields used here:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0x000 | 4 | `VERSION` (2, 3, 5, …) |
//! | 0x180 | 8 | `REPORTED_TCB`: the TCB the report's VCEK is issued for |
//! | 0x188 | 1 | `CPUID_FAM_ID` (version 3 and later) |
//! | 0x189 | 1 | `CPUID_MOD_ID` (version 3 and later) |
//! | 0x1A0 | 64 | `CHIP_ID` (zero if the guest policy masks it) |
//!
//! Version 2 reports carry no CPUID fields; for them the product must be
//! given, except that a chip ID whose last 56 bytes are zero is a Turin
//! one. The report's signature is not checked here: the identity only
//! chooses which VCEK to fetch, and the VCEK that comes back is checked
//! against it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{Hwid, IdentityError, PlatformId, Product, TcbLevels};

/// Size of a binary attestation report.
pub const REPORT_LEN: usize = 0x4a0;

const VERSION: usize = 0x000;
const REPORTED_TCB: usize = 0x180;
const CPUID_FAMILY: usize = 0x188;
const CPUID_MODEL: usize = 0x189;
const CHIP_ID: usize = 0x1a0;
const CHIP_ID_LEN: usize = 64;

fn u32_at(bytes: &[u8; REPORT_LEN], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8; REPORT_LEN], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The product a report says it comes from, if it says.
fn report_product(bytes: &[u8; REPORT_LEN], version: u32) -> Option<Product> {
    if version >= 3 {
        return Product::from_cpuid(bytes[CPUID_FAMILY], bytes[CPUID_MODEL]);
    }
    let chip = &bytes[CHIP_ID..CHIP_ID + CHIP_ID_LEN];
    let turin_like = chip[8..].iter().all(|&b| b == 0) && chip[..8].iter().any(|&b| b != 0);
    turin_like.then_some(Product::Turin)
}

/// Reads the identity from report bytes. `product`, if given, must agree
/// with what the report says.
pub fn from_report_bytes(
    bytes: &[u8; REPORT_LEN],
    product: Option<Product>,
) -> Result<PlatformId, IdentityError> {
    let version = u32_at(bytes, VERSION);
    if version < 2 {
        return Err(IdentityError::ReportVersion(version));
    }
    let product = match (product, report_product(bytes, version)) {
        (Some(given), Some(report)) if given != report => {
            return Err(IdentityError::ReportProductMismatch { given, report });
        }
        (Some(given), _) => given,
        (None, Some(report)) => report,
        (None, None) => return Err(IdentityError::ReportProductUnknown { version }),
    };
    let hwid = Hwid::from_bytes(&bytes[CHIP_ID..CHIP_ID + CHIP_ID_LEN], product)?;
    let tcb = TcbLevels::from_raw(u64_at(bytes, REPORTED_TCB), product);
    Ok(PlatformId { product, hwid, tcb })
}

/// Reads the identity from a binary attestation report file (as
/// `snpguest report` writes it).
pub fn from_report_file(
    path: &Path,
    product: Option<Product>,
) -> Result<PlatformId, IdentityError> {
    let read_error = |source| IdentityError::ReportRead {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut data = Vec::new();
    file.take(REPORT_LEN as u64 + 1)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    let bytes: [u8; REPORT_LEN] =
        data.as_slice()
            .try_into()
            .map_err(|_| IdentityError::ReportSize {
                path: path.to_owned(),
                len: data.len() as u64,
            })?;
    from_report_bytes(&bytes, product)
}

/// Builds report bytes holding an identity, for tests.
#[doc(hidden)]
pub fn synthetic_report(id: &PlatformId, version: u32, cpuid: Option<(u8, u8)>) -> Vec<u8> {
    let mut bytes = vec![0u8; REPORT_LEN];
    bytes[VERSION..VERSION + 4].copy_from_slice(&version.to_le_bytes());
    bytes[REPORTED_TCB..REPORTED_TCB + 8].copy_from_slice(&id.tcb.to_raw(id.product).to_le_bytes());
    if let Some((family, model)) = cpuid {
        bytes[CPUID_FAMILY] = family;
        bytes[CPUID_MODEL] = model;
    }
    let hwid = id.hwid.as_bytes();
    bytes[CHIP_ID..CHIP_ID + hwid.len()].copy_from_slice(hwid);
    bytes
}
