//! `snp-certs refresh FILE [-- CMD…]`: bring a live certs file in step
//! with the platform's TCB, under one exclusive lock.
//!
//! 1. Take the exclusive lock on FILE (guests being served finish first;
//!    new requests wait or are answered "busy").
//! 2. Run CMD if given (a firmware update and `SNP_COMMIT`, e.g. `snphost
//!    commit`), supervised as `snp-certs lock` does. If it fails, FILE is
//!    left alone.
//! 3. Work out the identity: the TCB from `--tcb` or the firmware
//!    (`--from-host`); product and chip from the arguments, the firmware,
//!    or FILE's current VCEK.
//! 4. Fetch the matching certificates (cache first), verified.
//! 5. Rewrite FILE in place (same inode) with VCEK, ASK, ARK (and CRL),
//!    and unlock.
//!
//! **Never worse on the operator's word alone.** FILE's VCEK is only
//! dropped or replaced when the platform's TCB is known to have moved away
//! from it: read from the firmware (`--from-host`), or after CMD (a
//! command that changes the TCB) ran under the lock. Then, if step 3 or 4
//! fails, FILE is rewritten **without** a VCEK: the ASK and ARK only (kept
//! from FILE, or from the cache or KDS), and the command says so loudly
//! and exits with 3. A guest then gets its report with the chain but no
//! VCEK (it can fetch one itself), instead of a stale VCEK that does not
//! verify its report. With only `--tcb` (no CMD, no `--from-host`),
//! nothing says the platform moved: if the certificates cannot be had,
//! FILE stays byte for byte as it was and the exit code says why (66
//! offline and not cached, 69 KDS unavailable, 1 refused); a VCEK for
//! another TCB or chip than FILE's is not installed either (exit 1: use
//! `--from-host`, CMD, or `fetch` and `update`). FILE's VCEK that still
//! matches is never dropped.
//!
//! `--prefetch` only warms the cache for `--tcb` ahead of a maintenance
//! window: no lock, no command, FILE only read (for the chip and product).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use snp_certs::CertKind;
use snp_certs::table::{CertTable, TableBuilder};
use snp_certs::update::{ExclusiveLock, UpdateOptions};
use snp_certs_verify::x509::CertInfo;
use snp_kds::identity::host;
use snp_kds::{FetchRequest, Hwid, Kds, PlatformId, Product, SignerRequest, TcbLevels};

use crate::child;
use crate::fetch::print_sources;
use crate::files::with_locked_table;
use crate::kds_args::{
    EXIT_REFUSED, KdsArgs, parse_product, report_error, table_vcek, vcek_platform,
};
use crate::update::{DEFAULT_WRITER_TIMEOUT_MS, EXIT_LOCK_TIMEOUT, describe, is_lock_timeout};

/// Exit code: FILE was rewritten without a VCEK (chain only), because the
/// certificates for the platform's new TCB could not be obtained.
pub const EXIT_DEGRADED: u8 = 3;

/// Under one exclusive lock on FILE: run CMD (e.g. a firmware commit), read
/// the platform's reported TCB (--from-host) or take --tcb, fetch the
/// matching VCEK, ASK, ARK and CRL (cache first, verified), and rewrite
/// FILE in place. Only when the TCB is known to have moved (--from-host,
/// or CMD ran) and its VCEK cannot be had is FILE rewritten with the chain
/// only (no stale VCEK), exit code 3; with a bare --tcb FILE is left as it
/// was. Other exit codes: 0 done; the command's status if it failed (FILE
/// untouched); 75 lock not taken in time; 1 refused (does not verify, or
/// a VCEK for another TCB than FILE's on --tcb alone), 66 offline and not
/// cached, 69 KDS unavailable, each with FILE left as it was; 2 other
/// errors.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The live certs file guests are served from.
    file: PathBuf,
    /// The TCB to fetch for: reported-TCB hex or bl=N,tee=N,snp=N,ucode=N
    /// (and fmc=N on Turin).
    #[arg(long, value_name = "TCB", conflicts_with = "from_host")]
    tcb: Option<String>,
    /// Read the reported TCB (and chip ID and product) from this host's
    /// firmware, after CMD has run.
    #[arg(long)]
    from_host: bool,
    /// The product line (default: from the firmware or FILE's VCEK).
    #[arg(long, value_parser = parse_product)]
    product: Option<Product>,
    /// The chip's hardware ID in hex (default: from the firmware or FILE's
    /// VCEK).
    #[arg(long, value_name = "HEX")]
    hwid: Option<String>,
    /// Leave the CRL out of FILE.
    #[arg(long)]
    no_crl: bool,
    /// Only fetch into the cache for --tcb (ahead of a maintenance
    /// window): no lock, no command, FILE is not written.
    #[arg(long, conflicts_with = "command")]
    prefetch: bool,
    /// Maximum time in milliseconds to wait for readers to release FILE.
    #[arg(long, default_value_t = DEFAULT_WRITER_TIMEOUT_MS)]
    timeout: u64,
    #[command(flatten)]
    kds: KdsArgs,
    /// The command to run under the lock first, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// The identity to fetch for, from the arguments, the firmware, or the
