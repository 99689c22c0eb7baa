//! `snp-vmm`: run a VM whose guest fetches SNP certificates, served from a
//! per-VM certs file under the shared lock.
//!
//! Without `--api-socket` it boots the VM from the command line, waits for
//! the guest to finish, prints a summary and exits (0 when the guest got
//! exactly the certs file's table every time); with `--json` it prints one
//! JSON object instead of the per-request lines and the text summary. With
//! `--api-socket PATH|path=PATH|fd=N` it serves the REST API until
//! `vmm.shutdown`, creating and booting a VM at start if VM options are
//! given. With `--check-host` it only reports whether this host can serve
//! SEV-SNP guests (see [`check_host`]).
//!
//! Cloud Hypervisor's payload flags are recognised: `--host-data` is the
//! SNP launch's host data (`payload.host_data`, SEV-SNP guests only);
//! `--kernel`, `--cmdline`, `--initramfs`, `--firmware` and `--igvm` are
//! refused with the reason (only the built-in test guests run here).

mod check_host;

#[macro_use]
#[path = "../../shared/stdout.rs"]
mod stdout;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use api_server::server::ApiServer;
use clap::Parser;
use event_monitor::{EventMonitor, EventMonitorConfig, EventSender};
use option_parser::Options;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use test_guests::TestGuests;
use test_guests::summary::summarize;
use vmm::api_impl::Vmm;
use vmm::backend::{Backend, BackendChoice};
use vmm_api::{VmConfig, VmOptions};

/// Where the API listens: `--api-socket PATH`, `path=PATH` or `fd=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ApiSocket {
    /// A socket file created (mode 0600) and removed at exit.
    Path(PathBuf),
    /// An inherited listening Unix socket (socket activation).
    Fd(i32),
}

impl ApiSocket {
    /// Parses `PATH`, `path=PATH` or `fd=N`. A bare path is anything
    /// without `=`, or starting with `/` or `.`.
    fn parse(input: &str) -> Result<ApiSocket, String> {
        if !input.contains('=') || input.starts_with('/') || input.starts_with('.') {
            return Ok(ApiSocket::Path(PathBuf::from(input)));
        }
        let o = Options::parse(input, &["path", "fd"], false).map_err(|e| e.to_string())?;
        match (
            o.get("path"),
            o.parsed::<i32>("fd").map_err(|e| e.to_string())?,
        ) {
            (Some(path), None) if !path.is_empty() => Ok(ApiSocket::Path(PathBuf::from(path))),
            (None, Some(fd)) if fd >= 0 => Ok(ApiSocket::Fd(fd)),
            _ => Err("expected PATH, path=PATH or fd=N (one of them)".to_owned()),
        }
    }
}

