//! The crate layering, checked against what Cargo resolves.
//!
//! Reads `cargo metadata --format-version 1` (the resolve graph, normal and
//! build dependencies; dev-dependencies are not part of any crate's build)
//! and fails on a forbidden edge:
//!
//! * the dependencies between the workspace's crates are exactly the table
//!   in `docs/architecture.md` (between its `layering` markers): an edge
//!   the code has and the table does not, or the other way round, fails;
//! * hyper and tokio are reached only through `api-server`, and iced-x86
//!   only through `test-guests` (with that crate taken out of the graph,
//!   no other crate reaches them);
//! * neither `vmm` nor `snp-certs` (serving a table) builds RSA, X.509,
//!   DER or SHA-2 (`rsa`, `x509-cert`, `der`, `sha2`);
//! * `vmm-api` and `snp-certs-types` are serde only: none of those, and
//!   no `vm-memory`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The resolved graph: package name to the names of its normal and build
/// dependencies, and which packages are workspace members.
struct Graph {
    deps: BTreeMap<String, BTreeSet<String>>,
    members: BTreeSet<String>,
}

impl Graph {
    fn load() -> Graph {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(root)
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
        let name_of: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let members = meta["workspace_members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| name_of[id.as_str().unwrap()].to_owned())
            .collect();
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().unwrap() {
            let normal = node["deps"].as_array().unwrap().iter().filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null() || k["kind"] == "build")
            });
            deps.entry(name_of[node["id"].as_str().unwrap()].to_owned())
                .or_default()
                .extend(normal.map(|d| name_of[d["pkg"].as_str().unwrap()].to_owned()));
        }
        Graph { deps, members }
    }

    /// Everything `from` builds, not going through `avoid`.
    fn closure(&self, from: &str, avoid: Option<&str>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(next) = todo.pop() {
            for dep in self.deps.get(&next).into_iter().flatten() {
                if Some(dep.as_str()) != avoid && seen.insert(dep.clone()) {
                    todo.push(dep.clone());
                }
            }
        }
        seen
    }

    /// A workspace crate's dependencies on other workspace crates.
    fn workspace_deps(&self, member: &str) -> BTreeSet<String> {
        self.deps[member]
            .iter()
            .filter(|d| self.members.contains(*d))
            .cloned()
            .collect()
    }
}

/// The crate-to-crate table of `docs/architecture.md`: each row
/// `` | `crate` | `dep`, `dep` | `` (or `—` for none) between the
/// `<!-- layering:begin -->` and `<!-- layering:end -->` markers.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let (_, rest) = doc
        .split_once("<!-- layering:begin -->")
        .expect("docs/architecture.md has a layering table");
    let (table, _) = rest.split_once("<!-- layering:end -->").unwrap();
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            let krate = names(cells[1]).into_iter().next().unwrap();
            (krate, names(cells[2]))
        })
        .collect()
}

#[test]
fn the_crate_graph_is_the_documented_one() {
    let graph = Graph::load();
    let doc = documented();
    let documented_crates: BTreeSet<String> = doc.keys().cloned().collect();
    assert_eq!(
        documented_crates, graph.members,
        "docs/architecture.md's layering table lists every workspace crate, no other"
    );
    let mut wrong = Vec::new();
    for member in &graph.members {
        let actual = graph.workspace_deps(member);
        let allowed = &doc[member];
        for extra in actual.difference(allowed) {
            wrong.push(format!(
                "{member} -> {extra}: in the code, not in the table"
            ));
        }
        for missing in allowed.difference(&actual) {
            wrong.push(format!(
                "{member} -> {missing}: in the table, not in the code"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn http_is_reached_only_through_api_server_and_the_assembler_only_through_test_guests() {
    let graph = Graph::load();
    for (gate, crates) in [
        ("api-server", &["hyper", "tokio"][..]),
        ("test-guests", &["iced-x86"][..]),
    ] {
        for member in graph.members.iter().filter(|m| *m != gate) {
            let reached = graph.closure(member, Some(gate));
            for krate in crates {
                assert!(
                    !reached.contains(*krate),
                    "{member} builds {krate} without going through {gate}"
                );
            }
        }
    }
}

#[test]
fn serving_builds_no_rsa_and_the_api_types_are_serde_only() {
    let graph = Graph::load();
    let crypto = ["rsa", "x509-cert", "der", "sha2"];
    for (member, forbidden) in [
        ("vmm", &crypto[..]),
        ("snp-certs", &crypto[..]),
        (
            "vmm-api",
            &["rsa", "x509-cert", "der", "sha2", "vm-memory"][..],
        ),
        (
            "snp-certs-types",
            &["rsa", "x509-cert", "der", "sha2", "vm-memory"][..],
        ),
    ] {
        let closure = graph.closure(member, None);
        let found: Vec<&&str> = forbidden.iter().filter(|f| closure.contains(**f)).collect();
        assert!(found.is_empty(), "{member} builds {found:?}");
    }
    // The check sees what it should: the operator tool's crates do verify.
    assert!(graph.closure("snp-certs-verify", None).contains("rsa"));
}
