//! Who holds a lock on a file right now, for messages such as "waiting for
//! pid 4242 (snp-certs) to release the exclusive lock".
//!
//! `/proc/locks` lists every lock with the file's device and inode, but
//! shows `-1` as the owner of OFD locks, which belong to an open file
//! description rather than to a process. Each process's
//! `/proc/PID/fdinfo/FD` lists the locks held through that descriptor, so
//! the holders are found by looking through those. Processes whose
//! `/proc` entries cannot be read (other users') are skipped; the answer
//! is a best effort for humans, never a basis for a decision.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A process holding a lock on a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), if readable.
    pub command: String,
    /// Whether it holds the lock exclusively (a write lock).
    pub exclusive: bool,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if !self.command.is_empty() {
            write!(f, " ({})", self.command)?;
        }
        Ok(())
    }
}

/// The `MAJ:MIN:INODE` key `/proc` uses for a file: device numbers in two
/// hex digits, the inode in decimal.
fn proc_key(path: &Path) -> io::Result<String> {
    Ok(key_of(&fs::metadata(path)?))
}

/// [`proc_key`] of a file's metadata.
fn key_of(meta: &fs::Metadata) -> String {
    device_key(meta.dev(), meta.ino())
}

/// [`proc_key`] of the file `ino` on device `dev`.
fn device_key(dev: u64, ino: u64) -> String {
    // glibc's major()/minor() encoding of dev_t.
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    format!("{major:02x}:{minor:02x}:{ino}")
}

/// The lock requests `/proc/locks` shows blocked (`->`) on the file
/// `meta` describes, this device and inode and no other, as the offsets
/// of their first and last bytes (`EOF`: to the end of any file): for
/// tests that wait until a request sleeps in `F_OFD_SETLKW`.
#[cfg(test)]
pub(crate) fn blocked_ranges(meta: &fs::Metadata) -> Vec<(String, String)> {
    let key = key_of(meta);
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "->", _, _, _, _, k, start, end] if *k == key => {
                    Some(((*start).to_owned(), (*end).to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}

/// How many lock requests [`blocked_ranges`] sees.
#[cfg(test)]
pub(crate) fn blocked_on(meta: &fs::Metadata) -> usize {
    blocked_ranges(meta).len()
}

/// Polls, with a 20 s deadline, until [`blocked_on`] sees at least
/// `waiters` requests blocked on the file `meta` describes.
#[cfg(test)]
pub(crate) fn wait_for_blocked(meta: &fs::Metadata, waiters: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while blocked_on(meta) < waiters {
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {waiters} lock request(s) blocked on inode {}",
            meta.ino()
        );
        std::thread::yield_now();
    }
}

/// The locks on `key` in one `fdinfo` text: whether any is exclusive.
fn lock_in(fdinfo: &str, key: &str) -> Option<bool> {
    let mut found = None;
    for line in fdinfo.lines().filter(|l| l.starts_with("lock:")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.contains(&key) {
            let exclusive = fields.contains(&"WRITE");
            found = Some(found.unwrap_or(false) || exclusive);
        }
    }
    found
}

/// The processes holding a lock on `path` (see the module docs).
pub fn holders(path: &Path) -> io::Result<Vec<Holder>> {
    let key = proc_key(path)?;
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        let mut exclusive = None;
        for fd in fds.flatten() {
            if let Ok(text) = fs::read_to_string(fd.path()) {
                if let Some(e) = lock_in(&text, &key) {
                    exclusive = Some(exclusive.unwrap_or(false) || e);
                }
            }
        }
        if let Some(exclusive) = exclusive {
            let command = fs::read_to_string(entry.path().join("comm"))
                .map(|c| c.trim_end().to_owned())
                .unwrap_or_default();
            found.push(Holder {
                pid,
                command,
                exclusive,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::time::Duration;

    use super::*;
    use crate::lock::{self, LockKind};

    #[test]
    fn finds_this_process_holding_an_exclusive_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs");
        fs::write(&path, b"x").unwrap();
        assert!(holders(&path).unwrap().is_empty());
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        lock::lock(&file, LockKind::Exclusive, Duration::ZERO).unwrap();
        let found = holders(&path).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, std::process::id());
        assert!(found[0].exclusive);
        assert!(
            found[0]
                .to_string()
                .starts_with(&format!("pid {}", std::process::id()))
        );
        lock::unlock(&file).unwrap();
        assert!(holders(&path).unwrap().is_empty());
    }

    #[test]
    fn parses_fdinfo_lock_lines() {
        let text = "pos:\t0\nflags:\t02\nlock:\t1: OFDLCK ADVISORY  READ -1 fe:00:42 0 EOF\n";
        assert_eq!(lock_in(text, "fe:00:42"), Some(false));
        assert_eq!(lock_in(text, "fe:00:4"), None);
        let text = "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:42 0 EOF\n";
        assert_eq!(lock_in(text, "fe:00:42"), Some(true));
    }

    #[test]
    fn device_keys_split_dev_t_as_the_c_library_does() {
        for (major, minor) in [(254, 0), (8, 300), (0x1234, 0x5_6789), (0xfff, 0xff)] {
            let dev = libc::makedev(major, minor);
            assert_eq!(libc::major(dev), major);
            assert_eq!(
                device_key(dev, 42),
                format!("{major:02x}:{minor:02x}:42"),
                "{major}:{minor}"
            );
        }
    }

    #[test]
    fn a_holder_is_named_by_pid_and_command_if_known() {
        let named = Holder {
            pid: 42,
            command: "snp-certs".into(),
            exclusive: true,
        };
        assert_eq!(named.to_string(), "pid 42 (snp-certs)");
        let unnamed = Holder {
            command: String::new(),
            ..named
        };
        assert_eq!(unnamed.to_string(), "pid 42");
    }
}