/// Run a VM that answers SEV-SNP certificate requests from a certs file.
#[derive(Debug, Parser)]
#[command(name = "snp-vmm", version)]
struct Args {
    /// Serve the REST API on this Unix socket: PATH or path=PATH (created
    /// mode 0600, removed at exit), or fd=N, an inherited listening Unix
    /// socket (socket activation).
    #[arg(long, value_name = "PATH|path=PATH|fd=N", value_parser = ApiSocket::parse)]
    api_socket: Option<ApiSocket>,
    /// vCPUs: boot=N,max=N (max must equal boot).
    #[arg(long, value_name = "boot=N")]
    cpus: Option<String>,
    /// Guest memory: size=64M.
    #[arg(long, value_name = "size=SIZE")]
    memory: Option<String>,
    /// Platform: sev_snp=on|off (on: an SEV-SNP guest, with the snp-attest
    /// payload; needs an SNP host, see --check-host, or --hypervisor
    /// mock-snp).
    #[arg(long, value_name = "sev_snp=on|off")]
    platform: Option<String>,
    /// Certificate serving: certs_file=PATH,certs_timeout=MS,busy_budget=MS,
    /// on_error=empty|busy,allow_large=on,startup_wait=MS,doorbell=on
    /// (kebab-case keys such as certs-file are accepted too).
    #[arg(long, value_name = "OPTIONS")]
    snp: Option<String>,
    /// Guest payload: attest or snp-attest (the SEV-SNP guest, with
    /// --platform sev_snp=on), then requests=N,interval_ms=MS,retry_ms=MS,
    /// max_busy_retries=N,host_data=HEX, and for snp-attest c_bit=N.
    #[arg(long, value_name = "OPTIONS")]
    payload: Option<String>,
    /// SEV-SNP launch host data, 64 hexadecimal digits (32 bytes), as in
    /// Cloud Hypervisor: payload.host_data; SEV-SNP guests only.
    #[arg(long, value_name = "HEX")]
    host_data: Option<String>,
    /// Cloud Hypervisor's kernel image: refused, snp-vmm runs only its
    /// built-in test guests (--payload).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Cloud Hypervisor's kernel command line: refused (no kernel here).
    #[arg(long, value_name = "CMDLINE")]
    cmdline: Option<String>,
    /// Cloud Hypervisor's initramfs: refused (no kernel here).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Cloud Hypervisor's firmware image: refused, snp-vmm runs only its
    /// built-in test guests (--payload).
    #[arg(long, value_name = "PATH")]
    firmware: Option<PathBuf>,
    /// Cloud Hypervisor's IGVM file: refused, snp-vmm cannot load IGVM
    /// files; its SNP guest is --payload snp-attest.
    #[arg(long, value_name = "PATH")]
    igvm: Option<PathBuf>,
    /// Event stream: path=FILE or fd=N, then optionally capacity=N and
    /// format=json-lines (the default) or format=cloud-hypervisor (Cloud
    /// Hypervisor's own event format).
    #[arg(long, value_name = "path=FILE|fd=N[,format=F]")]
    event_monitor: Option<EventMonitorConfig>,
    /// Hypervisor backend: kvm, mock (no real vCPUs: a Rust model of the
    /// guest), mock-snp (the mock simulating an SEV-SNP host), or auto
    /// (KVM, else the mock, said loudly).
    #[arg(long, default_value_t = BackendChoice::Kvm)]
    hypervisor: BackendChoice,
    /// Print one JSON object: at the end of a run without --api-socket
    /// (the summary and the counters, instead of the per-request lines and
    /// the text summary), or the --check-host report; errors as
    /// {"error": [...]} on stderr.
    #[arg(long)]
    json: bool,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    check: check_host::CheckHostArgs,
}

