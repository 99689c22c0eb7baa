//! The certificate fixtures: where they are, and their bytes.

use std::path::{Path, PathBuf};

/// The fixtures directory, `snp-certs-verify/tests/fixtures` (see its
/// `README.md` for what each file is).
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../snp-certs-verify/tests/fixtures")
}

/// A fixture's bytes (`rel` from [`dir`], e.g. `amd/milan/vcek.der`).
pub fn bytes(rel: &str) -> Vec<u8> {
    let path = dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
