//! Where KDS keeps each document.
//!
//! AMD's Key Distribution Service lays its documents out by key family
//! (`vcek` or `vlek`), API version (`v1`) and product name:
//!
//! | document | path | format |
//! | --- | --- | --- |
//! | a VCEK | `/vcek/v1/{product}/{hwid}?blSPL=…&teeSPL=…&snpSPL=…&ucodeSPL=…` | DER |
//! | (Turin) | the same with `fmcSPL=…` too | DER |
//! | ASK and ARK | `/vcek/v1/{product}/cert_chain` | PEM, ASK first |
//! | ARK's CRL for the ASK | `/vcek/v1/{product}/crl` | DER |
//! | ASVK and ARK | `/vlek/v1/{product}/cert_chain` | PEM, ASVK first |
//! | ARK's CRL for the ASVK | `/vlek/v1/{product}/crl` | DER |
//!
//! `{product}` is `Milan`, `Genoa` or `Turin`; `{hwid}` is the hardware ID
//! in hex (64 bytes, or 8 from Turin on); the SPL values are decimal,
//! written with at least two digits as AMD's examples do.

use crate::identity::{PlatformId, Product};

/// KDS itself.
pub const DEFAULT_BASE: &str = "https://kdsintf.amd.com";

/// Which key family a chain belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Chip keys: ARK → ASK → VCEK.
    Vcek,
    /// Cloud provider keys: ARK → ASVK → VLEK.
    Vlek,
}

impl Family {
    /// The path segment (`vcek`, `vlek`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Vcek => "vcek",
            Family::Vlek => "vlek",
        }
    }

    /// What the middle certificate is called (`ASK`, `ASVK`).
    pub fn ca_name(self) -> &'static str {
        match self {
            Family::Vcek => "ASK",
            Family::Vlek => "ASVK",
        }
    }
}

/// A KDS base URL without a trailing slash.
pub fn normalise_base(base: &str) -> String {
    base.trim().trim_end_matches('/').to_owned()
}

/// The URL of a VCEK.
pub fn vcek_url(base: &str, id: &PlatformId) -> String {
    let t = &id.tcb;
    let fmc = t.fmc.map(|f| format!("fmcSPL={f:02}&")).unwrap_or_default();
    format!(
        "{}/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
        normalise_base(base),
        id.product.kds_name(),
        id.hwid.to_hex(),
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode
    )
}

/// The URL of a product's certificate chain.
pub fn chain_url(base: &str, product: Product, family: Family) -> String {
    format!(
        "{}/{}/v1/{}/cert_chain",
        normalise_base(base),
        family.name(),
        product.kds_name()
    )
}

/// The URL of a product's CRL.
pub fn crl_url(base: &str, product: Product, family: Family) -> String {
    format!(
        "{}/{}/v1/{}/crl",
        normalise_base(base),
        family.name(),
        product.kds_name()
    )
}

/// The `host[:port]` part of a URL, for naming the pacing file.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}
