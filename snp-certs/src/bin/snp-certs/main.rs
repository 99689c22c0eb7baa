//! `snp-certs`: the operator's tool for SNP certificate tables.
//!
//! * `inspect FILE` shows what a table holds and what is wrong with it.
//! * `probe FILE` answers a simulated guest request through the same code
//!   a VMM uses, to show what a guest would get right now.

mod inspect;
mod probe;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, inspect and probe SEV-SNP certificate tables (certs files).
#[derive(Debug, Parser)]
#[command(name = "snp-certs", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Inspect(inspect::InspectArgs),
    Probe(probe::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Probe(args) => probe::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("snp-certs: {error:#}");
            ExitCode::from(2)
        }
    }
}
