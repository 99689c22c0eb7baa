//! A binary's `--help`, as the documentation tests read it.

use std::process::Command;

/// `BINARY ARGS... --help`, which must succeed; its standard output.
pub fn help(binary: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(binary);
    cmd.args(args).arg("--help");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a top-level `--help` lists under `Commands:`, without
/// `help`.
pub fn subcommands(top_help: &str) -> Vec<String> {
    top_help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|s| s != "help")
        .collect()
}
