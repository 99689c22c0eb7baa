//! The `snp-certs`, `snp-vmm` and `snp-remote` command lines in the
//! documentation's code blocks use subcommands and options that exist:
//! each is checked against the binary's own `--help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::help::{help, subcommands};

const DOCS: &[&str] = &[
    "README.md",
    "docs/operators.md",
    "docs/api.md",
    "docs/cli.md",
    "docs/certs-file.md",
    "docs/kds.md",
    "docs/architecture.md",
];

const BINARIES: &[(&str, &str)] = &[
    ("snp-certs", env!("CARGO_BIN_EXE_snp-certs")),
    ("snp-vmm", env!("CARGO_BIN_EXE_snp-vmm")),
    ("snp-remote", env!("CARGO_BIN_EXE_snp-remote")),
];

/// The shell lines of every code block, continuation lines joined.
fn code_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
            continue;
        }
        if !inside {
            continue;
        }
        let line = line.trim().trim_start_matches("$ ");
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        lines.push(std::mem::take(&mut pending));
    }
    lines
}

/// Each invocation of one of our binaries in `line`: its name and its
/// words up to the end of its command (a pipe, `&&`, `;`, `&`, a comment,
/// a quote, or `--` before a wrapped command).
fn invocations(line: &str) -> Vec<(&'static str, Vec<String>)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut found = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let word = word.trim_start_matches(['\'', '"', '(']);
        let Some((name, _)) = BINARIES.iter().find(|(n, _)| *n == word) else {
            continue;
        };
        let args: Vec<String> = words[i + 1..]
            .iter()
            .take_while(|w| {
                !matches!(**w, "|" | "&&" | ";" | "&" | "--" | "||")
                    && !w.starts_with('#')
                    && !w.contains('\'')
            })
            .map(|w| w.to_string())
            .collect();
        found.push((*name, args));
    }
    found
}

#[test]
fn documented_commands_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut helps: BTreeMap<(String, Option<String>), String> = BTreeMap::new();
    let mut checked = 0;
    let mut problems = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for line in code_lines(&text) {
            for (name, args) in invocations(&line) {
                let binary = BINARIES.iter().find(|(n, _)| *n == name).unwrap().1;
                let top = helps
                    .entry((name.to_owned(), None))
                    .or_insert_with(|| help(binary, &[]))
                    .clone();
                let subs = subcommands(&top);
                let sub = if subs.is_empty() {
                    None
                } else {
                    // The first word that is not an option or its value.
                    let mut sub = None;
                    let mut skip_value = false;
                    for a in &args {
                        if skip_value {
                            skip_value = false;
                            continue;
                        }
                        if let Some(flag) = a.strip_prefix("--") {
                            skip_value = !flag.contains('=') && flag != "json";
                            continue;
                        }
                        sub = Some(a.clone());
                        break;
                    }
                    match sub {
                        Some(s) if subs.contains(&s) => Some(s),
                        // A synopsis, a placeholder or a diagram, not a
                        // command line.
                        Some(s)
                            if s == "..."
                                || s == "…"
                                || s.starts_with(['[', '<'])
                                || s.chars().all(|c| c.is_ascii_uppercase())
                                || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                        {
                            continue;
                        }
                        Some(s) => {
                            problems.push(format!("{doc}: {name}: no subcommand {s:?}: {line}"));
                            continue;
                        }
                        None => None,
                    }
                };
                let sub_help = match &sub {
                    Some(s) => helps
                        .entry((name.to_owned(), Some(s.clone())))
                        .or_insert_with(|| help(binary, &[s]))
                        .clone(),
                    None => top.clone(),
                };
                for a in &args {
                    let Some(flag) = a.strip_prefix("--") else {
                        continue;
                    };
                    let flag = flag.split('=').next().unwrap();
                    if flag.is_empty() || flag == "help" || flag == "version" {
                        continue;
                    }
                    let long = format!("--{flag}");
                    if !sub_help.contains(&long) && !top.contains(&long) {
                        problems.push(format!("{doc}: {name}: no option {long}: {line}"));
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 30, "only {checked} command lines found");
}
