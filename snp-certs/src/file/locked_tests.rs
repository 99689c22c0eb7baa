//! Reading a locked file (`locked.rs`): what is believed when the file is
//! not what `stat` said under the lock (a writer that ignores the lock can
//! change it at any time: OFD locks are advisory, so this test is such a
//! writer), how many system calls a read costs, and read errors.

use std::fs;
use std::io::Write;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::locked::{ReadAll, pread_volatile, read_all};
use super::*;
use crate::guid::CertKind;
use crate::table::TableBuilder;

fn certs(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![7; len];
    data[0] = 0x30;
    let mut b = TableBuilder::new();
    b.add(CertKind::Vcek, data).unwrap();
    let bytes = b.build().unwrap();
    let path = dir.join("certs");
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Appends `bytes` to `path` without taking any lock.
fn append_ignoring_the_lock(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn guest_ram() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap()
}

#[test]
fn a_file_longer_than_stat_said_is_not_believed_in_the_guests_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = certs(dir.path(), 500);
    let mut reader = CertsReader::new();
    // Validated once: the next lock of this version may read straight
    // into guest memory.
    drop(reader.read_locked(&path, Duration::ZERO).unwrap());
    let mut file = reader.lock(&path, Duration::ZERO).unwrap();
    append_ignoring_the_lock(&path, &[0; 16]);
    let mem = guest_ram();
    let dest = mem.get_slice(GuestAddress(0), 4096).unwrap();
    assert!(
        !file.read_into(&dest).unwrap(),
        "more than the size was read"
    );
    drop(file);
    // The version `stat` gives now is another one: read and validated in
    // the reader's own buffer again, then believed in guest memory.
    drop(reader.read_locked(&path, Duration::ZERO).unwrap());
    let mut file = reader.lock(&path, Duration::ZERO).unwrap();
    assert!(file.read_into(&dest).unwrap());
    let mut got = vec![0; bytes.len()];
    dest.subslice(0, bytes.len()).unwrap().copy_to(&mut got[..]);
    assert_eq!(got, bytes);
}

#[test]
fn a_guest_buffer_shorter_than_the_file_is_not_read_into() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = certs(dir.path(), 500);
    let mut reader = CertsReader::new();
    drop(reader.read_locked(&path, Duration::ZERO).unwrap());
    let mut file = reader.lock(&path, Duration::ZERO).unwrap();
    let mem = guest_ram();
    let dest = mem.get_slice(GuestAddress(0), 100).unwrap();
    dest.copy_from(&[0xeeu8; 100][..]);
    assert!(!file.read_into(&dest).unwrap());
    let mut got = [0u8; 100];
    dest.copy_to(&mut got[..]);
    assert_eq!(got, [0xee; 100], "nothing was read into it");
}

#[test]
fn a_table_read_at_another_size_than_stat_said_is_not_remembered_as_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = certs(dir.path(), 500);
    let mut reader = CertsReader::new();
    let file = reader.lock(&path, Duration::ZERO).unwrap();
    // Bytes after the certificates leave the table valid.
    append_ignoring_the_lock(&path, &[0; 16]);
    let read = file.read().unwrap();
    assert_eq!(read.bytes.len(), 500 + 48 + 16);
    drop(read);
    let open = reader.open.as_ref().unwrap();
    assert!(open.validated.is_none(), "not the version stat gave");
}

/// Read system calls this thread has made (`/proc/thread-self/io`).
fn read_calls() -> u64 {
    let io = fs::read_to_string("/proc/thread-self/io")
        .expect("this test needs /proc/thread-self/io (task I/O accounting)");
    io.lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_file_of_the_size_stat_gave_is_read_in_one_system_call() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = certs(dir.path(), 5000);
    let file = File::open(&path).unwrap();
    let mut buffer = Vec::new();
    // What reading the counter itself costs, between two readings.
    let before = read_calls();
    let overhead = read_calls() - before;
    let before = read_calls();
    let read = read_all(&file, bytes.len() as u64, &mut buffer).unwrap();
    let calls = read_calls() - before - overhead;
    assert!(matches!(read, ReadAll::Read(n) if n == bytes.len()));
    assert_eq!(&buffer[..bytes.len()], &bytes[..]);
    assert_eq!(calls, 1, "one pread (asking a byte more shows the end)");
    // An empty file is read whole too.
    let empty = dir.path().join("empty");
    fs::write(&empty, b"").unwrap();
    let read = read_all(&File::open(&empty).unwrap(), 0, &mut buffer).unwrap();
    assert!(matches!(read, ReadAll::Read(0)));
}

#[test]
fn read_errors_are_reported_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = certs(dir.path(), 500);
    // A descriptor that cannot read: EBADF on every read.
    let write_only = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let error = match read_all(&write_only, 548, &mut Vec::new()) {
        Err(e) => e,
        Ok(_) => panic!("read through a write-only descriptor"),
    };
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    let mem = guest_ram();
    let dest = mem.get_slice(GuestAddress(0), 4096).unwrap();
    let error = pread_volatile(&write_only, &dest, 549).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
}

#[test]
fn a_file_at_the_size_limit_is_read_whatever_stat_said_and_one_byte_more_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let limit = crate::table::MAX_TABLE_SIZE;
    let mut buffer = Vec::new();
    // The file grew after `stat` (a writer that ignores the lock): read
    // to its end, up to the limit.
    let at_limit = dir.path().join("at-limit");
    fs::write(&at_limit, vec![1u8; limit]).unwrap();
    let read = read_all(&File::open(&at_limit).unwrap(), 100, &mut buffer).unwrap();
    assert!(matches!(read, ReadAll::Read(n) if n == limit));
    let over = dir.path().join("over");
    fs::write(&over, vec![1u8; limit + 1]).unwrap();
    let read = read_all(&File::open(&over).unwrap(), 100, &mut buffer).unwrap();
    assert!(matches!(read, ReadAll::TooLarge));
}
