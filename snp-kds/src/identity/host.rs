//! Reading the platform identity from the host's SEV firmware.
//!
//! Through `/dev/sev` (the kernel's ccp driver), with the virtee `sev`
//! crate's firmware API: `GET_ID` gives the 64-byte chip ID and
//! `SNP_PLATFORM_STATUS` the reported TCB, which is what the VCEK in new
//! attestation reports is issued for (after `SNP_COMMIT` it is the
//! committed TCB). The product line is read from CPUID. Only root can
//! open `/dev/sev`; where it does not exist (not an SNP host, or the
//! driver is not loaded) [`read_host`] fails with
//! [`IdentityError::HostOpen`].

use sev::firmware::host::Firmware;

use super::{Hwid, IdentityError, PlatformId, Product, TcbLevels};

/// Converts the `sev` crate's TCB to ours.
fn levels(tcb: &sev::firmware::host::TcbVersion, product: Product) -> TcbLevels {
    TcbLevels {
        bootloader: tcb.bootloader,
        tee: tcb.tee,
        snp: tcb.snp,
        microcode: tcb.microcode,
        fmc: if product.has_fmc() {
            Some(tcb.fmc.unwrap_or(0))
        } else {
            None
        },
    }
}

/// The host CPU's product line, from CPUID.
fn host_product() -> Result<Product, IdentityError> {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID Fn8000_0001 EAX: with base family 0Fh (every EPYC), the
        // extended family is added to it and the extended model is the
        // model's high nibble.
        let eax = std::arch::x86_64::__cpuid(0x8000_0001).eax;
        let base_family = ((eax >> 8) & 0xf) as u8;
        let base_model = ((eax >> 4) & 0xf) as u8;
        let (family, model) = if base_family == 0xf {
            let ext_family = ((eax >> 20) & 0xff) as u8;
            let ext_model = ((eax >> 16) & 0xf) as u8;
            (
                base_family.saturating_add(ext_family),
                (ext_model << 4) | base_model,
            )
        } else {
            (base_family, base_model)
        };
        Product::from_cpuid(family, model).ok_or(IdentityError::HostCpu { family, model })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(IdentityError::HostCpu {
            family: 0,
            model: 0,
        })
    }
}

/// Reads this host's identity from its firmware. `product`, if given,
/// must agree with the CPU.
pub fn read_host(product: Option<Product>) -> Result<PlatformId, IdentityError> {
    let mut firmware = Firmware::open().map_err(IdentityError::HostOpen)?;
    let host = host_product()?;
    if let Some(given) = product {
        if given != host {
            return Err(IdentityError::HostProductMismatch { given, host });
        }
    }
    let id = firmware
        .get_identifier()
        .map_err(|source| IdentityError::HostCommand {
            command: "GET_ID",
            source,
        })?;
    let status = firmware
        .snp_platform_status()
        .map_err(|source| IdentityError::HostCommand {
            command: "SNP_PLATFORM_STATUS",
            source,
        })?;
    Ok(PlatformId {
        product: host,
        hwid: Hwid::from_bytes(&id.0, host)?,
        tcb: levels(&status.reported_tcb_version, host),
    })
}
