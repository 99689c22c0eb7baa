//! The words match the code: every option key, value and range that
//! `snp-vmm --help`, `snp-remote --help`, `docs/cli.md`, `docs/api.md` and
//! `api-server/openapi.yaml` document is one the parsers accept (and the
//! value just past a documented range one they refuse), and every key the
//! parsers accept is documented. `docs_commands.rs` checks the other way
//! round for whole command lines in the docs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use snp_certs::config::{CertsConfig, MAX_BUSY_BUDGET_MS, MAX_CERTS_TIMEOUT_MS};
use vmm::backend::BackendChoice;
use vmm_api::config::{CpusConfig, MemoryConfig, PlatformConfig, SnpConfig};
use vmm_api::payload::PayloadConfig;
use vmm_api::{SnpCertsUpdate, VmConfig, VmOptions};

use support::help::{help, subcommands};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

fn vmm_help() -> String {
    help(env!("CARGO_BIN_EXE_snp-vmm"), &[])
}

/// The help text of one option: from its line to the next option's.
fn help_of(help: &str, flag: &str) -> String {
    let mut lines = help.lines().skip_while(|l| {
        let l = l.trim_start();
        !(l.starts_with(&format!("{flag} ")) || l.starts_with(&format!("{flag}\t")))
    });
    let mut text = lines
        .next()
        .unwrap_or_else(|| panic!("no {flag}"))
        .to_owned();
    for line in lines.take_while(|l| !l.trim_start().starts_with('-')) {
        text.push(' ');
        text.push_str(line.trim());
    }
    text
}

/// The row of the `docs/cli.md` option table for `flag`.
fn docs_row(flag: &str) -> String {
    let prefix = format!("| `{flag}` |");
    read("docs/cli.md")
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("docs/cli.md has no row for {flag}"))
        .to_owned()
}

/// The keys `key=` named in a help text (those of another option, as in
/// "with --platform sev_snp=on", aside).
fn help_keys(text: &str) -> BTreeSet<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !words[i - 1].starts_with("--"))
        .flat_map(|(_, w)| w.split(|c: char| !(c.is_ascii_alphanumeric() || "_-=".contains(c))))
        .filter_map(|w| w.split_once('='))
        .map(|(k, _)| k.trim_start_matches('-').to_owned())
        .filter(|k| !k.is_empty() && !k.chars().next().unwrap().is_ascii_uppercase())
        .collect()
}

/// The keys named in a docs row: each code span `key=…` (spans that are
/// other options, `--x …`, aside).
fn docs_keys(row: &str) -> BTreeSet<String> {
    row.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| !span.starts_with("--"))
        .filter_map(|span| span.split_once('=').map(|(k, _)| k.to_owned()))
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// Parses and validates a VM configuration from one option.
fn vm_options(flag: &str, value: &str) -> Result<VmConfig, String> {
    vm_options_with(&[(flag, value)])
}

/// Parses and validates a VM configuration from several options.
fn vm_options_with(options: &[(&str, &str)]) -> Result<VmConfig, String> {
    let mut o = VmOptions::default();
    for &(flag, value) in options {
        match flag {
            "--cpus" => o.cpus = Some(value),
            "--memory" => o.memory = Some(value),
            "--platform" => o.platform = Some(value),
            "--snp" => o.snp = Some(value),
            "--payload" => o.payload = Some(value),
            _ => panic!("{flag}"),
        }
    }
    let config = VmConfig::from_options(&o).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    })?;
    Ok(config)
}

/// A value each key accepts, for trying keys one at a time.
fn sample(key: &str) -> &'static str {
    match key {
        "boot" | "max" | "requests" => "1",
        "size" => "64M",
        "sev_snp" | "allow_large" | "doorbell" => "off",
        "certs_file" => "/var/lib/snp/certs.bin",
        "on_error" => "empty",
        "certs_timeout" | "busy_budget" | "startup_wait" | "interval_ms" | "retry_ms"
        | "max_busy_retries" => "0",
        "c_bit" => "51",
        "host_data" => "0000000000000000000000000000000000000000000000000000000000000000",
        _ => panic!("no sample value for {key}"),
    }
}

/// `key=value` as the option `flag` takes it (a payload names its guest
/// first).
fn option(flag: &str, key: &str, value: &str) -> String {
    match (flag, key) {
        ("--payload", "c_bit" | "host_data") => format!("snp-attest,{key}={value}"),
        ("--payload", _) => format!("attest,{key}={value}"),
        _ => format!("{key}={value}"),
    }
}

