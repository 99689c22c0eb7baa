//! Which certificate a platform needs: its product line, its hardware
//! (chip) ID and the TCB (security patch levels) its reports are signed at.
//!
//! # The reported TCB
//!
//! Firmware reports TCB levels as one 64-bit value (`REPORTED_TCB` in an
//! attestation report, `reported_tcb_version` in SNP_PLATFORM_STATUS),
//! stored little-endian. Its bytes, least significant first:
//!
//! | byte | Milan, Genoa | Turin |
//! | --- | --- | --- |
//! | 0 | boot loader | FMC |
//! | 1 | TEE (PSP OS) | boot loader |
//! | 2 | – | TEE |
//! | 3 | – | SNP |
//! | 4, 5 | – | – |
//! | 6 | SNP | – |
//! | 7 | microcode | microcode |
//!
//! So `0xdb18000000000004` on a Milan host is `bl=4,tee=0,snp=24,ucode=219`.
//! [`TcbLevels::parse`] takes that hex value (as reports and `snphost`
//! show it) or the levels spelt out, `bl=4,tee=0,snp=24,ucode=219`, with
//! `fmc=N` added for Turin.
//!
//! # The hardware ID
//!
//! The chip ID is 64 bytes. Milan and Genoa VCEKs are issued for all 64;
//! from Turin on, only the first 8 bytes identify the chip (the rest are
//! zero) and KDS wants just those 8 in the URL. [`Hwid`] keeps exactly the
//! bytes KDS and the VCEK's hardware ID extension use.

pub mod host;
pub mod report;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// An AMD EPYC product line that KDS issues VCEKs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Product {
    /// EPYC 7003 (family 19h, models 00h–0Fh).
    Milan,
    /// EPYC 9004 and 8004 (family 19h, models 10h–1Fh and A0h–AFh).
    Genoa,
    /// EPYC 9005 (family 1Ah, models 00h–11h).
    Turin,
}

impl Product {
    /// Every product, in release order.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The name KDS uses in URLs and AMD in certificate names (`Milan`).
    pub fn kds_name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// The lower-case name used on the command line and in cache paths.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "milan",
            Product::Genoa => "genoa",
            Product::Turin => "turin",
        }
    }

    /// How many bytes of the chip ID name the chip for KDS.
    pub fn hwid_len(self) -> usize {
        match self {
            Product::Milan | Product::Genoa => 64,
            Product::Turin => 8,
        }
    }

    /// Whether the TCB has an FMC level (Turin and later).
    pub fn has_fmc(self) -> bool {
        self == Product::Turin
    }

    /// The product of a CPU family and model (CPUID Fn8000_0001 EAX).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0f) => Some(Product::Milan),
            (0x19, 0x10..=0x1f | 0xa0..=0xaf) => Some(Product::Genoa),
            (0x1a, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kds_name())
    }
}

/// The names `--product` accepts, case-insensitively, and the product
/// line each is: Bergamo (EPYC 97x4) and Siena (EPYC 8004) are Genoa
/// parts with Genoa's VCEKs and chain, as snphost and snpguest map them.
pub const PRODUCT_NAMES: [(&str, Product); 5] = [
    ("milan", Product::Milan),
    ("genoa", Product::Genoa),
    ("bergamo", Product::Genoa),
    ("siena", Product::Genoa),
    ("turin", Product::Turin),
];

impl FromStr for Product {
    type Err = IdentityError;

    /// Parses `milan`, `genoa`, `bergamo`, `siena` or `turin` in any case
    /// (see [`PRODUCT_NAMES`]).
    fn from_str(s: &str) -> Result<Product, IdentityError> {
        PRODUCT_NAMES
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
            .map(|(_, product)| product)
            .ok_or_else(|| IdentityError::UnknownProduct(s.to_owned()))
    }
}

