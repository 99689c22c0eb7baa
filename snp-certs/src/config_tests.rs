use std::fs;

use super::*;
use crate::guid::CertKind;
use crate::lock::{self, LockKind};
use crate::table::TableBuilder;

fn table_file(dir: &Path, name: &str, cert_len: usize) -> PathBuf {
    let mut b = TableBuilder::new();
    let mut data = vec![7; cert_len];
    data[0] = 0x30;
    b.add(CertKind::Vcek, data).unwrap();
    let path = dir.join(name);
    fs::write(&path, b.build().unwrap()).unwrap();
    path
}

fn valid_file(dir: &Path) -> PathBuf {
    table_file(dir, "certs.bin", 3)
}

#[test]
fn validate_checks_the_structural_rules_before_the_file() {
    // A relative path is refused without being opened (there is no such
    // file either, which would be a different error).
    let relative = CertsConfig::with_file("no-such-certs.bin");
    assert!(matches!(
        ActiveCerts::validate(relative, Duration::ZERO),
        Err(ConfigError::Settings(SettingsError::RelativePath(_)))
    ));
    let timeout = CertsConfig {
        certs_timeout: MAX_CERTS_TIMEOUT_MS + 1,
        ..CertsConfig::default()
    };
    assert!(matches!(
        ActiveCerts::validate(timeout, Duration::ZERO),
        Err(ConfigError::Settings(SettingsError::TimeoutTooLarge(_)))
    ));
}

#[test]
fn validate_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path());
    let active = ActiveCerts::validate(CertsConfig::with_file(&path), Duration::ZERO).unwrap();
    assert!(active.warnings.is_empty());
    let missing = CertsConfig::with_file(dir.path().join("nope"));
    assert!(matches!(
        ActiveCerts::validate(missing, Duration::ZERO),
        Err(ConfigError::File(CertsFileError::Missing { .. }))
    ));
}

#[test]
fn tables_above_16_kib_need_allow_large() {
    let dir = tempfile::tempdir().unwrap();
    let path = table_file(dir.path(), "big.bin", 17 * 1024);
    let err = ActiveCerts::validate(CertsConfig::with_file(&path), Duration::ZERO).unwrap_err();
    assert!(matches!(err, ConfigError::TooLargeForGuests { size, .. } if size > 17 * 1024));
    assert!(
        err.to_string().contains("Linux guests cannot receive"),
        "{err}"
    );
    let allowed = CertsConfig {
        allow_large: true,
        ..CertsConfig::with_file(&path)
    };
    let active = ActiveCerts::validate(allowed, Duration::ZERO).unwrap();
    assert!(
        active
            .warnings
            .iter()
            .any(|w| matches!(w, TableWarning::ExceedsLinuxGuestLimit { .. }))
    );
    // Exactly 16 KiB is fine.
    let exact = table_file(dir.path(), "exact.bin", LINUX_GUEST_MAX_SIZE - 48);
    ActiveCerts::validate(CertsConfig::with_file(&exact), Duration::ZERO).unwrap();
}

#[test]
fn update_is_all_or_nothing_and_counts_generations() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path());
    let shared = SharedCertsConfig::new(ActiveCerts::default());
    let snapshot = shared.current();
    shared
        .update(true, |c| CertsConfig {
            certs_file: Some(path.clone()),
            ..c.clone()
        })
        .unwrap();
    assert_eq!(shared.generation(), 1);
    assert_eq!(
        snapshot.config.certs_file, None,
        "a snapshot keeps its config"
    );
    let bad = shared.update(true, |c| CertsConfig {
        certs_file: Some(dir.path().to_owned()),
        ..c.clone()
    });
    assert!(bad.is_err());
    assert_eq!(
        shared.current().config.certs_file.as_deref(),
        Some(path.as_path())
    );
    assert_eq!(shared.generation(), 1);
}