#[test]
fn vm_option_keys_in_help_and_docs_are_the_parsers() {
    let help = vmm_help();
    let payload_keys: Vec<&str> = PayloadConfig::ATTEST_KEYS
        .iter()
        .chain(PayloadConfig::CH_KEYS)
        .copied()
        .collect();
    // The help names the keys that do something here; Cloud Hypervisor's
    // payload keys other than host_data are parsed, then refused.
    let mut help_payload: Vec<&str> = PayloadConfig::ATTEST_KEYS.to_vec();
    help_payload.push("host_data");
    for (flag, parser, in_help) in [
        ("--cpus", CpusConfig::KEYS, CpusConfig::KEYS.to_vec()),
        ("--memory", MemoryConfig::KEYS, MemoryConfig::KEYS.to_vec()),
        (
            "--platform",
            PlatformConfig::KEYS,
            PlatformConfig::KEYS.to_vec(),
        ),
        ("--snp", SnpConfig::KEYS, SnpConfig::KEYS.to_vec()),
        ("--payload", payload_keys.as_slice(), help_payload),
    ] {
        let text = help_of(&help, flag);
        assert_eq!(
            help_keys(&text),
            set(&in_help),
            "snp-vmm --help {flag}: {text}"
        );
        let row = docs_row(flag);
        assert_eq!(docs_keys(&row), set(parser), "docs/cli.md {flag}: {row}");
        // Each key, alone, with a value it takes: accepted.
        for key in parser {
            if ["firmware", "kernel", "cmdline", "initramfs", "igvm"].contains(key) {
                // Parsed, then refused by name: said so in the docs.
                let e = vm_options(flag, &option(flag, key, "/x")).unwrap_err();
                assert!(e.contains(key), "{key}: {e}");
                assert!(row.contains("refused"), "{row}");
                continue;
            }
            let given = option(flag, key, sample(key));
            let ok = if given.starts_with("snp-attest") {
                vm_options_with(&[("--platform", "sev_snp=on"), (flag, &given)])
            } else {
                vm_options(flag, &given)
            };
            assert!(ok.is_ok(), "{flag} {given}: {ok:?}");
        }
        // A key nobody documents: refused.
        assert!(vm_options(flag, &option(flag, "surprise", "1")).is_err());
    }
}

/// The alternatives `key=a|b` a text offers for `key`.
fn alternatives(text: &str, key: &str) -> Vec<String> {
    let marker = format!("{key}=");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{key} not in {text}"));
    text[at + marker.len()..]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '|' || c == '\\' || c == '-'))
        .next()
        .unwrap()
        .replace('\\', "")
        .split('|')
        .map(str::to_owned)
        .collect()
}

#[test]
fn documented_values_are_accepted_and_others_refused() {
    let help = vmm_help();
    for (flag, key, values) in [
        ("--snp", "on_error", vec!["empty", "busy"]),
        ("--platform", "sev_snp", vec!["on", "off"]),
    ] {
        let from_help = alternatives(&help_of(&help, flag), key);
        let from_docs = alternatives(&docs_row(flag), key);
        assert_eq!(from_help, values, "--help {flag} {key}");
        assert_eq!(from_docs, values, "docs/cli.md {flag} {key}");
        for value in &values {
            vm_options(flag, &format!("{key}={value}")).unwrap();
        }
        assert!(vm_options(flag, &format!("{key}=maybe")).is_err());
    }
    // The test guests the help and the docs name, and only those.
    let guests = ["attest", "snp-attest"];
    let payload_help = help_of(&help, "--payload");
    let payload_row = docs_row("--payload");
    for guest in guests {
        assert!(payload_help.contains(guest), "{payload_help}");
        assert!(payload_row.contains(&format!("`{guest}`")), "{payload_row}");
        vm_options("--payload", guest).unwrap();
    }
    let e = vm_options("--payload", "linux").unwrap_err();
    assert!(e.ends_with("known test guests: attest, snp-attest"), "{e}");
    // The backends.
    let backends = ["kvm", "mock", "mock-snp", "auto"];
    let hypervisor_help = help_of(&help, "--hypervisor");
    for name in backends {
        assert!(hypervisor_help.contains(name), "{hypervisor_help}");
        name.parse::<BackendChoice>().unwrap();
    }
    let e = "xen".parse::<BackendChoice>().unwrap_err();
    assert!(e.ends_with("use kvm, mock, mock-snp or auto"), "{e}");
}

/// `(low, high)` of the range `(A–B` the docs row gives after `key=…`.
fn docs_range(row: &str, key: &str) -> (u64, u64) {
    let at = row.find(&format!("`{key}=")).unwrap();
    let rest = &row[at..];
    let open = rest.find('(').unwrap();
    let range: String = rest[open + 1..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '–')
        .collect();
    let (low, high) = range
        .split_once('–')
        .unwrap_or_else(|| panic!("no range for {key}: {rest}"));
    (low.parse().unwrap(), high.parse().unwrap())
}

