//! `snp-remote`: drive a running `snp-vmm` through its API socket, like
//! Cloud Hypervisor's `ch-remote`.
//!
//! Exit status: 0 on success, 1 when the VMM refused the request (its
//! error chain is printed as `snp-remote: outer: inner`, or with `--json`
//! as `{"error": ["outer", "inner"]}`, on stderr), 2 for usage errors and
//! when the VMM cannot be reached.

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
    /// Print the server's JSON instead of a human-readable summary.
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
    /// SNP: certs-file=PATH,certs-timeout=MS,doorbell=on|off.
    #[arg(long, value_name = "OPTIONS")]
    snp: Option<String>,
    /// Payload: attest,requests=N,interval-ms=M (keys optional),host_data=HEX.
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
    match s {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

/// How a run failed, and so its exit status.
enum Failure {
    /// The VMM refused: exit 1. Its error chain, outermost first.
    Api(Vec<String>),
    /// Bad usage or no VMM to talk to: exit 2.
    Usage(anyhow::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Api { chain, .. } => Failure::Api(chain),
            e @ ClientError::Decode { .. } => Failure::Api(chain(&anyhow::Error::new(e))),
            e => Failure::Usage(anyhow::Error::new(e)),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Usage(e)
    }
}

fn chain(e: &anyhow::Error) -> Vec<String> {
    e.chain().map(|c| one_line(&c.to_string())).collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Api(messages)) => {
            stdout::print_chain("snp-remote", &messages, cli.json);
            ExitCode::from(1)
        }
        Err(Failure::Usage(e)) => {
            stdout::print_error("snp-remote", &e, cli.json);
            ExitCode::from(2)
        }
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
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
    show(cli.json, endpoint, response)
}

/// Prints a successful answer, or turns an error answer into a failure.
fn show(json: bool, endpoint: &str, response: ApiResponse) -> Result<(), Failure> {
    let response = response.ok()?;
    if response.body.is_empty() {
        return Ok(());
    }
    if json {
        outln!("{}", response.text().trim_end());
        return Ok(());
    }
    let text = match endpoint {
        "vmm.ping" => output::ping(&response.json(endpoint)?),
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
