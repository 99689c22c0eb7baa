//! Human-readable output of `snp-remote`.

use std::fmt::Write;
use std::path::Path;

use vmm_api::{CounterMap, PingResponse, SnpCertsInfo, TestGuestConfig, VmInfo, Warnings};

/// `ping`.
pub fn ping(p: &PingResponse) -> String {
    let snp = if p.snp_req_certs_supported {
        "supported"
    } else {
        "not supported"
    };
    format!(
        "snp-vmm {} (build {}), pid {}\nhypervisor: {}\nfeatures: {}\nSNP certificate exits: {snp}\n",
        p.version,
        p.build_version,
        p.pid,
        p.hypervisor,
        p.features.join(", ")
    )
}

fn certs_file(file: Option<&Path>) -> String {
    match file {
        Some(path) => path.display().to_string(),
        None => "none (guests get an empty table)".to_owned(),
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// `info`.
pub fn info(i: &VmInfo) -> String {
    let mut s = String::new();
    let c = &i.config;
    let _ = writeln!(s, "state: {:?}", i.state);
    let vcpus: Vec<String> = i
        .vcpus
        .iter()
        .map(|v| format!("{}: {}", v.id, v.state))
        .collect();
    let _ = writeln!(s, "vcpus: {} ({})", c.cpus.boot_vcpus, vcpus.join(", "));
    let _ = writeln!(s, "memory: {}", size(c.memory.size));
    let platform = if c.platform.sev_snp {
        "sev-snp"
    } else {
        "default"
    };
    let _ = writeln!(s, "platform: {platform}");
    match c.test_guest() {
        Some(
            guest @ (TestGuestConfig::Attest {
                requests,
                interval_ms,
                ..
            }
            | TestGuestConfig::SnpAttest {
                requests,
                interval_ms,
                ..
            }),
        ) => {
            let _ = writeln!(
                s,
                "payload: {}, {requests} requests, {interval_ms} ms apart",
                guest.name()
            );
        }
        None => {
            let _ = writeln!(s, "payload: none (idle vCPUs)");
        }
    }
    let doorbell = if c.snp.doorbell { "on" } else { "off" };
    let _ = writeln!(s, "doorbell: {doorbell}");
    s.push_str(&certs(&i.certs));
    s
}

/// `certs`, `set-certs` and `clear-certs`.
pub fn certs(c: &SnpCertsInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "certs-file: {}", certs_file(c.certs_file.as_deref()));
    let _ = writeln!(s, "certs-timeout: {} ms", c.certs_timeout);
    let _ = writeln!(s, "busy-budget: {} ms", c.busy_budget);
    let _ = writeln!(s, "on-error: {}", c.on_error.as_str());
    let _ = writeln!(
        s,
        "allow-large: {}",
        if c.allow_large { "on" } else { "off" }
    );
    let _ = writeln!(s, "generation: {}", c.generation);
    for w in &c.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    let r = &c.stats.requests;
    let _ = writeln!(
        s,
        "requests: {} (delivered {}, need-pages {}, busy {}, failed {})",
        r.total(),
        r.delivered,
        r.need_pages,
        r.busy,
        r.failed
    );
    let _ = writeln!(s, "bytes delivered: {}", c.stats.bytes_delivered);
    s
}

/// `create`: the settings the VMM ignores, one line each.
pub fn warnings(w: &Warnings) -> String {
    w.warnings
        .iter()
        .map(|w| format!("warning: {w}\n"))
        .collect()
}

/// `counters`: Cloud Hypervisor's map, one block per device.
pub fn counters(map: &CounterMap) -> String {
    let mut s = String::new();
    for (device, counters) in map {
        let _ = writeln!(s, "{device}:");
        for (name, n) in counters {
            let _ = writeln!(s, "  {:<28} {n}", format!("{name}:"));
        }
    }
    s
}