#[test]
fn documented_ranges_are_the_parsers() {
    for (flag, key) in [
        ("--snp", "certs_timeout"),
        ("--snp", "busy_budget"),
        ("--snp", "startup_wait"),
        ("--cpus", "boot"),
    ] {
        let (low, high) = docs_range(&docs_row(flag), key);
        for ok in [low, high] {
            let value = format!("{key}={ok}");
            assert!(vm_options(flag, &value).is_ok(), "{flag} {value}");
        }
        let value = format!("{key}={}", high + 1);
        assert!(vm_options(flag, &value).is_err(), "{flag} {value}");
        if low > 0 {
            let value = format!("{key}={}", low - 1);
            assert!(vm_options(flag, &value).is_err(), "{flag} {value}");
        }
    }
    // docs/api.md says the same maximum as the code.
    let api = read("docs/api.md");
    let row = api
        .lines()
        .find(|l| l.starts_with("| `snp.certs_timeout`"))
        .unwrap();
    assert!(
        row.contains(&format!("at most {MAX_CERTS_TIMEOUT_MS};")),
        "{row}"
    );
    let put = api
        .lines()
        .find(|l| l.starts_with("| `\"certs_timeout\": ms`"))
        .unwrap();
    assert!(
        put.contains(&format!("0 to {MAX_CERTS_TIMEOUT_MS}")),
        "{put}"
    );
}

/// The C-bit position mock-snp's host reports (CPUID 0x8000001F), as on
/// Milan and Genoa.
const MOCK_SNP_C_BIT: i64 = 51;

