//! `snp-certs`: the operator's tool for SNP certificate tables.
//!
//! * `build`, `import-dir`: make a new certs file from certificates, with
//!   the chain verified.
//! * `inspect FILE` shows what a table holds and what is wrong with it;
//!   `verify FILE` checks its chain; `export FILE DIR` writes its entries
//!   out one file each.
//! * `update FILE --from NEW` replaces a live file's content in place under
//!   the exclusive lock; `lock FILE -- COMMAND` runs a firmware or key
//!   update command under that lock.
//! * `probe FILE` answers a simulated guest request through the same code
//!   a VMM uses, to show what a guest would get right now, under either
//!   `on-error` answer or under a running VMM's own configuration.
//! * `fetch`, `refresh` and `vcek-url` work with AMD's Key Distribution
//!   Service (KDS) through a verified host cache.

#[macro_use]
#[path = "../../shared/stdout.rs"]
mod stdout;

mod build;
mod cert_dir;
mod chain_report;
mod child;
mod export;
mod fetch;
mod files;
mod import_dir;
mod inspect;
mod kds_args;
mod lock_cmd;
mod probe;
mod refresh;
mod update;
mod vcek_url;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, inspect, verify, update and probe SEV-SNP certificate tables
/// (certs files), fetch them from AMD's KDS, and run firmware updates
/// under the certs file's lock.
#[derive(Debug, Parser)]
#[command(name = "snp-certs", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Build(build::BuildArgs),
    ImportDir(import_dir::ImportDirArgs),
    Inspect(inspect::InspectArgs),
    Verify(verify::VerifyArgs),
    Export(export::ExportArgs),
    Update(update::UpdateArgs),
    Lock(lock_cmd::LockArgs),
    Probe(probe::ProbeArgs),
    Fetch(fetch::FetchArgs),
    Refresh(refresh::RefreshArgs),
    VcekUrl(vcek_url::VcekUrlArgs),
}

impl Command {
    /// Whether the command was asked for JSON output (and so JSON errors).
    fn json(&self) -> bool {
        match self {
            Command::Inspect(args) => args.json,
            Command::Verify(args) => args.json,
            Command::Probe(args) => args.json,
            _ => false,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.command.json();
    let result = match cli.command {
        Command::Build(args) => build::run_build(&args),
        Command::ImportDir(args) => import_dir::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Update(args) => update::run(&args),
        Command::Lock(args) => lock_cmd::run(&args),
        Command::Probe(args) => probe::run(&args),
        Command::Fetch(args) => fetch::run(&args),
        Command::Refresh(args) => refresh::run(&args),
        Command::VcekUrl(args) => vcek_url::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            stdout::print_error("snp-certs", &error, json);
            ExitCode::from(2)
        }
    }
}
