//! `build`, `import-dir`, `inspect`, `verify` and `export` end to end, on
//! AMD's real public certificates and the synthetic VLEK chain.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "certs_support/mod.rs"]
mod common;

use std::fs;
use std::path::Path;

use common::*;
use snp_certs::table::CertTable;
use snp_certs_verify::x509::{DocumentKind, to_pem};

fn build(dir: &Path, product: &str, out: &str, extra: &[&str]) -> std::process::Output {
    snp_certs()
        .arg("build")
        .arg("--ark")
        .arg(fixture(&format!("amd/{product}/ark.pem")))
        .arg("--ask")
        .arg(fixture(&format!("amd/{product}/ask.pem")))
        .arg("--vcek")
        .arg(fixture(&format!("amd/{product}/vcek.der")))
        .args(["--at", AT, "-o"])
        .arg(dir.join(out))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn build_inspect_verify_round_trip_for_milan_and_turin() {
    let dir = tempfile::tempdir().unwrap();
    for product in ["milan", "turin"] {
        let out = build(dir.path(), product, product, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("chain: verified"), "{}", stdout(&out));
        let path = dir.path().join(product);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes, chain_table(product));

        let out = snp_certs()
            .args(["inspect", "--json", "--at", AT])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        let v = json(&out);
        let line = if product == "milan" { "Milan" } else { "Turin" };
        assert_eq!(v["chain"]["status"], "verified");
        assert_eq!(v["chain"]["product"], line);
        assert_eq!(v["chain"]["signer"], "vcek");
        let vcek = &v["entries"][0]["x509"];
        assert_eq!(vcek["type"], "certificate");
        assert!(
            vcek["subject"]
                .as_str()
                .unwrap()
                .starts_with("CN=SEV-VCEK,")
        );
        assert!(
            vcek["issuer"]
                .as_str()
                .unwrap()
                .starts_with(&format!("CN=SEV-{line},"))
        );
        assert_eq!(vcek["key"]["type"], "ec");
        assert_eq!(vcek["key"]["curve"], "P-384");
        assert_eq!(vcek["product"], line);
        assert!(vcek["not_after"].as_str().unwrap().ends_with('Z'));
        assert!(vcek["tcb"]["microcode"].is_u64());
        let ark = &v["entries"][2]["x509"];
        assert_eq!(ark["key"]["bits"], 4096);
        assert_eq!(ark["serial"].as_str().unwrap().len(), 6);
        assert_eq!(ark["signature_algorithm"], "RSASSA-PSS");

        let out = snp_certs()
            .args(["inspect", "--at", AT])
            .arg(&path)
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(text.contains(&format!("product  {line}")), "{text}");
        assert!(text.contains("key      RSA 4096"), "{text}");

        let out = snp_certs()
            .args(["verify", "--at", AT])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        let out = snp_certs()
            .args(["verify", "--json", "--at", AT])
            .arg(&path)
            .output()
            .unwrap();
        let v = json(&out);
        assert_eq!(v["chain"]["status"], "verified");
        let checks = v["chain"]["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 13);
        // The ARK is AMD's own root key, built in.
        let root = checks.iter().find(|c| c["check"] == "root").unwrap();
        assert_eq!(
            root["detail"],
            format!("AMD's {line} root key (built in)"),
            "{root}"
        );
    }
}

#[test]
fn pem_and_der_inputs_give_byte_identical_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("ark.der"), der("amd/milan/ark.pem")).unwrap();
    fs::write(d.join("ask.der"), der("amd/milan/ask.pem")).unwrap();
    let vcek_pem = to_pem(&der("amd/milan/vcek.der"), DocumentKind::Certificate).unwrap();
    fs::write(d.join("vcek.pem"), vcek_pem).unwrap();
    let out = snp_certs()
        .arg("build")
        .arg("--ark")
        .arg(d.join("ark.der"))
        .arg("--ask")
        .arg(d.join("ask.der"))
        .arg("--vcek")
        .arg(d.join("vcek.pem"))
        .args(["--at", AT, "-o"])
        .arg(d.join("from-der"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = build(d, "milan", "from-pem", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = fs::read(d.join("from-der")).unwrap();
    assert_eq!(a, fs::read(d.join("from-pem")).unwrap());
    // Every entry is DER: no PEM warning.
    assert!(CertTable::parse(&a).unwrap().warnings().is_empty());
}

#[test]
fn a_tampered_signature_is_rejected_unless_explicitly_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut vcek = der("amd/milan/vcek.der");
    let last = vcek.len() - 1;
    vcek[last] ^= 0x01;
    fs::write(d.join("vcek.der"), &vcek).unwrap();
    let run = |out: &str, extra: &[&str]| {
        snp_certs()
            .arg("build")
            .arg("--ark")
            .arg(fixture("amd/milan/ark.pem"))
            .arg("--ask")
            .arg(fixture("amd/milan/ask.pem"))
            .arg("--vcek")
            .arg(d.join("vcek.der"))
            .args(["--at", AT, "-o"])
            .arg(d.join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run("bad", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("VCEK signature does not verify"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("bad").exists());

    let out = run("bad", &["--allow-unverified"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARNING: --allow-unverified"),
        "{}",
        stderr(&out)
    );
    let out = snp_certs()
        .args(["verify", "--at", AT])
        .arg(d.join("bad"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    let out = snp_certs()
        .args(["verify", "--json", "--at", AT])
        .arg(d.join("bad"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["chain"]["problems"][0]["code"], "bad-signature");
}

#[test]
fn a_milan_ask_with_a_genoa_ark_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let out = snp_certs()
        .arg("build")
        .arg("--ark")
        .arg(fixture("amd/genoa/ark.pem"))
        .arg("--ask")
        .arg(fixture("amd/milan/ask.pem"))
        .arg("--vcek")
        .arg(fixture("amd/milan/vcek.der"))
        .args(["--at", AT, "-o"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("but the table's ARK is CN=ARK-Genoa"), "{err}");
    assert!(err.contains("ASK/ASVK signature does not verify"), "{err}");
}

#[test]
fn expiry_is_reported_at_the_given_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = build(dir.path(), "milan", "t", &[]);
    assert!(out.status.success());
    // 2031-01-01: the Milan VCEK expired on 2030-04-03.
    let out = snp_certs()
        .args(["verify", "--at", "1924992000"])
        .arg(dir.path().join("t"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("VCEK expired at 2030-04-03T19:23:43Z"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_vlek_chain_with_asvk_and_crl_under_a_named_test_root() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vlek.bin");
    let build = |trust: bool| {
        let mut c = build_synthetic_vlek(&path);
        c.arg("--crl").arg(fixture("synthetic/crl.der"));
        if trust {
            c.arg("--trust-root").arg(fixture("synthetic/ark.pem"));
        }
        c.output().unwrap()
    };
    // Its root is not AMD's: refused, naming what was expected.
    let out = build(false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("ARK is not a trusted root"), "{err}");
    assert!(
        err.contains("one of AMD's root keys (Milan, Genoa, Turin)"),
        "{err}"
    );
    assert!(err.contains("--trust-root FILE"), "{err}");
    assert!(!path.exists());
    // Named explicitly as the root to trust: built.
    let out = build(true);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = snp_certs()
        .args(["inspect", "--json", "--at", AT, "--trust-root"])
        .arg(fixture("synthetic/ark.pem"))
        .arg(&path)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["chain"]["status"], "verified");
    assert_eq!(v["chain"]["signer"], "vlek");
    assert_eq!(v["entries"][3]["x509"]["type"], "crl");
    assert_eq!(v["entries"][3]["x509"]["revoked"][0], "0a0099");
    // Both ASK and ASVK, or both signers: refused by the argument parser.
    let out = build_synthetic_vlek(&dir.path().join("y"))
        .arg("--ask")
        .arg(fixture("amd/milan/ask.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_existing_output_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("live"), b"live").unwrap();
    let out = build(dir.path(), "milan", "live", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("snp-certs update"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(dir.path().join("live")).unwrap(), b"live");
}

#[test]
fn export_then_import_dir_gives_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = build(
        d,
        "milan",
        "certs.bin",
        &[
            "--crl",
            fixture("synthetic/crl.der").to_str().unwrap(),
            "--allow-unverified",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A CRL from another ARK: built only with --allow-unverified.
    assert!(stderr(&out).contains("WARNING"));
    for (sub, pem) in [("der", false), ("pem", true)] {
        let mut cmd = snp_certs();
        cmd.arg("export").arg(d.join("certs.bin")).arg(d.join(sub));
        if pem {
            cmd.arg("--pem");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let ext = if pem { "pem" } else { "der" };
        for name in ["ark", "ask", "vcek", "crl"] {
            assert!(
                d.join(sub).join(format!("{name}.{ext}")).is_file(),
                "{name}.{ext}"
            );
        }
        let out = snp_certs()
            .arg("import-dir")
            .arg(d.join(sub))
            .args(["--allow-unverified", "--at", AT, "-o"])
            .arg(d.join(format!("again-{sub}")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            fs::read(d.join(format!("again-{sub}"))).unwrap(),
            fs::read(d.join("certs.bin")).unwrap()
        );
    }
    assert!(
        fs::read_to_string(d.join("pem/crl.pem"))
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----")
    );
}

#[test]
fn import_dir_reads_snphost_names_and_refuses_conflicting_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::copy(fixture("amd/turin/ark.pem"), d.join("ark.pem")).unwrap();
    fs::copy(fixture("amd/turin/ask.pem"), d.join("ask.cert")).unwrap();
    fs::copy(fixture("amd/turin/vcek.der"), d.join("VCEK.crt")).unwrap();
    fs::write(d.join("README"), b"ignored").unwrap();
    let out = snp_certs()
        .arg("import-dir")
        .arg(d)
        .args(["--at", AT, "-o"])
        .arg(d.join("out.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("ignoring"), "{}", stderr(&out));
    assert_eq!(fs::read(d.join("out.bin")).unwrap(), chain_table("turin"));
    // The same ARK twice (PEM and DER): one entry, and it says which.
    fs::write(d.join("ark.der"), der("amd/turin/ark.pem")).unwrap();
    let out = snp_certs()
        .arg("import-dir")
        .arg(d)
        .args(["--at", AT, "-o"])
        .arg(d.join("out2.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ark.der, ark.pem hold the same ark; took ark.der"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(d.join("out2.bin")).unwrap(), chain_table("turin"));
    // Two different ARKs: which is right cannot be told; nothing written.
    fs::write(d.join("ark.der"), der("amd/genoa/ark.pem")).unwrap();
    let out = snp_certs()
        .arg("import-dir")
        .arg(d)
        .arg("-o")
        .arg(d.join("out3.bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("hold different ark certificates"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("out3.bin").exists());
}

/// Tables a Linux guest cannot receive (above 16 KiB) are refused by every
/// command that makes or installs one, with the reason, unless
/// `--allow-large`.
#[test]
fn tables_above_16_kib_need_allow_large_to_be_built_installed_or_verified() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.bin");
    fs::write(&extra, vec![0x42; 12 * 1024]).unwrap();
    let other = format!(
        "--other=0d2c1c35-37a1-4d5e-bd1c-2b4b7a0cf0a1={}",
        extra.display()
    );
    let out = build(dir.path(), "milan", "big.bin", &[&other]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Linux guests cannot receive more than 16384"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("big.bin").exists());
    let out = build(dir.path(), "milan", "big.bin", &[&other, "--allow-large"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let big = dir.path().join("big.bin");
    assert!(fs::metadata(&big).unwrap().len() > 16 * 1024);

    let verify = |extra: &[&str]| {
        snp_certs()
            .args(["verify", "--at", AT])
            .arg(&big)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--allow-large accepts it"),
        "{}",
        stderr(&out)
    );
    assert!(verify(&["--allow-large"]).status.success());

    let live = dir.path().join("live.bin");
    fs::write(&live, chain_table("milan")).unwrap();
    let update = |extra: &[&str]| {
        snp_certs()
            .args(["update", "--at", AT])
            .arg(&live)
            .arg("--from")
            .arg(&big)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = update(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot receive more than 16384"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&live).unwrap(), chain_table("milan"), "untouched");
    assert!(update(&["--allow-large"]).status.success());
    assert_eq!(fs::read(&live).unwrap(), fs::read(&big).unwrap());
}