/// Runs `snp-vmm --hypervisor mock-snp` with an SNP guest of C-bit `c_bit`
/// making one request: whether the VM ran. A refusal must say why: outside
/// the guest's range, or not the host's position.
fn snp_guest_runs_with_c_bit(c_bit: u64) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_snp-vmm"))
        .args([
            "--hypervisor",
            "mock-snp",
            "--json",
            "--platform",
            "sev_snp=on",
        ])
        .arg("--payload")
        .arg(format!("snp-attest,requests=1,c_bit={c_bit}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ran = out.status.success()
        && serde_json::from_str::<Value>(text.trim()).is_ok_and(|v| v["reports"] == 1);
    let said = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let refused = said.contains("outside 32..=51") || said.contains("is not this host's C-bit");
    assert!(ran != refused, "c-bit {c_bit}: {text} {:?}", out.status);
    ran
}

/// A VM configuration with `value` at `section.field`, through the JSON
/// parser and the validation every API call runs.
fn json_accepted(section: &str, field: &str, value: &Value) -> bool {
    let mut body = json!({"platform": {"sev_snp": false}});
    if section == "payload" {
        let mut guest = json!({"kind": "attest"});
        if field == "kind" {
            guest["kind"] = value.clone();
        } else {
            guest[field] = value.clone();
        }
        body["payload"] = json!({ "test_guest": guest });
    } else if section == "cpus" {
        // max_vcpus must equal boot_vcpus: both get the value.
        body[section] = json!({ "boot_vcpus": value, "max_vcpus": value });
    } else {
        body[section] = json!({ field: value });
    }
    serde_json::from_value::<VmConfig>(body).is_ok_and(|c| c.validate().is_ok())
}

#[test]
fn openapi_enums_and_ranges_are_the_parsers() {
    let doc: Value = serde_yaml::from_str(&read("api-server/openapi.yaml")).unwrap();
    let schemas = &doc["components"]["schemas"];
    let mut checked = 0;
    for (schema, section) in [
        ("CpusConfig", "cpus"),
        ("MemoryConfig", "memory"),
        ("PlatformConfig", "platform"),
        ("SnpConfig", "snp"),
        ("AttestPayload", "payload"),
        ("SnpAttestPayload", "payload"),
    ] {
        for (field, property) in schemas[schema]["properties"].as_object().unwrap() {
            if let Some(values) = property["enum"].as_array() {
                for value in values {
                    let ok = if schema == "SnpAttestPayload" {
                        value == "snp-attest"
                            && serde_json::from_value::<vmm_api::payload::TestGuestConfig>(
                                json!({ "kind": value }),
                            )
                            .is_ok()
                    } else {
                        json_accepted(section, field, value)
                    };
                    assert!(ok, "{schema}.{field} = {value}");
                    checked += 1;
                }
                assert!(!json_accepted(section, field, &json!("surprise")));
            }
            for (bound, step) in [("maximum", 1i64), ("minimum", -1)] {
                let Some(limit) = property[bound].as_i64() else {
                    continue;
                };
                if field == "c_bit" {
                    // Checked where it is, when the SNP guest is loaded:
                    // the guest takes the documented range, and a host has
                    // exactly one position (mock-snp's is 51).
                    assert_eq!(
                        snp_guest_runs_with_c_bit(limit as u64),
                        limit == MOCK_SNP_C_BIT,
                        "c_bit {limit}"
                    );
                    assert!(!snp_guest_runs_with_c_bit((limit + step) as u64));
                    checked += 1;
                    continue;
                }
                if schema == "SnpAttestPayload" {
                    continue;
                }
                assert!(
                    json_accepted(section, field, &json!(limit)),
                    "{schema}.{field} = {limit}"
                );
                let past = limit + step;
                if past >= 0 {
                    assert!(
                        !json_accepted(section, field, &json!(past)),
                        "{schema}.{field} = {past} (past the {bound})"
                    );
                }
                checked += 1;
            }
        }
    }
    // PUT vm.snp-certs: the same bounds as the certs rules.
    let update = &schemas["SnpCertsUpdate"]["properties"];
    assert_eq!(update["certs_timeout"]["maximum"], MAX_CERTS_TIMEOUT_MS);
    assert_eq!(update["busy_budget"]["maximum"], MAX_BUSY_BUDGET_MS);
    for (field, max) in [
        ("certs_timeout", MAX_CERTS_TIMEOUT_MS),
        ("busy_budget", MAX_BUSY_BUDGET_MS),
    ] {
        for (value, ok) in [(max, true), (max + 1, false)] {
            let parsed: SnpCertsUpdate = serde_json::from_value(json!({ field: value })).unwrap();
            let config = CertsConfig {
                certs_timeout: parsed.certs_timeout.unwrap_or(0),
                busy_budget: parsed.busy_budget.unwrap_or(0),
                ..CertsConfig::default()
            };
            assert_eq!(config.check().is_ok(), ok, "{field} = {value}");
        }
    }
    for value in update["on_error"]["enum"].as_array().unwrap() {
        serde_json::from_value::<SnpCertsUpdate>(json!({ "on_error": value })).unwrap();
    }
    // Every test guest the parser knows is in the discriminator.
    let mapping = schemas["TestGuest"]["discriminator"]["mapping"]
        .as_object()
        .unwrap();
    let kinds: BTreeSet<&str> = mapping.keys().map(String::as_str).collect();
    assert_eq!(kinds, BTreeSet::from(["attest", "snp-attest"]));
    assert!(checked > 15, "only {checked} values checked");
    // The platform is described as what it does.
    let sev_snp = schemas["PlatformConfig"]["properties"]["sev_snp"]["description"]
        .as_str()
        .unwrap();
    assert!(
        !sev_snp.contains("Refused (400) by this build"),
        "{sev_snp}"
    );
}

#[test]
fn snp_remote_flags_and_values_are_documented_and_accepted() {
    let bin = env!("CARGO_BIN_EXE_snp-remote");
    let cli = read("docs/cli.md");
    let top = help(bin, &[]);
    let subcommands = subcommands(&top);
    assert!(subcommands.len() >= 10, "{subcommands:?}");
    for sub in &subcommands {
        assert!(cli.contains(&format!("`{sub}")), "docs/cli.md lacks {sub}");
        for line in help(bin, &[sub]).lines() {
            let Some(flag) = line
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(','))
            else {
                continue;
            };
            if ["--help", "--version"].contains(&flag) {
                continue;
            }
            assert!(cli.contains(flag), "docs/cli.md lacks {sub} {flag}");
        }
    }
    // The values docs/cli.md gives set-certs: accepted by its parser (the
    // call then fails only for want of a VMM); others refused.
    let row = cli.lines().find(|l| l.starts_with("| `set-certs")).unwrap();
    for (flag, values) in [
        ("--on-error", ["empty", "busy"]),
        ("--allow-large", ["on", "off"]),
    ] {
        let at = row.find(flag).unwrap();
        let offered: Vec<&str> = row[at + flag.len()..]
            .trim_start()
            .split(']')
            .next()
            .unwrap()
            .split("\\|")
            .collect();
        assert_eq!(offered, values, "{flag}: {row}");
        for value in values.iter().copied().chain(["maybe"]) {
            let out = Command::new(bin)
                .args([
                    "--api-socket",
                    "/nonexistent/api.sock",
                    "set-certs",
                    flag,
                    value,
                ])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let parsed = err.contains("Cannot connect to API socket");
            assert_eq!(parsed, value != "maybe", "{flag} {value}: {err}");
        }
    }
}
