//! SEV-SNP certificates from AMD's Key Distribution Service (KDS) without
//! hitting its rate limit.
//!
//! A host serving guests needs its chip's VCEK for the TCB its firmware
//! reports, the ASK and ARK above it, and maybe the ARK's CRL. KDS hands
//! them out, but limits how often one client may ask. This crate:
//!
//! * names what to ask for: [`identity`] (product, hardware ID, TCB), read
//!   from arguments, an attestation report or the host's firmware;
//! * asks politely: [`client`] with [`retry`] (429/503 and `Retry-After`,
//!   bounded exponential backoff with jitter) and [`pacing`] (a minimum
//!   interval between requests, shared by all processes on the host);
//! * trusts nothing unchecked: [`verify`] checks signatures, and that a
//!   VCEK is for exactly the chip and TCB asked for, before anything is
//!   stored or written;
//! * remembers: [`cache`], a host cache of verified documents, so a
//!   document is fetched once per host;
//! * puts it together: [`fetch`] ([`Kds::fetch`] → [`Bundle`], whose
//!   `table` is a verified certificate table).
//!
//! [`url`] documents KDS's URL layout.

pub mod cache;
pub mod client;
pub mod clock;
pub mod error;
pub mod fetch;
pub mod identity;
pub mod pacing;
pub mod retry;
pub mod url;
pub mod verify;

pub use error::KdsError;
pub use fetch::{Bundle, FetchRequest, Kds, KdsConfig, SignerRequest};
pub use identity::{Hwid, IdentityError, PlatformId, Product, TcbLevels};
pub use url::Family;
