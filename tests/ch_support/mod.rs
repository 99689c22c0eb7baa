//! Helpers of the Cloud Hypervisor end-to-end tests (`tests/ch_plugin.rs`):
//! the patched `cloud-hypervisor` with its API socket and event monitor,
//! the patched `ch-remote`, a minimal SEV-SNP IGVM file and what the host's
//! KVM can create.
//!
//! The binaries are the ones `integrations/cloud-hypervisor/build-and-test.sh`
//! builds; it names their directory in `SNP_CH_BIN_DIR`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::api::{DEADLINE_SECS, Run};
use crate::support::{ChildGuard, poll};

/// Why the tests are ignored by default, as the test runner shows it.
pub const NEEDS_PATCHED_CH: &str = "needs the patched Cloud Hypervisor binaries: run integrations/cloud-hypervisor/build-and-test.sh (it sets SNP_CH_BIN_DIR)";

/// A binary of the patched Cloud Hypervisor (`cloud-hypervisor`, `ch-remote`).
pub fn ch_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SNP_CH_BIN_DIR").unwrap_or_else(|| {
        panic!(
            "SNP_CH_BIN_DIR is not set: these tests {NEEDS_PATCHED_CH}, which builds the binaries and runs them"
        )
    });
    let bin = Path::new(&dir).join(name);
    assert!(bin.is_file(), "{} does not exist", bin.display());
    bin
}

/// `BIN ARGS...`, run to completion.
pub fn run(bin: &Path, args: &[&str]) -> Run {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

/// A running patched `cloud-hypervisor --api-socket DIR/api.sock
/// --event-monitor path=DIR/events.json`, with Cloud Hypervisor's default
/// seccomp filters; its output in DIR. Killed when dropped.
pub struct ChVmm {
    /// The API socket.
    pub socket: PathBuf,
    dir: PathBuf,
    child: ChildGuard,
}

impl ChVmm {
    /// Starts it and waits until `ch-remote ping` answers.
    pub fn start(dir: &Path) -> ChVmm {
        let socket = dir.join("api.sock");
        let child = Command::new(ch_bin("cloud-hypervisor"))
            .arg("--api-socket")
            .arg(format!("path={}", socket.display()))
            .arg("--event-monitor")
            .arg(format!("path={}", dir.join("events.json").display()))
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("ch.stdout")).unwrap())
            .stderr(File::create(dir.join("ch.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut vmm = ChVmm {
            socket,
            dir: dir.to_owned(),
            child: ChildGuard(child),
        };
        poll(DEADLINE_SECS, "ch-remote ping to answer", || {
            vmm.assert_running();
            (vmm.remote(&["ping"]).code == 0).then_some(())
        });
        vmm
    }

    /// Panics with Cloud Hypervisor's log if it exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.0.try_wait().unwrap() {
            panic!("cloud-hypervisor exited with {status}:\n{}", self.log());
        }
    }

    /// What Cloud Hypervisor logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("ch.stderr")).unwrap_or_default()
    }

    /// `ch-remote --api-socket SOCKET ARGS...`.
    pub fn remote(&self, args: &[&str]) -> Run {
        let mut all = vec!["--api-socket", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&ch_bin("ch-remote"), &all)
    }

    /// `ch-remote ... ARGS`, which must succeed; its JSON answer.
    pub fn remote_json(&self, args: &[&str]) -> Value {
        let run = self.remote(args);
        assert_eq!(run.code, 0, "ch-remote {args:?}: {run:?}\n{}", self.log());
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
    }

    /// `ch-remote create` of `config`.
    pub fn create(&self, config: &Value) {
        let path = self.dir.join("vm.json");
        fs::write(&path, config.to_string()).unwrap();
        let run = self.remote(&["create", path.to_str().unwrap()]);
        assert_eq!(run.code, 0, "ch-remote create: {run:?}\n{}", self.log());
    }

    /// The events of the event monitor so far (Cloud Hypervisor writes
    /// one pretty-printed JSON object after the other).
    pub fn events(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("events.json")).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect()
    }

    /// The events of `source` named `event`.
    pub fn events_named(&self, source: &str, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["source"] == source && e["event"] == event)
            .collect()
    }
}

/// IEEE 802.3 CRC-32, as the IGVM format checksums its headers (the igvm
/// crate uses crc32fast); bitwise, for one 48-byte header.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Writes the smallest IGVM file Cloud Hypervisor accepts for an SEV-SNP
/// VM: the fixed header (IGVM_FIXED_HEADER, format 1), one
/// IGVM_VHT_SUPPORTED_PLATFORM header for SEV-SNP, and eight bytes of file
/// data. It loads nothing: it gets a VM as far as creating it.
pub fn snp_igvm(dir: &Path) -> PathBuf {
    const MAGIC: u32 = u32::from_le_bytes(*b"IGVM");
    const FIXED_HEADER_LEN: u32 = 24;
    let mut platform = Vec::new();
    platform.extend_from_slice(&1u32.to_le_bytes()); // IGVM_VHT_SUPPORTED_PLATFORM
    platform.extend_from_slice(&16u32.to_le_bytes()); // its length
    platform.extend_from_slice(&1u32.to_le_bytes()); // compatibility_mask
    platform.push(0); // highest_vtl
    platform.push(2); // platform_type: SEV_SNP
    platform.extend_from_slice(&1u16.to_le_bytes()); // platform_version
    platform.extend_from_slice(&0u64.to_le_bytes()); // shared_gpa_boundary
    let data = [0u8; 8];
    let total = FIXED_HEADER_LEN + platform.len() as u32 + data.len() as u32;
    let fixed = |checksum: u32| {
        [
            MAGIC,
            1,
            FIXED_HEADER_LEN,
            platform.len() as u32,
            total,
            checksum,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>()
    };
    let checksum = crc32(&[fixed(0), platform.clone()].concat());
    let path = dir.join("snp.igvm");
    fs::write(&path, [fixed(checksum), platform, data.to_vec()].concat()).unwrap();
    path
}

/// Whether the host's KVM can create SEV-SNP VMs (`KVM_X86_SNP_VM`, 4, in
/// the `KVM_CAP_VM_TYPES` mask).
pub fn host_creates_snp_vms() -> bool {
    const KVM_CHECK_EXTENSION: libc::c_ulong = 0xae03;
    const KVM_CAP_VM_TYPES: libc::c_ulong = 235;
    const KVM_X86_SNP_VM: u32 = 4;
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("/dev/kvm: Cloud Hypervisor needs it");
    // SAFETY: KVM_CHECK_EXTENSION takes an integer argument and touches no
    // memory of ours; the descriptor is open for the duration of the call.
    let types = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES) };
    types > 0 && (types as u32) & (1 << KVM_X86_SNP_VM) != 0
}
