use std::fs;
use std::os::unix::fs::MetadataExt;

use super::locked::{ReadAll, read_all};
use super::*;
use crate::guid::CertKind;
use crate::lock::{self, LockKind};
use crate::table::{MAX_TABLE_SIZE, TableBuilder};

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

/// Polls `/proc/locks` until some lock request is blocked on `file`.
fn wait_for_waiter_on(file: &fs::File) {
    lock::holders::wait_for_blocked(&file.metadata().unwrap(), 1);
}

/// Makes a reader find its file replaced `times` times in one request:
/// every version of the file is held exclusively by this test; once the
/// reader is blocked on version `k` (seen in `/proc/locks`), version
/// `k + 1` is renamed over the path and `k` unlocked, so the reader's
/// re-check after locking finds the path naming another file. The last
/// version is unlocked once the reader waits for it too (if it gets there).
fn read_while_replaced(times: usize) -> Result<u32, CertsFileError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs");
    let mut versions = Vec::new();
    for k in 0..=times {
        let staged = write(dir.path(), &format!("v{k}"), &table(k as u8, 100));
        let file = fs::OpenOptions::new().write(true).open(&staged).unwrap();
        assert!(lock::try_lock(&file, LockKind::Exclusive).unwrap());
        versions.push((staged, file));
    }
    fs::rename(&versions[0].0, &path).unwrap();
    let reader = std::thread::spawn({
        let path = path.clone();
        move || {
            CertsReader::new()
                .lock_and_read(&path, Duration::from_secs(60))
                .map(|locked| locked.reopened)
        }
    });
    for k in 0..times {
        wait_for_waiter_on(&versions[k].1);
        fs::rename(&versions[k + 1].0, &path).unwrap();
        lock::unlock(&versions[k].1).unwrap();
    }
    let last = &versions[times].1;
    let last_meta = last.metadata().unwrap();
    // Either the reader gave up (it never waits for the last version), or
    // it waits for it: let it through then.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() {
        if lock::holders::blocked_on(&last_meta) > 0 {
            lock::unlock(last).unwrap();
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reader neither gave up nor waited"
        );
        std::thread::yield_now();
    }
    reader.join().unwrap()
}

#[test]
fn a_file_replaced_more_than_max_reopens_times_keeps_changing() {
    let max = MAX_REOPENS as usize;
    // Replaced exactly MAX_REOPENS times in one request: still served, from
    // the last version.
    assert_eq!(read_while_replaced(max).unwrap(), MAX_REOPENS);
    // One more: the reader gives up instead of chasing it for ever.
    let err = read_while_replaced(max + 1).unwrap_err();
    match &err {
        CertsFileError::KeepsChanging { times, .. } => assert_eq!(*times, MAX_REOPENS + 1),
        other => panic!("expected KeepsChanging, got {other:?}"),
    }
    let times = MAX_REOPENS + 1;
    assert!(
        err.to_string()
            .contains(&format!("was replaced {times} times")),
        "{err}"
    );
}

#[test]
fn read_all_reads_to_the_end_whatever_size_it_was_told() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = table(3, 9000);
    let path = write(dir.path(), "certs", &bytes);
    let file = File::open(&path).unwrap();
    let mut buffer = Vec::new();
    // Told the truth, too little (the file grew), too much (it shrank).
    for hint in [bytes.len() as u64, 10, 0, bytes.len() as u64 + 5000] {
        match read_all(&file, hint, &mut buffer).unwrap() {
            ReadAll::Read(len) => assert_eq!(&buffer[..len], bytes.as_slice(), "hint {hint}"),
            ReadAll::TooLarge => panic!("hint {hint}: too large"),
        }
    }
    assert!(matches!(
        read_all(&file, MAX_TABLE_SIZE as u64 + 1, &mut buffer).unwrap(),
        ReadAll::TooLarge
    ));
}

#[test]
fn the_buffer_is_grown_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 8000));
    let mut reader = CertsReader::new();
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    let (at, len) = (reader.buffer.as_ptr(), reader.buffer.len());
    let small = table(2, 100);
    fs::write(&path, &small).unwrap();
    let locked = reader.lock_and_read(&path, Duration::ZERO).unwrap();
    assert_eq!(locked.bytes, small.as_slice());
    drop(locked);
    assert_eq!((reader.buffer.as_ptr(), reader.buffer.len()), (at, len));
}

