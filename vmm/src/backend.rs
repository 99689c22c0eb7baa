//! Choosing the hypervisor backend: real KVM, or the mock where `/dev/kvm`
//! is missing (only when asked for, with `auto`).
//!
//! The default is KVM: a VMM (or a CI job) that asks for nothing gets real
//! KVM or an error, never the mock in its place. `auto` is the one choice
//! that falls back, and it says so: the reason is returned to the caller
//! and logged as a warning here too.

use std::fmt;
use std::str::FromStr;

use hypervisor::kvm::KvmHypervisor;
use hypervisor::mock::{MockGuest, MockHypervisor};
use hypervisor::{Hypervisor, HypervisorError};
use vmm_api::error_chain;

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// KVM if `/dev/kvm` opens, else the mock (said loudly).
    Auto,
    /// KVM or fail: the default.
    #[default]
    Kvm,
    /// The mock: guest logic written in Rust, no real vCPUs.
    Mock,
    /// The mock simulating an SEV-SNP host with certificate requests, so
    /// the SNP launch and the SNP guest's requests run end to end without
    /// SNP hardware (tests and demonstrations only).
    MockSnp,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "kvm" => Ok(BackendChoice::Kvm),
            "mock" => Ok(BackendChoice::Mock),
            "mock-snp" => Ok(BackendChoice::MockSnp),
            other => Err(format!(
                "unknown hypervisor {other:?}: use kvm, mock, mock-snp or auto"
            )),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Kvm => "kvm",
            BackendChoice::Mock => "mock",
            BackendChoice::MockSnp => "mock-snp",
        })
    }
}

/// How many of its recent calls a mock that serves a VM keeps in its log
/// (it is read by tests, not by `snp-vmm`; without a bound it would grow
/// with every guest request).
const MOCK_LOG_LIMIT: usize = 4096;

/// A mock backend for `snp-vmm` (as opposed to a test's): a bounded log.
fn serving_mock() -> MockHypervisor {
    MockHypervisor::new().with_log_limit(MOCK_LOG_LIMIT)
}

/// The backend in use.
pub enum Backend {
    /// Linux KVM.
    Kvm(KvmHypervisor),
    /// The mock backend.
    Mock(MockHypervisor),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.name())
    }
}

impl Backend {
    /// Opens the backend. With [`BackendChoice::Auto`] a missing or
    /// unopenable `/dev/kvm` falls back to the mock; the reason is returned
    /// so the caller can say it plainly.
    pub fn open(choice: BackendChoice) -> Result<(Backend, Option<String>), HypervisorError> {
        match choice {
            BackendChoice::Mock => Ok((Backend::Mock(serving_mock().with_snp(false)), None)),
            BackendChoice::MockSnp => Ok((Backend::Mock(serving_mock()), None)),
            BackendChoice::Kvm => Ok((Backend::Kvm(KvmHypervisor::new()?), None)),
            BackendChoice::Auto => match KvmHypervisor::new() {
                Ok(kvm) => Ok((Backend::Kvm(kvm), None)),
                Err(e @ HypervisorError::KvmUnavailable { .. }) => {
                    let why = error_chain(&e);
                    log::warn!("KVM is not usable ({why}): using the mock backend, as auto allows");
                    Ok((Backend::Mock(serving_mock().with_snp(false)), Some(why)))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// The backend as the trait.
    pub fn hypervisor(&self) -> &dyn Hypervisor {
        match self {
            Backend::Kvm(kvm) => kvm,
            Backend::Mock(mock) => mock,
        }
    }

    /// `"kvm"` or `"mock"`.
    pub fn name(&self) -> &'static str {
        self.hypervisor().name()
    }

    /// On the mock, makes `guest` drive vCPU `id` of the next VM. On KVM
    /// the real program in guest memory runs instead, so this does nothing.
    pub fn set_mock_guest(&self, id: u8, guest: Box<dyn MockGuest>) {
        if let Backend::Mock(mock) = self {
            mock.set_boxed_guest(id, guest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_kvm_never_the_mock() {
        assert_eq!(BackendChoice::default(), BackendChoice::Kvm);
        for name in ["auto", "kvm", "mock", "mock-snp"] {
            let choice: BackendChoice = name.parse().unwrap();
            assert_eq!(choice.to_string(), name);
        }
        assert!("qemu".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn kvm_fails_rather_than_falling_back_where_dev_kvm_is_missing() {
        // Meaningful where /dev/kvm cannot be opened; where it can, KVM
        // itself is the answer.
        match Backend::open(BackendChoice::default()) {
            Ok((backend, fallback)) => {
                assert_eq!(backend.name(), "kvm");
                assert_eq!(fallback, None);
            }
            Err(e) => assert!(matches!(e, HypervisorError::KvmUnavailable { .. }), "{e}"),
        }
    }
}
