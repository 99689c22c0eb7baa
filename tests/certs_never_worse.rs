//! Every path that writes a live certs file (`update`, `lock
//! --update-from`) or a new one (`import-dir`, `build`) leaves what is
//! there byte for byte as it was when it refuses: a new table without a
//! report signer, under a root that is not AMD's, or not a table at all
//! never replaces a good one on the operator's word. (`refresh` is tested
//! in `kds_refresh.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "certs_support/mod.rs"]
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use common::*;
use snp_certs::CertKind;
use snp_certs::table::{CertTable, TableBuilder};

/// Milan's ASK and ARK without a VCEK: a table that drops the signer.
fn chain_only() -> Vec<u8> {
    let mut b = TableBuilder::new();
    b.add(CertKind::Ask, der("amd/milan/ask.pem")).unwrap();
    b.add(CertKind::Ark, der("amd/milan/ark.pem")).unwrap();
    b.build().unwrap()
}

/// The synthetic VLEK chain: consistent, but under a root of its own.
fn foreign_root() -> Vec<u8> {
    let mut b = TableBuilder::new();
    b.add(CertKind::Vlek, der("synthetic/vlek.der")).unwrap();
    b.add(CertKind::Ask, der("synthetic/asvk.pem")).unwrap();
    b.add(CertKind::Ark, der("synthetic/ark.pem")).unwrap();
    b.build().unwrap()
}

/// A live certs file with Milan's full chain; its inode.
fn live(dir: &Path) -> (std::path::PathBuf, u64) {
    let path = dir.join("certs.bin");
    fs::write(&path, chain_table("milan")).unwrap();
    let ino = fs::metadata(&path).unwrap().ino();
    (path, ino)
}

fn unchanged(path: &Path, ino: u64) {
    assert_eq!(fs::read(path).unwrap(), chain_table("milan"));
    assert_eq!(fs::metadata(path).unwrap().ino(), ino);
}

/// Tables worse than the live one, each with what its refusal says.
fn worse_tables() -> [(Vec<u8>, &'static str); 2] {
    [
        (chain_only(), "No VCEK or VLEK in the table"),
        (foreign_root(), "ARK is not a trusted root"),
    ]
}

/// Asserts that `out` refused (exit 1) saying `says`, and that the live
/// file at `path` is as it was.
fn assert_refused(out: &Output, says: &str, path: &Path, ino: u64) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(stderr(out).contains(says), "{}", stderr(out));
    unchanged(path, ino);
}

#[test]
fn update_refuses_a_table_that_drops_the_vcek_or_leaves_amds_root() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ino) = live(dir.path());
    let new = dir.path().join("new.bin");
    for (table, says) in worse_tables() {
        fs::write(&new, table).unwrap();
        let out = snp_certs()
            .arg("update")
            .arg(&path)
            .arg("--from")
            .arg(&new)
            .args(["--at", AT])
            .output()
            .unwrap();
        assert_refused(&out, says, &path, ino);
        assert!(stderr(&out).contains("not installing"), "{}", stderr(&out));
    }
    // Named as a trusted test root, the stand-in chain is installed.
    let out = snp_certs()
        .arg("update")
        .arg(&path)
        .arg("--from")
        .arg(&new)
        .args(["--at", AT, "--trust-root"])
        .arg(fixture("synthetic/ark.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), foreign_root());
}

#[test]
fn lock_update_from_refuses_what_the_command_wrote_if_it_is_worse() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ino) = live(dir.path());
    let new = dir.path().join("new.bin");
    for (table, says) in worse_tables() {
        let staged = dir.path().join("staged.bin");
        fs::write(&staged, table).unwrap();
        let _ = fs::remove_file(&new);
        // The command writes NEW under the lock, as a firmware update
        // followed by a certificate fetch would.
        let script = format!("cp '{}' '{}'", staged.display(), new.display());
        let out = snp_certs()
            .arg("lock")
            .arg(&path)
            .arg("--update-from")
            .arg(&new)
            .args(["--at", AT, "--", "sh", "-c", &script])
            .output()
            .unwrap();
        assert_refused(&out, says, &path, ino);
    }
}

