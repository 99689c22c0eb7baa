//! Tests of the SNP guest: its machine code decoded ([`decode`]) and
//! executed in an emulator against the kernel model ([`emulated`]), its
//! twin against scripted answers ([`twin`]), its payload and a run of the
//! whole VMM on the mock backend ([`payload`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod decode;
mod emulated;
mod emulated_guest;
mod payload;
mod twin;

use snp_certs::{CertKind, TableBuilder};

/// A valid table of the three usual certificates, `sizes` bytes each.
fn table(sizes: [usize; 3]) -> Vec<u8> {
    let mut b = TableBuilder::new();
    for (kind, size) in [CertKind::Vcek, CertKind::Ask, CertKind::Ark]
        .into_iter()
        .zip(sizes)
    {
        let mut der: Vec<u8> = (0..size).map(|i| (i * 13 + size) as u8).collect();
        der[0] = 0x30;
        b.add(kind, der).unwrap();
    }
    b.build().unwrap()
}