/// Why an identity could not be determined.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// A product name other than those in [`PRODUCT_NAMES`].
    #[error("Unknown product {0:?}: give milan, genoa, bergamo, siena or turin")]
    UnknownProduct(String),
    /// A hardware ID that is not hex.
    #[error("Hardware ID is not hex: {0:?}")]
    HwidHex(String),
    /// A hardware ID of the wrong length for its product.
    #[error("A {product} hardware ID is {expected} bytes ({} hex digits), got {found} bytes", expected * 2)]
    HwidLength {
        /// The product.
        product: Product,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// An all-zero chip ID (the guest policy masked it).
    #[error("The chip ID is all zeros (masked by the guest policy): give --hwid")]
    MaskedChipId,
    /// A TCB that is neither 16 hex digits nor `bl=N,…`.
    #[error(
        "Cannot parse TCB {0:?}: give the reported TCB as 16 hex digits, \
         or bl=N,tee=N,snp=N,ucode=N (and fmc=N on Turin)"
    )]
    TcbSyntax(String),
    /// A TCB level missing from `bl=N,…`.
    #[error("TCB {tcb:?} lacks {field}=N")]
    TcbMissing {
        /// The TCB given.
        tcb: String,
        /// The missing field.
        field: &'static str,
    },
    /// `fmc=` on a product without FMC.
    #[error("{product} has no FMC level; leave fmc= out")]
    TcbNoFmc {
        /// The product.
        product: Product,
    },
    /// An attestation report file could not be read.
    #[error("Cannot read attestation report {path}")]
    ReportRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file that is not a binary attestation report.
    #[error(
        "Report {path} is {len} bytes, not a {}-byte binary ATTESTATION_REPORT",
        report::REPORT_LEN
    )]
    ReportSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// A report version this tool does not know.
    #[error("Attestation report version {0} is not supported (2 or later expected)")]
    ReportVersion(u32),
    /// A report that does not say which product made it.
    #[error("A version {version} report does not name its product: give --product")]
    ReportProductUnknown {
        /// The report version.
        version: u32,
    },
    /// `--product` contradicts the report.
    #[error("The report is from a {report} CPU, not {given}")]
    ReportProductMismatch {
        /// Given.
        given: Product,
        /// In the report.
        report: Product,
    },
    /// `/dev/sev` cannot be opened.
    #[error(
        "Cannot open /dev/sev: is this an SEV-SNP host with the ccp driver loaded, \
         and are you root?"
    )]
    HostOpen(#[source] io::Error),
    /// A firmware command failed.
    #[error("SEV firmware command {command} failed")]
    HostCommand {
        /// The command.
        command: &'static str,
        /// Why.
        #[source]
        source: sev::error::UserApiError,
    },
    /// The host CPU is not one KDS issues VCEKs for.
    #[error("This host's CPU (family {family:#x}, model {model:#x}) is not Milan, Genoa or Turin")]
    HostCpu {
        /// CPU family.
        family: u8,
        /// CPU model.
        model: u8,
    },
    /// The host's product differs from `--product`.
    #[error("This host is a {host}, not {given}")]
    HostProductMismatch {
        /// Given.
        given: Product,
        /// The host's.
        host: Product,
    },
}

/// The chip's hardware ID, as many bytes as KDS wants for its product.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hwid(Vec<u8>);

impl Hwid {
    /// Takes the ID from a chip ID (64 bytes, as firmware gives it) or from
    /// exactly the product's length. For Turin a 64-byte chip ID is cut to
    /// its first 8 bytes, which are what KDS and the VCEK use.
    pub fn from_bytes(bytes: &[u8], product: Product) -> Result<Hwid, IdentityError> {
        if bytes.iter().all(|&b| b == 0) {
            return Err(IdentityError::MaskedChipId);
        }
        let want = product.hwid_len();
        let id = if bytes.len() == want {
            bytes
        } else if bytes.len() == 64 {
            &bytes[..want]
        } else {
            return Err(IdentityError::HwidLength {
                product,
                expected: want,
                found: bytes.len(),
            });
        };
        Ok(Hwid(id.to_vec()))
    }

