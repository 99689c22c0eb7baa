//! `snp-certs vcek-url`: the KDS URL of a VCEK, as `snphost show
//! vcek-url` prints it for its host.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use snp_kds::identity::host;

use crate::kds_args::IdentityArgs;

/// Print the KDS URL of this host's VCEK (chip ID and reported TCB read
/// from the firmware, as `snphost show vcek-url` does), or of the
/// platform named with --product/--hwid/--tcb or --from-report.
#[derive(Debug, Args)]
pub struct VcekUrlArgs {
    #[command(flatten)]
    id: IdentityArgs,
    /// KDS base URL (a caching proxy's, for a fleet behind one).
    #[arg(long, value_name = "URL", default_value = snp_kds::url::DEFAULT_BASE)]
    kds: String,
}

/// Runs `vcek-url`.
pub fn run(args: &VcekUrlArgs) -> Result<ExitCode> {
    let id = &args.id;
    let named = id.hwid.is_some() || id.tcb.is_some() || id.from_report.is_some();
    let platform = if named || id.from_host {
        id.resolve()?
    } else {
        host::read_host(id.product)?
    };
    outln!("{}", snp_kds::url::vcek_url(&args.kds, &platform));
    Ok(ExitCode::SUCCESS)
}