#[test]
fn a_timeout_only_update_does_not_touch_the_locked_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path());
    let active = ActiveCerts::validate(CertsConfig::with_file(&path), Duration::ZERO).unwrap();
    let shared = SharedCertsConfig::new(active);
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let (previous, now) = shared
        .update(false, |c| CertsConfig {
            certs_timeout: 7,
            ..c.clone()
        })
        .unwrap();
    assert_eq!(previous.config.certs_timeout, DEFAULT_CERTS_TIMEOUT_MS);
    assert_eq!(now.config.certs_timeout, 7);
    assert_eq!(
        shared.current().config.certs_file.as_deref(),
        Some(path.as_path())
    );
    // Re-reading the file now times out: it is locked.
    assert!(shared.update(true, CertsConfig::clone).is_err());
    assert!(
        shared
            .update(false, |c| CertsConfig {
                certs_timeout: MAX_CERTS_TIMEOUT_MS + 1,
                ..c.clone()
            })
            .is_err()
    );
    assert_eq!(shared.generation(), 1);
}

#[test]
fn racing_updates_never_lose_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path());
    let start = CertsConfig {
        certs_timeout: 0,
        ..CertsConfig::with_file(&path)
    };
    let shared = SharedCertsConfig::new(ActiveCerts::validate(start, Duration::ZERO).unwrap());
    let threads = 4;
    let tries = 100;
    let results: Vec<Vec<Result<u64, String>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    (0..tries)
                        .map(|_| {
                            // Each update re-reads the file: the window in
                            // which another can win is wide.
                            shared
                                .update(true, |c| CertsConfig {
                                    certs_timeout: c.certs_timeout + 1,
                                    ..c.clone()
                                })
                                .map(|(previous, now)| {
                                    assert_eq!(
                                        now.config.certs_timeout,
                                        previous.config.certs_timeout + 1,
                                        "computed from the configuration it replaced"
                                    );
                                    now.config.certs_timeout
                                })
                                .map_err(|e| match e {
                                    ConfigError::UpdateConflict { .. } => e.to_string(),
                                    other => panic!("unexpected error: {other}"),
                                })
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut installed: Vec<u64> = results
        .iter()
        .flatten()
        .filter_map(|r| r.clone().ok())
        .collect();
    installed.sort_unstable();
    let n = installed.len() as u64;
    assert!(n > 0);
    // Every installed update built on the one before: 1, 2, ..., n.
    assert_eq!(installed, (1..=n).collect::<Vec<_>>());
    assert_eq!(shared.current().config.certs_timeout, n);
    assert_eq!(shared.generation(), n);
}

#[test]
fn an_update_that_keeps_losing_the_race_is_refused_and_changes_nothing() {
    let shared = SharedCertsConfig::new(ActiveCerts::default());
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let result = shared.update(false, |c| {
        attempts.fetch_add(1, Ordering::Relaxed);
        // Another update wins while this one is being computed.
        shared
            .update(false, |c| CertsConfig {
                certs_timeout: c.certs_timeout + 1,
                ..c.clone()
            })
            .unwrap();
        CertsConfig {
            certs_timeout: 999,
            ..c.clone()
        }
    });
    assert!(
        matches!(result, Err(ConfigError::UpdateConflict { races }) if races == MAX_UPDATE_RACES + 1),
        "{result:?}"
    );
    assert_eq!(attempts.load(Ordering::Relaxed), MAX_UPDATE_RACES + 1);
    let now = shared.current();
    assert_eq!(
        now.config.certs_timeout,
        DEFAULT_CERTS_TIMEOUT_MS + u64::from(MAX_UPDATE_RACES) + 1,
        "only the winners' changes"
    );
}

#[test]
fn on_error_names() {
    assert_eq!("empty".parse::<OnError>(), Ok(OnError::Empty));
    assert_eq!("busy".parse::<OnError>(), Ok(OnError::Busy));
    assert!("eio".parse::<OnError>().is_err());
    assert_eq!(OnError::default(), OnError::Empty);
    assert_eq!(serde_json::to_string(&OnError::Busy).unwrap(), "\"busy\"");
}
