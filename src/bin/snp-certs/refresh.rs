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
//! If step 3 or 4 fails and FILE's VCEK is not the one for the platform's
//! TCB (it changed), FILE is rewritten **without** a VCEK: the ASK and ARK
//! only (kept from FILE, or from the cache or KDS), and the command says
//! so loudly and exits with 3. A guest then gets its report with the chain
//! but no VCEK (it can fetch one itself), instead of a stale VCEK that
//! does not verify its report. If FILE's VCEK still matches, FILE is left
//! unchanged.
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
use crate::kds_args::{KdsArgs, parse_product, report_error, table_vcek, vcek_platform};
use crate::update::{DEFAULT_WRITER_TIMEOUT_MS, EXIT_LOCK_TIMEOUT, describe, is_lock_timeout};

/// Exit code: FILE was rewritten without a VCEK (chain only), because the
/// certificates for the platform's new TCB could not be obtained.
pub const EXIT_DEGRADED: u8 = 3;

/// Under one exclusive lock on FILE: run CMD (e.g. a firmware commit), read
/// the platform's reported TCB (--from-host) or take --tcb, fetch the
/// matching VCEK, ASK, ARK and CRL (cache first, verified), and rewrite
/// FILE in place. If the new TCB's VCEK cannot be had, FILE is rewritten
/// with the chain only (no stale VCEK) and the exit code is 3. Other exit
/// codes: 0 done; the command's status if it failed (FILE untouched); 75
/// lock not taken in time; 1, 66, 69 as for `fetch` when FILE is left as
/// it was; 2 other errors.
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
    let kds = Kds::new(args.kds.config());
    match kds.fetch(&FetchRequest::vcek(id.clone(), !args.no_crl)) {
        Ok(bundle) => {
            outln!(
                "cached the certificates for {id} in {}",
                args.kds.cache.display()
            );
            print_sources(&bundle, &kds);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(ExitCode::from(report_error(e, "prefetch"))),
    }
}

/// Runs `refresh`.
pub fn run(args: &RefreshArgs) -> Result<ExitCode> {
    if args.prefetch {
        return prefetch(args);
    }
    let lock = match ExclusiveLock::acquire(&args.file, Duration::from_millis(args.timeout)) {
        Ok(lock) => lock,
        Err(e) if is_lock_timeout(&e) => {
            eprintln!(
                "snp-certs: {:#}; nothing was run or changed",
                anyhow::Error::new(e)
            );
            return Ok(ExitCode::from(EXIT_LOCK_TIMEOUT));
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot lock {}", args.file.display()))
            );
        }
    };
    let ran_command = match args.command.split_first() {
        Some((program, rest)) => match child::run(program, rest)? {
            Err(code) => return Ok(ExitCode::from(code)),
            Ok(status) if !status.success() => {
                eprintln!(
                    "snp-certs: the command failed ({status}); {} was not changed",
                    args.file.display()
                );
                return Ok(ExitCode::from(child::exit_code(status)));
            }
            Ok(_) => true,
        },
        None => false,
    };
    let old_bytes = lock.read()?;
    let old = CertTable::parse(&old_bytes).ok();
    let old_vcek = old.as_ref().and_then(table_vcek);
    let kds = Kds::new(args.kds.config());
    let id = match identity(args, old_vcek.as_ref()) {
        Ok(id) => id,
        Err(e) if ran_command => {
            let why = format!("cannot tell the TCB after the command: {e:#}");
            return degrade(args, &lock, old.as_ref(), &kds, None, &why);
        }
        Err(e) => return Err(e),
    };
    match kds.fetch(&FetchRequest::vcek(id.clone(), !args.no_crl)) {
        Ok(bundle) => {
            let report = lock
                .rewrite(&bundle.table, &UpdateOptions::default())
                .with_context(|| format!("cannot update {}", args.file.display()))?;
            outln!("{} (VCEK for {id})", describe(&report));
            print_sources(&bundle, &kds);
            lock.release();
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if old_vcek.as_ref().is_some_and(|v| vcek_is_for(v, &id)) => {
            let code = report_error(e, "refresh");
            eprintln!(
                "snp-certs: {} still holds the VCEK for {id}; left unchanged",
                args.file.display()
            );
            Ok(ExitCode::from(code))
        }
        Err(e) => {
            let why = format!("{:#}", anyhow::Error::new(e));
            degrade(args, &lock, old.as_ref(), &kds, Some(&id), &why)
        }
    }
}
