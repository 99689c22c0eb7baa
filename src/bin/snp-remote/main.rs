//! `snp-remote`: drive a running `snp-vmm` through its API socket, like
//! Cloud Hypervisor's `ch-remote`.
//!
//! Output, as `ch-remote`'s: the VMM's JSON answer as it came, one line,
//! for every command that has one (nothing for a 204), so `snp-remote info
//! | jq` works as `ch-remote info | jq` does; `--summary` prints a human
//! summary instead.
//!
//! Exit status, as `ch-remote`'s: 0 on success; 1 for any failure once the
//! arguments are read (the VMM refused the request, it cannot be reached,
//! an option string or a configuration file is invalid); 2 for arguments
//! the command line parser refuses. Errors go to stderr on one line,
//! `snp-remote: outer: inner` (the VMM's error chain for a refusal), or
//! with `--json` as `{"error": ["outer", "inner"]}`.

#[macro_use]
#[path = "../../shared/stdout.rs"]
mod stdout;

mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::io::Read;

use anyhow::Context;
use api_server::client::{ApiClient, ApiResponse, ClientError};
use api_server::routes::Method;
use clap::{Args, Parser, Subcommand};
use snp_certs::OnError;
use vmm_api::{SnpCertsUpdate, VmConfig, VmOptions};

