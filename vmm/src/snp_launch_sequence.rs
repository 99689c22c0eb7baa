//! The VMM's launch sequence of an SEV-SNP VM, in the order the kernel
//! documents (see [`hypervisor::snp_interface`]): after the vCPUs exist,
//! `LAUNCH_START` with the guest policy, `LAUNCH_UPDATE` for each range the
//! payload declares, then `LAUNCH_FINISH`. And the host's C-bit position,
//! which an SNP payload's page tables need before it is built.
//!
//! # No CPUID page
//!
//! This VMM builds no SNP CPUID page. Firmware checks every entry of one
//! against the CPU and refuses the launch for a single bit too many; a
//! guest only needs the page if it executes CPUID, and the built-in SNP
//! guest never does (its tests check its machine code for the
//! instruction). A payload that declares a CPUID range is refused when the
//! VM is created, with that reason.

use hypervisor::{Hypervisor, HypervisorError, SnpLaunch, SnpPageType};
use vmm_api::TestGuestConfig;

use crate::payload::{LaunchRange, PayloadError};
use crate::vm_error::VmError;

/// Runs the launch of `ranges` with `policy` and `host_data`. The bytes of
/// each range are already in guest memory (the payload loaded them).
pub fn launch(
    snp: &dyn SnpLaunch,
    ranges: &[LaunchRange],
    policy: u64,
    host_data: [u8; 32],
) -> Result<(), VmError> {
    if let Some(cpuid) = ranges.iter().find(|r| r.page_type == SnpPageType::Cpuid) {
        return Err(VmError::Payload(PayloadError::Invalid(format!(
            "the payload asks for an SNP CPUID page at {:#x}; this VMM builds none (its guests never execute CPUID)",
            cpuid.gpa
        ))));
    }
    snp.launch_start(policy)?;
    for range in ranges {
        snp.launch_update(range.gpa, range.len, range.page_type)?;
    }
    snp.launch_finish(host_data)?;
    Ok(())
}

/// `guest` with the host's C-bit position filled in: an SNP guest's page
/// tables must carry the encryption bit where this host's CPU has it
/// ([`Hypervisor::snp_c_bit`]). A position given in the configuration must
/// be the host's (as QEMU refuses a `cbitpos` other than the host's).
pub fn with_host_c_bit(
    guest: &TestGuestConfig,
    hv: &dyn Hypervisor,
) -> Result<TestGuestConfig, VmError> {
    let TestGuestConfig::SnpAttest {
        requests,
        interval_ms,
        retry_ms,
        max_busy_retries,
        c_bit,
    } = *guest
    else {
        return Ok(*guest);
    };
    let host = hv.snp_c_bit().ok_or(HypervisorError::SnpUnsupported {
        reason: "the host reports no C-bit position (CPUID 0x8000001F): see snp-vmm --check-host",
        source: None,
    })?;
    if let Some(asked) = c_bit {
        if asked != host {
            return Err(VmError::Payload(PayloadError::Invalid(format!(
                "c-bit={asked} is not this host's C-bit position ({host}, CPUID 0x8000001F)"
            ))));
        }
    }
    Ok(TestGuestConfig::SnpAttest {
        requests,
        interval_ms,
        retry_ms,
        max_busy_retries,
        c_bit: Some(host),
    })
}

#[cfg(test)]
mod tests {
    use hypervisor::mock::{KernelModelConfig, MockHypervisor};

    use super::*;

    fn snp_guest(c_bit: Option<u8>) -> TestGuestConfig {
        TestGuestConfig::SnpAttest {
            requests: 1,
            interval_ms: 0,
            retry_ms: 0,
            max_busy_retries: 0,
            c_bit,
        }
    }

    #[test]
    fn the_c_bit_comes_from_the_host() {
        let hv = MockHypervisor::new().with_kernel_model(KernelModelConfig {
            c_bit: 47,
            ..Default::default()
        });
        let filled = with_host_c_bit(&snp_guest(None), &hv).unwrap();
        assert_eq!(filled, snp_guest(Some(47)));
        assert!(with_host_c_bit(&snp_guest(Some(47)), &hv).is_ok());
        let err = with_host_c_bit(&snp_guest(Some(51)), &hv).unwrap_err();
        assert!(err.to_string().contains("Payload"), "{err}");
        let no_snp = MockHypervisor::new().with_snp(false);
        assert!(with_host_c_bit(&snp_guest(None), &no_snp).is_err());
    }

    #[test]
    fn a_cpuid_range_is_refused_before_any_command() {
        let hv = MockHypervisor::new();
        let vm = hv.create_vm(hypervisor::VmType::Snp).unwrap();
        let ranges = [LaunchRange {
            gpa: 0x8000,
            len: 4096,
            page_type: SnpPageType::Cpuid,
        }];
        let err = launch(vm.snp().unwrap(), &ranges, 0, [0; 32]).unwrap_err();
        assert!(format!("{err:?}").contains("CPUID page"), "{err:?}");
        assert!(
            !hv.log()
                .events()
                .iter()
                .any(|e| matches!(e, hypervisor::mock::MockEvent::SnpLaunchStart { .. }))
        );
    }
}