#[test]
fn import_dir_never_touches_an_existing_file_and_writes_nothing_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ino) = live(dir.path());
    let certs = dir.path().join("certs");
    fs::create_dir(&certs).unwrap();
    for name in ["ark.pem", "ask.pem", "vcek.der"] {
        fs::copy(fixture(&format!("amd/milan/{name}")), certs.join(name)).unwrap();
    }
    // Onto the live file: refused, the file as it was.
    let out = snp_certs()
        .arg("import-dir")
        .arg(&certs)
        .args(["--at", AT, "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("snp-certs update"),
        "{}",
        stderr(&out)
    );
    unchanged(&path, ino);
    // A directory under a root of its own: nothing written.
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::copy(fixture("synthetic/ark.pem"), other.join("ark.pem")).unwrap();
    fs::copy(fixture("synthetic/asvk.pem"), other.join("asvk.pem")).unwrap();
    fs::copy(fixture("synthetic/vlek.der"), other.join("vlek.der")).unwrap();
    let out = snp_certs()
        .arg("import-dir")
        .arg(&other)
        .args(["--at", AT, "-o"])
        .arg(dir.path().join("new.bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("new.bin").exists());
}

#[test]
fn import_dir_reads_a_directory_both_tools_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // snpguest's `fetch ca der` and `fetch vcek der`, snphost's `fetch ca
    // -e vlek der` and `fetch vek -e vlek der`: both chains, one directory.
    fs::write(d.join("ark.der"), der("synthetic/ark.pem")).unwrap();
    fs::write(d.join("asvk.der"), der("synthetic/asvk.pem")).unwrap();
    fs::write(d.join("vlek.der"), der("synthetic/vlek.der")).unwrap();
    fs::write(d.join("ask.der"), der("amd/milan/ask.pem")).unwrap();
    fs::write(d.join("vcek.der"), der("amd/milan/vcek.der")).unwrap();
    // snpguest's `fetch crl der` and snphost's `fetch crl`: two names,
    // the same CRL.
    fs::copy(fixture("synthetic/crl.der"), d.join("crl.der")).unwrap();
    fs::copy(fixture("synthetic/crl.der"), d.join("Milan.crl")).unwrap();
    let import = |extra: &[&str], out: &str| {
        snp_certs()
            .arg("import-dir")
            .arg(d)
            .args(extra)
            .args(["--allow-unverified", "--at", AT, "-o"])
            .arg(d.join(out))
            .output()
            .unwrap()
    };
    // Both signers: the VCEK (its ASK is there), and it says so.
    let out = import(&[], "vcek.bin");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("holds a VCEK and a VLEK; took vcek.der"),
        "{err}"
    );
    assert!(err.contains("--vlek takes the VLEK"), "{err}");
    assert!(
        err.contains("Milan.crl, crl.der hold the same crl"),
        "{err}"
    );
    let bytes = fs::read(d.join("vcek.bin")).unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert!(table.get(CertKind::Vcek).is_some());
    assert!(table.get(CertKind::Vlek).is_none());
    assert_eq!(
        table.get(CertKind::Ask).unwrap().data,
        der("amd/milan/ask.pem")
    );
    assert!(table.get(CertKind::Crl).is_some());
    // --vlek: the VLEK with the ASVK; the chain verifies under its root.
    let out = import(&["--vlek", "--trust-root", "/dev/null"], "x.bin");
    assert_eq!(out.status.code(), Some(2), "a bad --trust-root is an error");
    let root = fixture("synthetic/ark.pem");
    let out = snp_certs()
        .arg("import-dir")
        .arg(d)
        .arg("--vlek")
        .arg("--trust-root")
        .arg(&root)
        .args(["--at", AT, "-o"])
        .arg(d.join("vlek.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = fs::read(d.join("vlek.bin")).unwrap();
    let table = CertTable::parse(&bytes).unwrap();
    assert!(table.get(CertKind::Vlek).is_some());
    assert!(table.get(CertKind::Vcek).is_none());
    assert_eq!(
        table.get(CertKind::Ask).unwrap().data,
        der("synthetic/asvk.pem")
    );
    // Two different CRLs: the newer is taken, and named.
    fs::copy(
        fixture("synthetic/crl-revokes-asvk.der"),
        d.join("Milan.crl"),
    )
    .unwrap();
    let out = import(&[], "newer.bin");
    let err = stderr(&out);
    assert!(
        err.contains("hold different CRLs; took the newest"),
        "{err}"
    );
}