/// VCEK FILE holds now.
fn identity(args: &RefreshArgs, old: Option<&CertInfo>) -> Result<PlatformId> {
    let host = if args.from_host {
        Some(host::read_host(args.product)?)
    } else {
        None
    };
    let old = old.and_then(|info| vcek_platform(info).ok());
    let product = args
        .product
        .or(host.as_ref().map(|h| h.product))
        .or(old.as_ref().map(|(p, _)| *p))
        .context("give --product (FILE holds no VCEK to take it from)")?;
    let hwid = match (&args.hwid, &host, &old) {
        (Some(hex), _, _) => Hwid::parse(hex, product)?,
        (None, Some(h), _) => h.hwid.clone(),
        (None, None, Some((p, hwid))) if *p == product => hwid.clone(),
        _ => bail!("give --hwid (FILE holds no {product} VCEK to take it from)"),
    };
    let tcb = match (&args.tcb, &host) {
        (Some(text), _) => TcbLevels::parse(text, product)?,
        (None, Some(h)) => h.tcb,
        (None, None) => bail!("give --tcb TCB, or --from-host to read it from the firmware"),
    };
    Ok(PlatformId { product, hwid, tcb })
}

/// Whether a VCEK's description names exactly `id`.
fn vcek_is_for(info: &CertInfo, id: &PlatformId) -> bool {
    info.hwid
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(&id.hwid.to_hex()))
        && info.tcb.as_ref().is_some_and(|t| id.tcb.matches(t))
}

/// A table with the chain but no VCEK: FILE's own ASK, ARK and CRL if it
/// has them, else the product's chain from the cache or KDS, else nothing.
fn chain_only(
    old: Option<&CertTable<'_>>,
    kds: &Kds,
    product: Option<Product>,
    crl: bool,
) -> Result<(Vec<u8>, String)> {
    if let Some(old) = old {
        if let (Some(ask), Some(ark)) = (old.get(CertKind::Ask), old.get(CertKind::Ark)) {
            let mut b = TableBuilder::new();
            b.add(CertKind::Ask, ask.data.to_vec())?;
            b.add(CertKind::Ark, ark.data.to_vec())?;
            let mut what = "its ASK and ARK";
            if let Some(crl) = old.get(CertKind::Crl) {
                b.add(CertKind::Crl, crl.data.to_vec())?;
                what = "its ASK, ARK and CRL";
            }
            return Ok((b.build()?, format!("{what} as they were")));
        }
    }
    if let Some(product) = product {
        let request = FetchRequest {
            product,
            signer: SignerRequest::None,
            crl,
        };
        match kds.fetch(&request) {
            Ok(bundle) => return Ok((bundle.table, format!("the {product} ASK and ARK"))),
            Err(e) => eprintln!("snp-certs: cannot get the {product} chain either: {e}"),
        }
    }
    Ok((
        TableBuilder::new().build()?,
        "no certificates at all".to_owned(),
    ))
}

/// Rewrites FILE without a VCEK and says so loudly.
fn degrade(
    args: &RefreshArgs,
    lock: &ExclusiveLock,
    old: Option<&CertTable<'_>>,
    kds: &Kds,
    id: Option<&PlatformId>,
    why: &str,
) -> Result<ExitCode> {
    let product = id.map(|id| id.product).or(args.product);
    let (table, what) = chain_only(old, kds, product, !args.no_crl)?;
    let report = lock
        .rewrite(&table, &UpdateOptions::default())
        .with_context(|| format!("cannot update {}", args.file.display()))?;
    let bar = "!".repeat(72);
    let target = id.map_or_else(|| "the new TCB".to_owned(), ToString::to_string);
    let tcb = id.map_or_else(|| "TCB".to_owned(), |id| id.tcb.to_string());
    let file = args.file.display();
    eprintln!(
        "{bar}\nWARNING: no VCEK for {target}:\n  {why}\n\
         {file} now holds {what}, WITHOUT a VCEK, rather than a VCEK that\n\
         does not match the TCB the firmware signs reports with. Guests get\n\
         their reports without a VCEK until this is fixed. Run the same\n\
         `snp-certs refresh {file} --tcb {tcb}` (without the command) once KDS\n\
         answers, or `--prefetch` ahead of the next update.\n{bar}"
    );
    eprintln!("{}", describe(&report));
    Ok(ExitCode::from(EXIT_DEGRADED))
}

/// Runs `refresh --prefetch`.
fn prefetch(args: &RefreshArgs) -> Result<ExitCode> {
    let old = if args.file.exists() {
        with_locked_table(&args.file, args.timeout, "read", table_vcek)?
    } else {
        None
    };
    let id = identity(args, old.as_ref())?;
    let config = args.kds.config()?;
    let cache = config.cache_dir.clone();
    let kds = Kds::new(config);
    match kds.fetch(&FetchRequest::vcek(id.clone(), !args.no_crl)) {
        Ok(bundle) => {
            outln!("cached the certificates for {id} in {}", cache.display());
            print_sources(&bundle, &kds);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(ExitCode::from(report_error(e, "prefetch"))),
    }
}

/// What says the platform's TCB is the one to fetch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcbWitness {
    /// The firmware (`--from-host`).
    Firmware,
    /// `--tcb` after CMD, a command that changes the TCB, ran.
    Command,
    /// `--tcb` alone: the operator's word.
    Word,
}

