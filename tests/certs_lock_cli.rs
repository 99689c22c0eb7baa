//! `snp-certs lock FILE -- COMMAND`: readers are held off for exactly the
//! command's lifetime, the exit status passes through, and the lock goes
//! away when the command or the tool itself is killed.
//!
//! The commands are small shell scripts that print a line once they run
//! (under the lock) and then wait for a line on stdin or for a signal, so
//! the test decides when they end; nothing sleeps for synchronisation.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "certs_support/mod.rs"]
mod common;

use std::fs;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};

use common::*;

fn certs(dir: &Path) -> PathBuf {
    let path = dir.join("certs.bin");
    fs::write(&path, chain_table("milan")).unwrap();
    path
}

/// `probe --timeout 0`: exit code 0 (delivered) or 4 (busy).
fn probe(path: &Path) -> i32 {
    let out = snp_certs()
        .args(["probe", "--timeout", "0"])
        .arg(path)
        .output()
        .unwrap();
    out.status.code().unwrap()
}

/// Starts `snp-certs lock FILE -- sh -c SCRIPT` and waits for the script's
/// first line (the script prints `running` first, under the lock).
fn start_lock(
    path: &Path,
    script: &str,
    extra: &[&str],
) -> (Child, BufReader<ChildStdout>, String) {
    let mut child = snp_certs()
        .arg("lock")
        .arg(path)
        .args(extra)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let line = wait_for_line(&mut out, "running");
    (child, out, line)
}

/// The pid the script printed as `running PID`.
fn pid_of(line: &str) -> u32 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn readers_are_held_off_for_exactly_the_commands_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    assert_eq!(probe(&path), 0);
    let (mut child, _out, _) = start_lock(&path, "echo running; read line; exit 3", &[]);
    // The command is running: readers are busy, every time.
    wait_for_lock_state(&path, Some("WRITE"));
    for _ in 0..3 {
        assert_eq!(probe(&path), 4);
    }
    // End the command: its status passes through and the lock is gone.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert_eq!(probe(&path), 0);
}

#[test]
fn a_killed_command_releases_the_lock_and_gives_128_plus_signal() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let (mut child, _out, line) = start_lock(&path, "echo running $$; exec sleep 120", &[]);
    assert_eq!(probe(&path), 4);
    kill(pid_of(&line), libc::SIGKILL);
    assert_eq!(child.wait().unwrap().code(), Some(128 + 9));
    assert_eq!(probe(&path), 0);
}

#[test]
fn sigterm_to_the_tool_is_forwarded_to_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let (mut child, _out, line) = start_lock(&path, "echo running $$; exec sleep 120", &[]);
    let command = pid_of(&line);
    kill(child.id(), libc::SIGTERM);
    // The tool outlives the signal, forwards it, and reports the
    // command's death by SIGTERM.
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    assert!(!alive(command));
    assert_eq!(probe(&path), 0);
}

#[test]
fn sigkill_of_the_tool_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let (mut child, _out, line) = start_lock(&path, "echo running $$; exec sleep 120", &[]);
    let command = pid_of(&line);
    assert_eq!(probe(&path), 4);
    child.kill().unwrap();
    child.wait().unwrap();
    // The kernel closed the tool's descriptor: the lock is gone although
    // the command (which never had the descriptor) still runs.
    assert!(alive(command));
    assert_eq!(probe(&path), 0);
    kill(command, libc::SIGKILL);
}

#[test]
fn a_background_grandchild_does_not_keep_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let mut child = snp_certs()
        .arg("lock")
        .arg(&path)
        .args(["--", "sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(alive(grandchild));
    assert_eq!(probe(&path), 0);
    kill(grandchild, libc::SIGKILL);
}

#[test]
fn exit_codes_for_timeouts_and_missing_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let out = snp_certs()
        .arg("lock")
        .arg(&path)
        .args(["--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let out = snp_certs()
        .arg("lock")
        .arg(&path)
        .args(["--", "/nonexistent/command"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));

    // Another `lock` holds the file: this one times out without running
    // its command.
    let (mut holder, _out, _) = start_lock(&path, "echo running; read line; exit 0", &[]);
    let marker = dir.path().join("ran");
    let out = snp_certs()
        .arg("lock")
        .arg(&path)
        .args(["--timeout", "100", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the command was not run"),
        "{}",
        stderr(&out)
    );
    assert!(!marker.exists());
    drop(holder.stdin.take());
    assert_eq!(holder.wait().unwrap().code(), Some(0));
}

#[test]
fn update_from_replaces_the_file_under_the_same_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let new = dir.path().join("new.bin");
    // The command writes the new table while the lock is held (as a
    // `snphost fetch` + `snp-certs build` would), and a reader started
    // during the command waits until the file is replaced.
    let turin = chain_table("turin");
    fs::write(dir.path().join("turin.bin"), &turin).unwrap();
    let script = format!(
        "echo running; read line; cp '{}' '{}'",
        dir.path().join("turin.bin").display(),
        new.display()
    );
    let (mut child, _out, _) = start_lock(
        &path,
        &script,
        &["--update-from", new.to_str().unwrap(), "--at", AT],
    );
    let reader = snp_certs()
        .args(["probe", "--timeout", "20000", "--json"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock_state(&path, Some("WRITE"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(fs::read(&path).unwrap(), turin);
    let out = reader.wait_with_output().unwrap();
    let v = json(&out);
    assert_eq!(v["outcome"], "delivered");
    assert_eq!(v["bytes"], turin.len());

    // A failing command leaves the file alone.
    fs::write(&new, chain_table("milan")).unwrap();
    let out = snp_certs()
        .arg("lock")
        .arg(&path)
        .args(["--update-from"])
        .arg(&new)
        .args(["--", "false"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("was not updated"), "{}", stderr(&out));
    assert_eq!(fs::read(&path).unwrap(), turin);
}

#[test]
fn sigint_and_sighup_to_the_tool_are_forwarded_to_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    for signal in [libc::SIGINT, libc::SIGHUP] {
        let (mut child, _out, line) = start_lock(&path, "echo running $$; exec sleep 120", &[]);
        let command = pid_of(&line);
        kill(child.id(), signal);
        // The tool survives the signal, passes it on, and reports the
        // command's death by that very signal.
        assert_eq!(child.wait().unwrap().code(), Some(128 + signal), "{signal}");
        assert!(!alive(command), "{signal}");
        assert_eq!(probe(&path), 0);
    }
}

#[test]
fn a_command_that_cannot_be_executed_gives_126_and_a_missing_one_127() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = certs(dir.path());
    let script = dir.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    for (command, code) in [
        (script.clone(), 126),
        (dir.path().to_owned(), 126),
        (dir.path().join("no-such-command"), 127),
        (PathBuf::from("no-such-command-on-the-path"), 127),
    ] {
        let out = snp_certs()
            .arg("lock")
            .arg(&path)
            .arg("--")
            .arg(&command)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {}",
            command.display(),
            stderr(&out)
        );
        assert!(
            !stderr(&out).is_empty(),
            "{}: no message",
            command.display()
        );
        // The lock went with the failed start.
        assert_eq!(probe(&path), 0);
    }
}
