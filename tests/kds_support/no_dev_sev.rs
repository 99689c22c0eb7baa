//! Running `snp-certs` where `/dev/sev` does not exist, on any host.
//!
//! What `--from-host` and `vcek-url` do without the SEV firmware device is
//! tested on every host: on one that has `/dev/sev` (an SNP host, a nested
//! SNP CI runner) the command runs in a mount namespace of its own
//! (`unshare(1)`; as root, or as root of a new user namespace) whose `/dev`
//! is an empty tmpfs. The namespace is used wherever it can be made, so it
//! is exercised on every such host; where it cannot be made and the host
//! has no `/dev/sev`, the command runs as it is; where it cannot be made
//! and the host has `/dev/sev`, the test fails saying why, never passing
//! without having run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The shell step inside the namespace: an empty `/dev`, then the command.
const HIDE_DEV: &str = "mount -t tmpfs snp-certs-test /dev && exec \"$0\" \"$@\"";

/// `unshare` making a private mount namespace (and a user namespace unless
/// this is root).
fn unshare() -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private"]);
    // SAFETY: geteuid() has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        c.arg("--map-root-user");
    }
    c
}

/// Whether a namespace without `/dev/sev` can be made here; why not if not.
fn namespace_works() -> &'static Result<(), String> {
    static WORKS: OnceLock<Result<(), String>> = OnceLock::new();
    WORKS.get_or_init(|| {
        let out = unshare()
            .args(["--", "sh", "-c", HIDE_DEV, "test", "!", "-e", "/dev/sev"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "unshare exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
}

/// `cmd` as it runs where `/dev/sev` does not exist; see the module docs.
pub fn without_dev_sev(cmd: &Command) -> Command {
    match namespace_works() {
        Ok(()) => {
            let mut hide = unshare();
            hide.args(["--", "sh", "-c", HIDE_DEV]);
            super::through(Some(hide), cmd)
        }
        Err(why) => {
            assert!(
                !Path::new("/dev/sev").exists(),
                "this host has /dev/sev and the test cannot hide it ({why}): \
                 it tests what snp-certs does without the SEV firmware device"
            );
            super::through(None, cmd)
        }
    }
}