/// Drive a running snp-vmm through its API socket.
#[derive(Debug, Parser)]
#[command(
    name = "snp-remote",
    version,
    about = "Drive a running snp-vmm through its API socket, like ch-remote"
)]
struct Cli {
    /// The VMM's API socket.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// Print a human-readable summary instead of the VMM's JSON answer.
    #[arg(long, global = true, conflicts_with = "json")]
    summary: bool,
    /// Print errors as JSON too (`{"error": [...]}` on stderr); answers
    /// are JSON without it.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the VMM is alive; show its version, pid and SNP support.
    Ping,
    /// Create the VM from a JSON configuration (a file, or stdin when the
    /// path is absent or `-`, as ch-remote reads it) or from Cloud
    /// Hypervisor-style options.
    Create(CreateArgs),
    /// Boot the created VM.
    Boot,
    /// Show the VM's configuration, state, vCPUs and certs configuration.
    Info,
    /// Shut the VM down.
    Shutdown,
    /// Delete the VM.
    Delete,
    /// Stop the VMM process.
    ShutdownVmm,
    /// Show the current certs file, certs timeout and statistics.
    Certs,
    /// Change the certs file and/or the certs timeout of the running VM.
    SetCerts(SetCertsArgs),
    /// Stop serving a certs file: guests get an empty table.
    ClearCerts,
    /// Show the request counters.
    Counters,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// VM configuration as JSON (the body of PUT vm.create); `-` or absent
    /// (without options): read it from stdin.
    #[arg(value_name = "PATH|-", conflicts_with_all = ["config", "cpus", "memory", "platform", "snp", "payload"])]
    path: Option<PathBuf>,
    /// The same as PATH.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["cpus", "memory", "platform", "snp", "payload"])]
    config: Option<PathBuf>,
    /// vCPUs: boot=N,max=N.
    #[arg(long, value_name = "OPTIONS")]
    cpus: Option<String>,
    /// Memory: size=64M.
    #[arg(long, value_name = "OPTIONS")]
    memory: Option<String>,
    /// Platform: sev_snp=on|off.
    #[arg(long, value_name = "OPTIONS")]
    platform: Option<String>,
    /// SNP: certs_file=PATH,certs_timeout=MS,doorbell=on|off, ...
    #[arg(long, value_name = "OPTIONS")]
    snp: Option<String>,
    /// Payload: attest,requests=N,interval_ms=M (keys optional),host_data=HEX.
    #[arg(long, value_name = "OPTIONS")]
    payload: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
struct SetCertsArgs {
    /// The new certificate table (a relative path is taken from the
    /// current directory).
    #[arg(long, value_name = "FILE")]
    certs_file: Option<PathBuf>,
    /// The new maximum wait for the shared lock, in milliseconds.
    #[arg(long, value_name = "MS")]
    certs_timeout: Option<u64>,
    /// The new busy budget: the longest time in milliseconds the guest is
    /// told busy in a row before the fallback answer.
    #[arg(long, value_name = "MS")]
    busy_budget: Option<u64>,
    /// The new fallback answer: empty (the empty table, ret 0) or busy.
    #[arg(long, value_name = "ANSWER")]
    on_error: Option<OnError>,
    /// Accept (on) or refuse (off) tables above 16 KiB.
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    allow_large: Option<bool>,
}

fn parse_switch(s: &str) -> Result<bool, String> {
    option_parser::parse_switch(s).ok_or_else(|| format!("{s:?}: expected on or off"))
}

/// How a run failed; either way the exit status is 1, as `ch-remote`'s.
enum Failure {
    /// The VMM refused; its error chain, outermost first.
    Api(Vec<String>),
    /// Anything else: an invalid option string or file, no VMM to talk to.
    Local(anyhow::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Api { chain, .. } => Failure::Api(chain),
            e => Failure::Local(anyhow::Error::new(e)),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Local(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Api(messages)) => {
            stdout::print_chain("snp-remote", &messages, cli.json);
            ExitCode::from(1)
        }
        Err(Failure::Local(e)) => {
            stdout::print_error("snp-remote", &e, cli.json);
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let client = ApiClient::new(&cli.api_socket)?;
    let no_body = None::<&()>;
    let (endpoint, response) = match &cli.command {
        Command::Ping => (
            "vmm.ping",
            client.request(Method::Get, "vmm.ping", no_body)?,
        ),
        Command::Create(args) => {
            let config = create_config(args)?;
            (
                "vm.create",
                client.request(Method::Put, "vm.create", Some(&config))?,
            )
        }
        Command::Boot => ("vm.boot", client.request(Method::Put, "vm.boot", no_body)?),
        Command::Info => ("vm.info", client.request(Method::Get, "vm.info", no_body)?),
        Command::Shutdown => (
            "vm.shutdown",
            client.request(Method::Put, "vm.shutdown", no_body)?,
        ),
        Command::Delete => (
            "vm.delete",
            client.request(Method::Put, "vm.delete", no_body)?,
        ),
        Command::ShutdownVmm => (
            "vmm.shutdown",
            client.request(Method::Put, "vmm.shutdown", no_body)?,
        ),
        Command::Certs => (
            "vm.snp-certs",
            client.request(Method::Get, "vm.snp-certs", no_body)?,
        ),
        Command::SetCerts(args) => {
            let update = SnpCertsUpdate {
                certs_file: args
                    .certs_file
                    .as_deref()
                    .map(absolute)
                    .transpose()?
                    .map(Some),
                certs_timeout: args.certs_timeout,
                busy_budget: args.busy_budget,
                on_error: args.on_error,
                allow_large: args.allow_large,
            };
            (
                "vm.snp-certs",
                client.request(Method::Put, "vm.snp-certs", Some(&update))?,
            )
        }
        Command::ClearCerts => {
            let update = SnpCertsUpdate::clear_file();
            (
                "vm.snp-certs",
                client.request(Method::Put, "vm.snp-certs", Some(&update))?,
            )
        }
        Command::Counters => (
            "vm.counters",
            client.request(Method::Get, "vm.counters", no_body)?,
        ),
    };
    show(cli.summary, endpoint, response)
}

/// Prints a successful answer (the body as it came, as `ch-remote` does,
/// or a summary), or turns an error answer into a failure.
fn show(summary: bool, endpoint: &str, response: ApiResponse) -> Result<(), Failure> {
    let response = response.ok()?;
    if response.body.is_empty() {
        return Ok(());
    }
    if !summary {
        outln!("{}", response.text().trim_end());
        return Ok(());
    }
    let text = match endpoint {
        "vmm.ping" => output::ping(&response.json(endpoint)?),
        "vm.create" => output::warnings(&response.json(endpoint)?),
        "vm.info" => output::info(&response.json(endpoint)?),
        "vm.snp-certs" => output::certs(&response.json(endpoint)?),
        "vm.counters" => output::counters(&response.json(endpoint)?),
        _ => response.text(),
    };
    out!("{text}");
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("Cannot make {} absolute", path.display()))
}

/// Reads a JSON configuration from `path`, or stdin for `-`.
fn read_config(path: &Path) -> anyhow::Result<VmConfig> {
    let (text, name) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("Cannot read the VM configuration from stdin")?;
        (text, "stdin".to_owned())
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read {}", path.display()))?;
        (text, path.display().to_string())
    };
    serde_json::from_str::<VmConfig>(&text)
        .with_context(|| format!("Invalid VM configuration in {name}"))
}

fn create_config(args: &CreateArgs) -> anyhow::Result<VmConfig> {
    let options = VmOptions {
        cpus: args.cpus.as_deref(),
        memory: args.memory.as_deref(),
        platform: args.platform.as_deref(),
        snp: args.snp.as_deref(),
        payload: args.payload.as_deref(),
    };
    let has_options = [
        options.cpus,
        options.memory,
        options.platform,
        options.snp,
        options.payload,
    ]
    .iter()
    .any(Option::is_some);
    let mut config = match args.path.as_deref().or(args.config.as_deref()) {
        Some(path) => read_config(path)?,
        None if has_options => VmConfig::from_options(&options)?,
        None => read_config(Path::new("-"))?,
    };
    if let Some(file) = &config.snp.certs_file {
        config.snp.certs_file = Some(absolute(file)?);
    }
    config.validate().context("Invalid VM configuration")?;
    Ok(config)
}
