//! The certs configuration and statistics as the API shows them, and the
//! run-time update (`PUT vm.snp-certs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use snp_certs_types::answer::{OutcomeKind, Reason};
use snp_certs_types::settings::{CertsConfig, OnError};

/// `GET vm.snp-certs`, the answer to `PUT vm.snp-certs`, and the `certs`
/// part of `GET vm.info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpCertsInfo {
    /// The certificate table served; `null`: guests get an empty table.
    pub certs_file: Option<PathBuf>,
    /// Maximum wait for the shared lock, in milliseconds.
    pub certs_timeout: u64,
    /// Longest busy streak before the fallback, in milliseconds.
    pub busy_budget: u64,
    /// The fallback answer.
    pub on_error: OnError,
    /// Whether tables above 16 KiB are accepted.
    pub allow_large: bool,
    /// Whether guests' certificate requests reach the VMM. `false` only on
    /// an SEV-SNP VM whose host lacks the certificate exit (Linux before
    /// 7.0): KVM then answers every request with an empty table itself,
    /// and a certs file cannot be set.
    pub requests_reach_vmm: bool,
    /// How many times the configuration was replaced since the VM was
    /// created.
    pub generation: u64,
    /// Warnings about the current file found when it was set, such as a
    /// table larger than Linux guests accept.
    pub warnings: Vec<String>,
    /// What guests got so far.
    pub stats: VmCounters,
}

/// `PUT vm.snp-certs`: changes to the certs configuration. Absent fields
/// keep their current value:
///
/// | JSON | `certs_file` |
/// | --- | --- |
/// | `"certs_file": "/path"` | `Some(Some(path))`: serve this file from now on |
/// | `"certs_file": null` | `Some(None)`: serve an empty table |
/// | no `certs_file` key | `None`: keep the current file |
///
/// `certs_timeout`, `busy_budget`, `on_error` and `allow_large` absent
/// keep their current values; `null` is refused for them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpCertsUpdate {
    /// `None`: keep; `Some(None)`: clear; `Some(Some(path))`: switch.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub certs_file: Option<Option<PathBuf>>,
    /// `None`: keep; `Some(ms)`: the new timeout.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub certs_timeout: Option<u64>,
    /// `None`: keep; `Some(ms)`: the new busy budget.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub busy_budget: Option<u64>,
    /// `None`: keep; `Some(answer)`: the new fallback answer.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub on_error: Option<OnError>,
    /// `None`: keep; `Some(allowed)`: accept tables above 16 KiB or not.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_large: Option<bool>,
}

/// Deserialises a field that is present: with `#[serde(default)]` an absent
/// field stays `None`, and a present one is `Some(value)` where `value` is
/// whatever `T` reads, `null` included when `T` is an `Option`. For a
/// non-`Option` `T`, `null` is a type error.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl SnpCertsUpdate {
    /// An update switching to `path`.
    pub fn set_file(path: impl Into<PathBuf>) -> SnpCertsUpdate {
        SnpCertsUpdate {
            certs_file: Some(Some(path.into())),
            ..SnpCertsUpdate::default()
        }
    }

    /// An update clearing the certs file.
    pub fn clear_file() -> SnpCertsUpdate {
        SnpCertsUpdate {
            certs_file: Some(None),
            ..SnpCertsUpdate::default()
        }
    }

    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == SnpCertsUpdate::default()
    }

    /// Whether the update must read the certs file again: it names a file,
    /// or it turns `allow_large` off (the current table may be too large).
    pub fn rereads_file(&self) -> bool {
        matches!(self.certs_file, Some(Some(_))) || self.allow_large == Some(false)
    }

    /// The configuration after applying this update to `current`. Not
    /// validated here.
    pub fn apply(&self, current: &CertsConfig) -> CertsConfig {
        CertsConfig {
            certs_file: match &self.certs_file {
                Some(file) => file.clone(),
                None => current.certs_file.clone(),
            },
            certs_timeout: self.certs_timeout.unwrap_or(current.certs_timeout),
            busy_budget: self.busy_budget.unwrap_or(current.busy_budget),
            on_error: self.on_error.unwrap_or(current.on_error),
            allow_large: self.allow_large.unwrap_or(current.allow_large),
        }
    }
}

/// Cloud Hypervisor's counters: device → counter name → value, the body of
/// `GET vm.counters`. Here there is one device, [`COUNTERS_DEVICE`]; see
/// [`VmCounters::counter_map`].
pub type CounterMap = BTreeMap<String, BTreeMap<String, u64>>;

