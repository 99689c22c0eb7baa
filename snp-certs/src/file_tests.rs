use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::guid::CertKind;
use crate::lock::{self, LockKind};
use crate::table::TableBuilder;

fn table(fill: u8, len: usize) -> Vec<u8> {
    let mut data = vec![fill; len];
    data[0] = 0x30;
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, data).unwrap();
    b.build().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn other_fd_can_lock_exclusive(path: &Path) -> bool {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    lock::try_lock(&f, LockKind::Exclusive).unwrap()
}

#[test]
fn reads_a_valid_file_under_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = table(1, 3000);
    let path = write(dir.path(), "certs", &bytes);
    let mut reader = CertsReader::new();
    let locked = reader.lock_and_read(&path, Duration::ZERO).unwrap();
    assert_eq!(locked.bytes, bytes.as_slice());
    assert_eq!(locked.reopened, 0);
    assert_eq!(locked.lock_wait, Duration::ZERO);
    assert!(
        !other_fd_can_lock_exclusive(&path),
        "lease must hold the lock"
    );
    drop(locked);
    assert!(
        other_fd_can_lock_exclusive(&path),
        "lease must release on drop"
    );
}

#[test]
fn descriptor_is_reused_while_the_file_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 100));
    let mut reader = CertsReader::new();
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    let first = Arc::as_ptr(&reader.open.as_ref().unwrap().file);
    // Rewritten in place: same inode, new content, same descriptor.
    let new = table(2, 200);
    fs::write(&path, &new).unwrap();
    let locked = reader.lock_and_read(&path, Duration::ZERO).unwrap();
    assert_eq!(locked.bytes, new.as_slice());
    drop(locked);
    assert_eq!(Arc::as_ptr(&reader.open.as_ref().unwrap().file), first);
}

#[test]
fn file_renamed_over_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 100));
    let mut reader = CertsReader::new();
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    let old_ino = fs::metadata(&path).unwrap().ino();
    // The cached descriptor now names an unlinked inode.
    let new = table(2, 300);
    let staged = write(dir.path(), "certs.new", &new);
    fs::rename(&staged, &path).unwrap();
    assert_ne!(fs::metadata(&path).unwrap().ino(), old_ino);
    let locked = reader.lock_and_read(&path, Duration::ZERO).unwrap();
    assert_eq!(locked.bytes, new.as_slice());
    assert_eq!(locked.reopened, 1);
    // The lock is on the new file.
    drop(locked);
    assert!(other_fd_can_lock_exclusive(&path));
}

#[test]
fn unlinked_file_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 100));
    let mut reader = CertsReader::new();
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    fs::remove_file(&path).unwrap();
    let err = reader.lock_and_read(&path, Duration::ZERO).unwrap_err();
    assert!(matches!(err, CertsFileError::Missing { .. }), "{err:?}");
}

#[test]
fn missing_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = CertsReader::new()
        .lock_and_read(&dir.path().join("nope"), Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, CertsFileError::Missing { .. }), "{err:?}");
}

#[test]
fn directory_and_fifo_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let err = CertsReader::new()
        .lock_and_read(dir.path(), Duration::ZERO)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CertsFileError::NotRegular {
                file_type: "directory",
                ..
            }
        ),
        "{err:?}"
    );
    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // Opening a FIFO with no writer would block without O_NONBLOCK.
    let err = CertsReader::new()
        .lock_and_read(&fifo, Duration::ZERO)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CertsFileError::NotRegular {
                file_type: "FIFO",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn invalid_and_oversized_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad", b"not a table");
    let err = CertsReader::new()
        .lock_and_read(&path, Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, CertsFileError::Invalid { .. }), "{err:?}");
    let path = write(dir.path(), "huge", &vec![0u8; MAX_TABLE_SIZE + 1]);
    let err = CertsReader::new()
        .lock_and_read(&path, Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, CertsFileError::TooLarge { .. }), "{err:?}");
    // Exactly at the limit is fine.
    let exact = table(3, MAX_TABLE_SIZE - 48);
    assert_eq!(exact.len(), MAX_TABLE_SIZE);
    let path = write(dir.path(), "exact", &exact);
    let mut reader = CertsReader::new();
    let locked = reader.lock_and_read(&path, Duration::ZERO).unwrap();
    assert_eq!(locked.bytes.len(), MAX_TABLE_SIZE);
}

#[test]
fn lock_timeout_is_reported_with_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 100));
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let err = CertsReader::new()
        .lock_and_read(&path, Duration::from_millis(30))
        .unwrap_err();
    assert!(err.lock_wait() >= Duration::from_millis(30), "{err:?}");
    assert!(matches!(
        err,
        CertsFileError::Lock {
            source: LockError::Timeout { .. },
            ..
        }
    ));
}

#[test]
fn a_second_read_with_a_live_lease_uses_its_own_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 100));
    let mut reader = CertsReader::new();
    let first = reader.lock_and_read(&path, Duration::ZERO).unwrap().lease;
    let second = reader.lock_and_read(&path, Duration::ZERO).unwrap().lease;
    drop(first);
    assert!(
        !other_fd_can_lock_exclusive(&path),
        "dropping one lease must not release the other"
    );
    drop(second);
    assert!(other_fd_can_lock_exclusive(&path));
}

#[test]
fn files_on_pseudo_file_systems_are_refused_unread() {
    for path in [
        "/proc/self/mem",
        "/proc/kmsg",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        let path = Path::new(path);
        if !path.exists() {
            continue;
        }
        match open_regular(path) {
            Err(CertsFileError::NotRegular { file_type, .. }) => {
                assert!(
                    file_type.contains("procfs") || file_type.contains("sysfs"),
                    "{file_type}"
                );
            }
            // Not even openable (permissions): refused all the same.
            Err(CertsFileError::Open { .. }) => {}
            other => panic!("{path:?}: {other:?}"),
        }
    }
    assert!(matches!(
        open_regular(Path::new("/proc/self/status")),
        Err(CertsFileError::NotRegular { .. })
    ));
}
