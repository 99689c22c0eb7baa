//! The scripts honour `CARGO_TARGET_DIR`: they find build outputs, virtual
//! environments and reports through `scripts/target-dir.sh` (Cargo's own
//! answer), never at a hard-coded `target/`; and the demo needs only what
//! it uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir(env: Option<&str>) -> String {
    let mut c = Command::new(root().join("scripts/target-dir.sh"));
    match env {
        Some(dir) => c.env("CARGO_TARGET_DIR", dir),
        None => c.env_remove("CARGO_TARGET_DIR"),
    };
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn target_dir_is_cargos_answer() {
    assert_eq!(target_dir(Some("/tmp/elsewhere")), "/tmp/elsewhere");
    // Relative to the workspace, as Cargo takes it there.
    assert_eq!(
        target_dir(Some("build-out")),
        root().join("build-out").display().to_string()
    );
    let default = target_dir(None);
    assert!(Path::new(&default).is_absolute(), "{default}");
}

/// The code (comments aside) of every shell script CI and users run.
fn scripts() -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = fs::read_dir(root().join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .map(|p| (p.display().to_string(), fs::read_to_string(&p).unwrap()))
        .collect();
    let ci = root().join(".ci/run");
    found.push((ci.display().to_string(), fs::read_to_string(&ci).unwrap()));
    found
        .into_iter()
        .map(|(name, text)| {
            let code: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect();
            (name, code.join("\n"))
        })
        .collect()
}

#[test]
fn no_script_hard_codes_target() {
    let scripts = scripts();
    assert!(scripts.len() >= 8, "{}", scripts.len());
    for (name, code) in &scripts {
        for (i, line) in code.lines().enumerate() {
            let hard_coded = line
                .match_indices("target/")
                .any(|(at, _)| at == 0 || !line[..at].ends_with(['_', '-', '$', '{', '/']));
            assert!(!hard_coded, "{name}: `{line}` (code line {i})");
            assert!(!line.contains("--target-dir target"), "{name}: {line}");
        }
    }
}

#[test]
fn the_demo_installs_nothing_it_does_not_use() {
    let demo = fs::read_to_string(root().join("scripts/demo.sh")).unwrap();
    let code: Vec<&str> = demo
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let code = code.join("\n");
    assert!(
        !code
            .lines()
            .any(|l| l.trim_start().starts_with("scripts/setup.sh")),
        "the demo runs setup.sh"
    );
    assert!(!code.contains("nextest"), "the demo needs nextest");
    assert!(
        !code.contains("cargo install"),
        "the demo installs something"
    );
    assert!(code.contains("scripts/target-dir.sh"));
}