/// The device name of the certificate counters in [`CounterMap`].
pub const COUNTERS_DEVICE: &str = "snp-certs";

/// `stats` in [`SnpCertsInfo`] (`GET vm.snp-certs`): what guests got
/// since the VM was created. The VMM fills it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCounters {
    /// Requests by outcome.
    pub requests: OutcomeCounts,
    /// Requests by reason, keyed by the kebab-case
    /// [`Reason`] name (`served`, `lock-timeout`, ...).
    pub reasons: BTreeMap<String, u64>,
    /// Fallback answers (busy could not help, or the busy budget was
    /// spent), keyed by the reason of the fault.
    pub fallbacks: BTreeMap<String, u64>,
    /// Bytes written into guest buffers.
    pub bytes_delivered: u64,
    /// Time requests waited for the shared lock, in microseconds.
    pub lock_wait_us: LockWaitSummary,
    /// Leases (shared locks) held right now.
    pub leases_held: u64,
    /// Leases released so far.
    pub leases_released: u64,
    /// Events the event monitor dropped because its consumer was slow.
    pub events_dropped: u64,
}

impl VmCounters {
    /// These counters flattened into Cloud Hypervisor's map (`GET
    /// vm.counters`): under [`COUNTERS_DEVICE`], the outcomes
    /// (`delivered`, `need_pages`, `busy`, `failed`), `bytes_delivered`,
    /// `lock_waits`, `lock_wait_max_us`, `leases_held`, `leases_released`,
    /// `events_dropped`, then `reason_<reason>` and `fallback_<reason>`
    /// (reason names in snake_case, such as `reason_lock_timeout`).
    pub fn counter_map(&self) -> CounterMap {
        let r = &self.requests;
        let mut device: BTreeMap<String, u64> = [
            ("delivered", r.delivered),
            ("need_pages", r.need_pages),
            ("busy", r.busy),
            ("failed", r.failed),
            ("bytes_delivered", self.bytes_delivered),
            ("lock_waits", self.lock_wait_us.count),
            ("lock_wait_max_us", self.lock_wait_us.max),
            ("leases_held", self.leases_held),
            ("leases_released", self.leases_released),
            ("events_dropped", self.events_dropped),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (prefix, map) in [("reason", &self.reasons), ("fallback", &self.fallbacks)] {
            for (reason, n) in map {
                device.insert(format!("{prefix}_{}", reason.replace('-', "_")), *n);
            }
        }
        BTreeMap::from([(COUNTERS_DEVICE.to_owned(), device)])
    }

    /// Counts one request with `kind` and `reason`.
    pub fn record(&mut self, kind: OutcomeKind, reason: Reason) {
        *self.requests.get_mut(kind) += 1;
        *self.reasons.entry(reason.as_str().to_owned()).or_default() += 1;
    }
}

/// Requests by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeCounts {
    /// Tables (possibly empty) written; `ret` 0.
    pub delivered: u64,
    /// Buffers too small, size queries included; `ret` ENOSPC.
    pub need_pages: u64,
    /// Host-side trouble; `ret` EAGAIN.
    pub busy: u64,
    /// Permanent guest faults; `ret` EIO.
    pub failed: u64,
}

impl OutcomeCounts {
    /// The count for `kind`.
    pub fn get(&self, kind: OutcomeKind) -> u64 {
        match kind {
            OutcomeKind::Delivered => self.delivered,
            OutcomeKind::NeedPages => self.need_pages,
            OutcomeKind::Busy => self.busy,
            OutcomeKind::Failed => self.failed,
        }
    }

    /// The counter for `kind`.
    pub fn get_mut(&mut self, kind: OutcomeKind) -> &mut u64 {
        match kind {
            OutcomeKind::Delivered => &mut self.delivered,
            OutcomeKind::NeedPages => &mut self.need_pages,
            OutcomeKind::Busy => &mut self.busy,
            OutcomeKind::Failed => &mut self.failed,
        }
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.delivered
            .saturating_add(self.need_pages)
            .saturating_add(self.busy)
            .saturating_add(self.failed)
    }
}