impl Args {
    fn vm_options(&self) -> VmOptions<'_> {
        VmOptions {
            cpus: self.cpus.as_deref(),
            memory: self.memory.as_deref(),
            platform: self.platform.as_deref(),
            snp: self.snp.as_deref(),
            payload: self.payload.as_deref(),
        }
    }

    fn has_vm_options(&self) -> bool {
        self.cpus.is_some()
            || self.memory.is_some()
            || self.platform.is_some()
            || self.snp.is_some()
            || self.payload.is_some()
            || self.host_data.is_some()
            || self.unsupported_payload_flag().is_some()
    }

    /// The first of Cloud Hypervisor's payload flags snp-vmm cannot
    /// honour, if one is given.
    fn unsupported_payload_flag(&self) -> Option<&'static str> {
        [
            ("--kernel", self.kernel.is_some()),
            ("--cmdline", self.cmdline.is_some()),
            ("--initramfs", self.initramfs.is_some()),
            ("--firmware", self.firmware.is_some()),
            ("--igvm", self.igvm.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }

    /// The VM configuration, with a relative certs file made absolute
    /// against the current directory.
    fn vm_config(&self) -> Result<VmConfig> {
        if let Some(flag) = self.unsupported_payload_flag() {
            bail!(
                "{flag} is not supported: snp-vmm runs only its built-in test guests \
                 (--payload attest, or --payload snp-attest with --platform sev_snp=on); \
                 it cannot boot a kernel, firmware or IGVM file"
            );
        }
        let mut config = VmConfig::from_options(&self.vm_options())?;
        if let Some(hex) = &self.host_data {
            let payload = config.payload.get_or_insert_with(Default::default);
            if payload.host_data.is_some() {
                bail!("host data given twice: --host-data and --payload host_data=");
            }
            payload.host_data = Some(hex.clone());
            if !config.platform.sev_snp {
                bail!(
                    "--host-data is only used by SEV-SNP guests: add --platform sev_snp=on \
                     (and a guest that runs in one, --payload snp-attest)"
                );
            }
        }
        if let Some(file) = &config.snp.certs_file {
            config.snp.certs_file = Some(
                std::path::absolute(file)
                    .with_context(|| format!("cannot resolve {}", file.display()))?,
            );
        }
        Ok(config)
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_micros()
        .init();
}

fn open_backend(choice: BackendChoice) -> Result<Backend> {
    let (backend, fallback) = Backend::open(choice).context(
        "cannot open the hypervisor (--hypervisor mock runs without KVM, on a Rust model of the guest)",
    )?;
    if let Some(why) = fallback {
        eprintln!("snp-vmm: /dev/kvm is not usable ({why})");
        eprintln!(
            "snp-vmm: running on the MOCK backend: the guest is a Rust model of the attestation guest, not real vCPUs"
        );
    }
    Ok(backend)
}

/// Boots from the command line, waits for the guest, prints the summary.
fn run_once(
    args: &Args,
    vmm: &Vmm,
    guests: &TestGuests,
    interrupted: &AtomicBool,
) -> Result<ExitCode> {
    let config = args.vm_config()?;
    let certs_file = config.snp.certs_file.clone();
    let timeout = Duration::from_millis(config.snp.certs_timeout);
    let hypervisor = match vmm.backend().name() {
        "mock" if config.platform.sev_snp => {
            "mock (no real vCPUs: the SNP guest's Rust twin, against a model of KVM's SNP interface)"
        }
        "mock" => "mock (no real vCPUs: a Rust model of the attestation guest)",
        other => other,
    };
    if !args.json {
        outln!(
            "snp-vmm: hypervisor {hypervisor}, {} vCPU(s), {} MiB, certs-file {}, certs-timeout {} ms",
            config.cpus.boot_vcpus,
            config.memory.size >> 20,
            certs_file
                .as_deref()
                .map_or("none (empty table)".into(), |p| p.display().to_string()),
            config.snp.certs_timeout
        );
    }
    let header = serde_json::json!({
        "hypervisor": vmm.backend().name(),
        "vcpus": config.cpus.boot_vcpus,
        "memory": config.memory.size,
        "certs_file": certs_file,
        "certs_timeout": config.snp.certs_timeout,
    });
    if let Err(e) = vmm.create_vm(config) {
        if interrupted.load(Ordering::Acquire) {
            eprintln!("snp-vmm: interrupted during start-up: no VM was created");
            return Ok(ExitCode::from(130));
        }
        return Err(anyhow!(e));
    }
    vmm.boot_vm().map_err(|e| anyhow!(e))?;
    let summary = vmm
        .with_vm(|vm| {
            // Until the guest is done, or SIGINT/SIGTERM asks to stop.
            let mut wait = timeout;
            while !vm.wait_for_end(Duration::from_millis(200)) {
                if interrupted.load(Ordering::Acquire) {
                    eprintln!("snp-vmm: interrupted: stopping the VM");
                    // No more lock waits: the summary reads the file
                    // only if it is free right now.
                    wait = Duration::ZERO;
                    break;
                }
            }
            vm.shutdown();
            let totals = guests.last_log().map(|l| l.totals()).unwrap_or_default();
            let counters = vm.certs().stats();
            Ok((
                summarize(&totals, &counters, certs_file.as_deref(), wait),
                counters,
            ))
        })
        .map_err(|e| anyhow!(e))?;
    let (summary, counters) = summary;
    if args.json {
        let mut report = header;
        report["reports"] = summary.reports.into();
        report["matched"] = summary.matched.into();
        report["bad"] = summary.bad.into();
        report["guest_checksum"] = summary.guest_checksum.into();
        report["file_checksum"] = summary.file.map(|f| f.checksum).into();
        report["success"] = summary.success().into();
        report["counters"] = serde_json::to_value(&counters)?;
        outln!("{report}");
    } else {
        out!("{}", summary.text);
    }
    Ok(if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Serves the API until `vmm.shutdown`.
fn serve_api(args: &Args, socket: &ApiSocket, vmm: Arc<Vmm>) -> Result<ExitCode> {
    // The socket first: a socket in use ends the run before any VM exists.
    let config = if args.has_vm_options() {
        Some(args.vm_config()?)
    } else {
        None
    };
    let api = Arc::clone(&vmm) as Arc<dyn vmm_api::VmmApi>;
    let server = match socket {
        ApiSocket::Path(path) => ApiServer::start(path, api),
        ApiSocket::Fd(fd) => ApiServer::start_on_fd(*fd, api),
    }
    .context("cannot serve the API")?;
    // SIGINT/SIGTERM: shut down as `vmm.shutdown` would (VM stopped, leases
    // released, socket removed, events flushed).
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the signal handler")?;
    let on_signal = Arc::clone(&vmm);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                log::warn!("interrupted: shutting down");
                on_signal.request_exit();
            }
        })
        .context("cannot start the signal thread")?;
    // The VM of the command line, if any: its start-up wait for the certs
    // file ends at SIGINT/SIGTERM too.
    if let Some(config) = config {
        if let Err(e) = vmm.create_vm(config).and_then(|_| vmm.boot_vm()) {
            let exiting = vmm.exiting().load(Ordering::Acquire);
            server.shutdown();
            if exiting {
                eprintln!("snp-vmm: interrupted during start-up: no VM was created");
                return Ok(ExitCode::from(130));
            }
            return Err(anyhow!(e));
        }
    }
    log::info!(
        "API on {}",
        server
            .path()
            .unwrap_or(Path::new("an inherited socket"))
            .display()
    );
    vmm.wait_for_exit_request();
    server.shutdown();
    Ok(ExitCode::SUCCESS)
}

