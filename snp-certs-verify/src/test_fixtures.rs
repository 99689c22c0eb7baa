//! The certificate fixtures of `tests/fixtures/` (see its README), for
//! unit tests: AMD's public Milan, Genoa and Turin certificates and a
//! synthetic VLEK chain.

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $path
        ))
        .as_slice()
    };
}

pub(crate) const MILAN_ARK: &[u8] = fixture!("amd/milan/ark.pem");
pub(crate) const MILAN_ASK: &[u8] = fixture!("amd/milan/ask.pem");
pub(crate) const MILAN_VCEK: &[u8] = fixture!("amd/milan/vcek.der");
pub(crate) const GENOA_ARK: &[u8] = fixture!("amd/genoa/ark.pem");
pub(crate) const GENOA_ASK: &[u8] = fixture!("amd/genoa/ask.pem");
pub(crate) const TURIN_ARK: &[u8] = fixture!("amd/turin/ark.pem");
pub(crate) const TURIN_ASK: &[u8] = fixture!("amd/turin/ask.pem");
pub(crate) const TURIN_VCEK: &[u8] = fixture!("amd/turin/vcek.der");
pub(crate) const SYN_ARK: &[u8] = fixture!("synthetic/ark.pem");
pub(crate) const SYN_ASVK: &[u8] = fixture!("synthetic/asvk.pem");
pub(crate) const SYN_VLEK: &[u8] = fixture!("synthetic/vlek.der");
pub(crate) const SYN_CRL: &[u8] = fixture!("synthetic/crl.der");
pub(crate) const SYN_CRL_REVOKING: &[u8] = fixture!("synthetic/crl-revokes-asvk.der");