/// Takes the exclusive lock on FILE; `Err(code)` to exit with.
fn lock(args: &RefreshArgs) -> Result<Result<ExclusiveLock, u8>> {
    match ExclusiveLock::acquire(&args.file, Duration::from_millis(args.timeout)) {
        Ok(lock) => Ok(Ok(lock)),
        Err(e) if is_lock_timeout(&e) => {
            eprintln!(
                "snp-certs: {:#}; nothing was run or changed",
                anyhow::Error::new(e)
            );
            Ok(Err(EXIT_LOCK_TIMEOUT))
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", args.file.display())))
        }
    }
}

/// Runs CMD, if given; `Ok(Err(code))` when it failed (or could not run).
fn run_command(args: &RefreshArgs) -> Result<Result<bool, u8>> {
    let Some((program, rest)) = args.command.split_first() else {
        return Ok(Ok(false));
    };
    Ok(match child::run(program, rest)? {
        Err(code) => Err(code),
        Ok(status) if !status.success() => {
            eprintln!(
                "snp-certs: the command failed ({status}); {} was not changed",
                args.file.display()
            );
            Err(child::exit_code(status))
        }
        Ok(_) => Ok(true),
    })
}

/// Runs `refresh`.
pub fn run(args: &RefreshArgs) -> Result<ExitCode> {
    if args.prefetch {
        return prefetch(args);
    }
    // Everything that can be checked is, before anyone waits on the lock.
    let config = args.kds.config()?;
    let lock = match lock(args)? {
        Ok(lock) => lock,
        Err(code) => return Ok(ExitCode::from(code)),
    };
    let ran_command = match run_command(args)? {
        Ok(ran) => ran,
        Err(code) => return Ok(ExitCode::from(code)),
    };
    let witness = if args.from_host {
        TcbWitness::Firmware
    } else if ran_command {
        TcbWitness::Command
    } else {
        TcbWitness::Word
    };
    let old_bytes = lock.read()?;
    let old = CertTable::parse(&old_bytes).ok();
    let old_vcek = old.as_ref().and_then(table_vcek);
    let kds = Kds::new(config);
    let id = match identity(args, old_vcek.as_ref()) {
        Ok(id) => id,
        Err(e) if ran_command => {
            let why = format!("cannot tell the TCB after the command: {e:#}");
            return degrade(args, &lock, old.as_ref(), &kds, None, &why);
        }
        Err(e) => return Err(e),
    };
    let old_matches = old_vcek.as_ref().is_some_and(|v| vcek_is_for(v, &id));
    let file = args.file.display();
    match kds.fetch(&FetchRequest::vcek(id.clone(), !args.no_crl)) {
        Ok(_) if witness == TcbWitness::Word && old_vcek.is_some() && !old_matches => {
            let old_for = old_vcek.as_ref().map(describe_vcek).unwrap_or_default();
            eprintln!(
                "snp-certs: not replacing the VCEK in {file} ({old_for}) with the one for {id} \
                 on --tcb alone: nothing says the platform moved. Give --from-host (the \
                 firmware's reported TCB), or run the update under refresh (`-- CMD`); or \
                 install it deliberately with `snp-certs fetch … -o NEW` and \
                 `snp-certs update {file} --from NEW` (it is cached now). {file} is unchanged"
            );
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        Ok(bundle) => {
            let report = lock
                .rewrite(&bundle.table, &UpdateOptions::default())
                .with_context(|| format!("cannot update {file}"))?;
            outln!("{} (VCEK for {id})", describe(&report));
            print_sources(&bundle, &kds);
            lock.release();
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if old_matches => {
            let code = report_error(e, "refresh");
            eprintln!("snp-certs: {file} still holds the VCEK for {id}; left unchanged");
            Ok(ExitCode::from(code))
        }
        Err(e) if witness == TcbWitness::Word => {
            let code = report_error(e, "refresh");
            let old_for = old_vcek.as_ref().map_or_else(
                || "no VCEK".to_owned(),
                |v| format!("its VCEK, {}", describe_vcek(v)),
            );
            eprintln!(
                "snp-certs: {file} left unchanged ({old_for}): only --tcb says the TCB moved \
                 (no command ran, no --from-host), and a VCEK is never dropped on that alone"
            );
            Ok(ExitCode::from(code))
        }
        Err(e) => {
            let why = format!("{:#}", anyhow::Error::new(e));
            degrade(args, &lock, old.as_ref(), &kds, Some(&id), &why)
        }
    }
}

/// What a VCEK is for, for messages: `chip … at TCB …`.
fn describe_vcek(info: &CertInfo) -> String {
    let tcb = info
        .tcb
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |t| t.to_string().replace(' ', ","));
    let hwid = info.hwid.as_deref().unwrap_or("(none)");
    let short = hwid.get(..16).unwrap_or(hwid);
    format!("chip {short}… at TCB {tcb}")
}