    /// Parses the ID from hex (upper or lower case, an optional `0x`).
    pub fn parse(hex: &str, product: Product) -> Result<Hwid, IdentityError> {
        let digits = hex.trim();
        let digits = digits.strip_prefix("0x").unwrap_or(digits);
        let bad = || IdentityError::HwidHex(hex.to_owned());
        if digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let bytes = (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?;
        Hwid::from_bytes(&bytes, product)
    }

    /// The ID's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex, as in KDS URLs and cache paths.
    pub fn to_hex(&self) -> String {
        snp_certs_verify::x509::hex(&self.0)
    }
}

impl fmt::Display for Hwid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The security patch levels a VCEK is issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcbLevels {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL: `Some` exactly on Turin.
    pub fmc: Option<u8>,
}

impl TcbLevels {
    /// Decodes a reported-TCB value with `product`'s byte layout (see the
    /// module docs).
    pub fn from_raw(raw: u64, product: Product) -> TcbLevels {
        let b = raw.to_le_bytes();
        if product.has_fmc() {
            TcbLevels {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            TcbLevels {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }

    /// Encodes the levels as a reported-TCB value for `product`.
    pub fn to_raw(&self, product: Product) -> u64 {
        let b = if product.has_fmc() {
            [
                self.fmc.unwrap_or(0),
                self.bootloader,
                self.tee,
                self.snp,
                0,
                0,
                0,
                self.microcode,
            ]
        } else {
            [
                self.bootloader,
                self.tee,
                0,
                0,
                0,
                0,
                self.snp,
                self.microcode,
            ]
        };
        u64::from_le_bytes(b)
    }

    /// Parses 16 hex digits (a reported-TCB value, optional `0x`) or
    /// `bl=N,tee=N,snp=N,ucode=N[,fmc=N]` (decimal, any order, commas or
    /// spaces between). FMC is required on Turin and refused elsewhere.
    pub fn parse(text: &str, product: Product) -> Result<TcbLevels, IdentityError> {
        let s = text.trim();
        let syntax = || IdentityError::TcbSyntax(text.to_owned());
        if !s.contains('=') {
            let digits = s.strip_prefix("0x").unwrap_or(s);
            if digits.is_empty() || digits.len() > 16 {
                return Err(syntax());
            }
            let raw = u64::from_str_radix(digits, 16).map_err(|_| syntax())?;
            return Ok(TcbLevels::from_raw(raw, product));
        }
        let mut fields: [Option<u8>; 5] = [None; 5];
        const NAMES: [&str; 5] = ["bl", "tee", "snp", "ucode", "fmc"];
        for part in s.split([',', ' ']).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(syntax)?;
            let index = NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name.trim()))
                .ok_or_else(syntax)?;
            let value: u8 = value.trim().parse().map_err(|_| syntax())?;
            if fields[index].replace(value).is_some() {
                return Err(syntax());
            }
        }
        let need = |i: usize| {
            fields[i].ok_or(IdentityError::TcbMissing {
                tcb: text.to_owned(),
                field: NAMES[i],
            })
        };
        let fmc = match (product.has_fmc(), fields[4]) {
            (true, _) => Some(need(4)?),
            (false, None) => None,
            (false, Some(_)) => return Err(IdentityError::TcbNoFmc { product }),
        };
        Ok(TcbLevels {
            bootloader: need(0)?,
            tee: need(1)?,
            snp: need(2)?,
            microcode: need(3)?,
            fmc,
        })
    }

    /// A file name for these levels: `bl3-tee0-snp8-ucode115`, with
    /// `-fmc0` added on Turin.
    pub fn cache_key(&self) -> String {
        let mut key = format!(
            "bl{}-tee{}-snp{}-ucode{}",
            self.bootloader, self.tee, self.snp, self.microcode
        );
        if let Some(fmc) = self.fmc {
            key.push_str(&format!("-fmc{fmc}"));
        }
        key
    }

    /// Whether a certificate's TCB extensions name exactly these levels.
    pub fn matches(&self, cert: &snp_certs_verify::x509::Tcb) -> bool {
        let want = |v: u8| Some(u32::from(v));
        cert.bootloader == want(self.bootloader)
            && cert.tee == want(self.tee)
            && cert.snp == want(self.snp)
            && cert.microcode == want(self.microcode)
            && cert.fmc == self.fmc.map(u32::from)
    }
}

impl fmt::Display for TcbLevels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bl={},tee={},snp={},ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )?;
        if let Some(fmc) = self.fmc {
            write!(f, ",fmc={fmc}")?;
        }
        Ok(())
    }
}

/// Everything needed to name one VCEK.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlatformId {
    /// The product line.
    pub product: Product,
    /// The chip.
    pub hwid: Hwid,
    /// The reported TCB.
    pub tcb: TcbLevels,
}

impl fmt::Display for PlatformId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} chip {} at TCB {}", self.product, self.hwid, self.tcb)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