/// A distribution of lock waits; all values in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockWaitSummary {
    /// Waits measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Longest.
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(v: serde_json::Value) -> Result<SnpCertsUpdate, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn absent_null_and_value_differ() {
        assert_eq!(update(json!({})).unwrap(), SnpCertsUpdate::default());
        assert_eq!(
            update(json!({"certs_file": null})).unwrap(),
            SnpCertsUpdate::clear_file()
        );
        assert_eq!(
            update(json!({"certs_file": "/c"})).unwrap(),
            SnpCertsUpdate::set_file("/c")
        );
        assert_eq!(
            update(json!({"certs_timeout": 5})).unwrap(),
            SnpCertsUpdate {
                certs_timeout: Some(5),
                ..SnpCertsUpdate::default()
            }
        );
        assert_eq!(
            update(json!({"busy_budget": 500, "on_error": "busy", "allow_large": true})).unwrap(),
            SnpCertsUpdate {
                busy_budget: Some(500),
                on_error: Some(OnError::Busy),
                allow_large: Some(true),
                ..SnpCertsUpdate::default()
            }
        );
        assert!(update(json!({"on_error": null})).is_err());
    }

    #[test]
    fn bad_updates_are_refused() {
        assert!(update(json!({"certs_timeout": null})).is_err());
        assert!(update(json!({"certs_timeout": "5"})).is_err());
        assert!(update(json!({"certs_timeout": -1})).is_err());
        assert!(update(json!({"certs_file": 3})).is_err());
        let err = update(json!({"certs_file": "/c", "certs-timeout": 3})).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `certs-timeout`"),
            "{err}"
        );
    }

    #[test]
    fn serialisation_keeps_the_distinction() {
        let s = |u: &SnpCertsUpdate| serde_json::to_value(u).unwrap();
        assert_eq!(s(&SnpCertsUpdate::default()), json!({}));
        assert_eq!(
            s(&SnpCertsUpdate::clear_file()),
            json!({"certs_file": null})
        );
        assert_eq!(
            s(&SnpCertsUpdate::set_file("/c")),
            json!({"certs_file": "/c"})
        );
        for u in [
            SnpCertsUpdate::default(),
            SnpCertsUpdate::clear_file(),
            SnpCertsUpdate::set_file("/c"),
        ] {
            assert_eq!(update(s(&u)).unwrap(), u);
        }
    }

    #[test]
    fn apply_keeps_clears_and_switches() {
        let current = CertsConfig {
            certs_timeout: 7,
            ..CertsConfig::with_file("/old")
        };
        assert_eq!(SnpCertsUpdate::default().apply(&current), current);
        assert!(SnpCertsUpdate::default().is_empty());
        assert_eq!(
            SnpCertsUpdate::clear_file().apply(&current).certs_file,
            None
        );
        let change = SnpCertsUpdate {
            certs_file: Some(Some("/new".into())),
            certs_timeout: Some(0),
            busy_budget: Some(1),
            on_error: Some(OnError::Busy),
            allow_large: Some(true),
        };
        assert!(change.rereads_file());
        assert_eq!(
            change.apply(&current),
            CertsConfig {
                certs_file: Some("/new".into()),
                certs_timeout: 0,
                busy_budget: 1,
                on_error: OnError::Busy,
                allow_large: true,
            }
        );
        assert!(!SnpCertsUpdate::clear_file().rereads_file());
        let disallow = SnpCertsUpdate {
            allow_large: Some(false),
            ..SnpCertsUpdate::default()
        };
        assert!(disallow.rereads_file());
    }

    #[test]
    fn counters_record_and_total() {
        let mut c = VmCounters::default();
        c.record(OutcomeKind::Delivered, Reason::Served);
        c.record(OutcomeKind::Busy, Reason::LockTimeout);
        c.record(OutcomeKind::Busy, Reason::LockTimeout);
        assert_eq!(c.requests.total(), 3);
        assert_eq!(c.requests.get(OutcomeKind::Busy), 2);
        assert_eq!(c.reasons["lock-timeout"], 2);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["requests"]["need_pages"], 0);
        assert_eq!(serde_json::from_value::<VmCounters>(v).unwrap(), c);
        let map = c.counter_map();
        let device = &map[COUNTERS_DEVICE];
        assert_eq!(device["busy"], 2);
        assert_eq!(device["delivered"], 1);
        assert_eq!(device["reason_lock_timeout"], 2);
        assert_eq!(device["reason_served"], 1);
        assert_eq!(
            serde_json::to_value(&map).unwrap()["snp-certs"]["need_pages"],
            0
        );
    }
}