fn run(args: Args) -> Result<ExitCode> {
    init_logging(args.verbose);
    if args.check.check_host {
        return check_host::run(&args.check, args.json);
    }
    let (monitor, events) = match &args.event_monitor {
        Some(config) => {
            let (monitor, sender) =
                EventMonitor::start(config).context("cannot start the event monitor")?;
            (Some(monitor), sender)
        }
        None => (None, EventSender::disabled()),
    };
    let backend = open_backend(args.hypervisor)?;
    events.event(
        "vmm",
        "started",
        [("hypervisor", serde_json::json!(backend.name()))],
    );
    // Reports go to stdout only when run from the command line; with an API
    // they are in the event stream and the log.
    let guests = Arc::new(TestGuests::new(args.api_socket.is_none() && !args.json));
    let vmm = Arc::new(Vmm::new(
        backend,
        events.clone(),
        Arc::clone(&guests) as Arc<dyn vmm::payload::PayloadFactory>,
    ));
    let code = match &args.api_socket {
        Some(socket) => serve_api(&args, socket, Arc::clone(&vmm))?,
        None => {
            if !args.has_vm_options() {
                bail!("nothing to do: give VM options (--snp, --payload, ...) or --api-socket");
            }
            // SIGINT/SIGTERM set the VMM's exiting flag: a start-up wait
            // for the certs file ends, a running VM is stopped.
            let interrupted = vmm.exiting();
            for signal in [SIGINT, SIGTERM] {
                signal_hook::flag::register(signal, Arc::clone(&interrupted))
                    .context("cannot install the signal handler")?;
            }
            run_once(&args, &vmm, &guests, &interrupted)?
        }
    };
    events.event("vmm", "stopped", []);
    drop(vmm);
    if let Some(monitor) = monitor {
        let report = monitor.shutdown();
        if !report.complete {
            eprintln!("snp-vmm: the event monitor could not write everything before exit");
        }
    }
    Ok(code)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            stdout::print_error("snp-vmm", &e, json);
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_socket_forms() {
        let path = |p: &str| Ok(ApiSocket::Path(PathBuf::from(p)));
        assert_eq!(ApiSocket::parse("/run/snp.sock"), path("/run/snp.sock"));
        assert_eq!(ApiSocket::parse("snp.sock"), path("snp.sock"));
        assert_eq!(ApiSocket::parse("/run/a=b.sock"), path("/run/a=b.sock"));
        assert_eq!(ApiSocket::parse("path=/run/x"), path("/run/x"));
        assert_eq!(ApiSocket::parse("fd=3"), Ok(ApiSocket::Fd(3)));
        for bad in [
            "fd=x",
            "fd=-1",
            "path=/a,fd=3",
            "fd=3,fd=4",
            "sock=/x",
            "path=",
        ] {
            assert!(ApiSocket::parse(bad).is_err(), "{bad}");
        }
    }
}