#[test]
fn a_timed_out_reader_keeps_its_descriptor_unless_the_file_was_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 100));
    let mut reader = CertsReader::new();
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    let first = Arc::as_ptr(&reader.open.as_ref().unwrap().file);
    // A writer holds the old inode...
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    assert!(reader.lock_and_read(&path, Duration::ZERO).is_err());
    assert_eq!(
        Arc::as_ptr(&reader.open.as_ref().unwrap().file),
        first,
        "same file: the descriptor is kept"
    );
    // ... and replaces the path while it keeps holding the old inode.
    let new = table(2, 300);
    fs::rename(write(dir.path(), "certs.new", &new), &path).unwrap();
    assert!(reader.lock_and_read(&path, Duration::ZERO).is_err());
    assert!(reader.open.is_none(), "replaced: the descriptor is dropped");
    let locked = reader.lock_and_read(&path, Duration::ZERO).unwrap();
    assert_eq!(locked.bytes, new.as_slice());
    assert_eq!(locked.reopened, 0);
}

#[test]
fn the_timeout_counts_from_the_start_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 100));
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    lock::lock(&writer, LockKind::Exclusive, Duration::ZERO).unwrap();
    let timeout = Duration::from_millis(30);
    let start = Instant::now();
    let err = CertsReader::new().read_locked(&path, timeout).unwrap_err();
    let took = start.elapsed();
    // The wait reported covers the whole request (the open included), so
    // it is never shorter than the timeout, and never longer than what the
    // request took.
    let waited = err.lock_wait();
    assert!(waited >= timeout, "{waited:?}");
    assert!(waited <= took, "{waited:?} > {took:?}");
}

/// A guest buffer of `len` bytes filled with 0xee.
fn guest_buffer(len: usize) -> vm_memory::GuestMemoryMmap {
    use vm_memory::{Bytes, GuestAddress};
    let memory = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), len)]).unwrap();
    memory
        .write_slice(&vec![0xee; len], GuestAddress(0))
        .unwrap();
    memory
}

fn guest_bytes(memory: &vm_memory::GuestMemoryMmap, len: usize) -> Vec<u8> {
    use vm_memory::{Bytes, GuestAddress};
    let mut out = vec![0; len];
    memory.read_slice(&mut out, GuestAddress(0)).unwrap();
    out
}

fn direct(reader: &mut CertsReader, path: &Path, memory: &vm_memory::GuestMemoryMmap) -> bool {
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let mut file = reader.lock(path, Duration::ZERO).unwrap();
    let dest = memory.get_slice(GuestAddress(0), 16384).unwrap();
    file.read_into(&dest).unwrap()
}

#[test]
fn only_a_version_validated_in_the_readers_buffer_is_read_into_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = table(1, 3000);
    let path = write(dir.path(), "certs", &bytes);
    let memory = guest_buffer(16384);
    let mut reader = CertsReader::new();
    // Never validated: nothing is read into the guest's buffer.
    assert!(!direct(&mut reader, &path, &memory));
    assert_eq!(guest_bytes(&memory, 16384), vec![0xee; 16384]);
    // Validated in the reader's buffer: now it goes straight there.
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    assert!(direct(&mut reader, &path, &memory));
    assert_eq!(guest_bytes(&memory, bytes.len()), bytes);
    // Rewritten in place (a new change time): validated first again, so
    // bytes that are no table never reach the guest.
    let memory = guest_buffer(16384);
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&path, vec![0x41; 3000]).unwrap();
    assert!(!direct(&mut reader, &path, &memory));
    assert_eq!(guest_bytes(&memory, 16384), vec![0xee; 16384]);
    assert!(matches!(
        reader.read_locked(&path, Duration::ZERO),
        Err(ReadError::Invalid(_))
    ));
    assert!(!direct(&mut reader, &path, &memory));
    assert_eq!(guest_bytes(&memory, 16384), vec![0xee; 16384]);
}

#[test]
fn a_table_that_does_not_validate_where_it_landed_is_not_confirmed() {
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "certs", &table(1, 3000));
    let memory = guest_buffer(16384);
    let mut reader = CertsReader::new();
    drop(reader.lock_and_read(&path, Duration::ZERO).unwrap());
    // The file turns into something that is no table, and the reader
    // believes the version validated (as a rewrite within one tick of a
    // coarse change time could leave it).
    let garbage = vec![0x41; fs::metadata(&path).unwrap().len() as usize];
    fs::write(&path, &garbage).unwrap();
    let mut file = reader.lock(&path, Duration::ZERO).unwrap();
    let version = file.version;
    if let Some(open) = &mut file.reader.open {
        let mut validated = open.validated.expect("validated");
        validated.version = version;
        open.validated = Some(validated);
    }
    let dest = memory.get_slice(GuestAddress(0), 16384).unwrap();
    assert!(!file.read_into(&dest).unwrap(), "not confirmed");
    assert!(
        file.reader.open.as_ref().unwrap().validated.is_none(),
        "the version is forgotten: the next request validates in the buffer"
    );
    assert!(matches!(file.read(), Err(ReadError::Invalid(_))));
}
