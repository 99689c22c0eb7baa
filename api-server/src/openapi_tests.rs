//! Checks `openapi.yaml` against the route table and the Rust types.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::routes::{Method, ROUTES, Success};
use vmm_api::ch_fields::{ChFields, SECTIONS};
use vmm_api::{
    COUNTERS_DEVICE, ErrorBody, LockWaitSummary, OutcomeCounts, PayloadConfig, PingResponse,
    SnpCertsInfo, SnpCertsUpdate, TestGuestConfig, VcpuInfo, VmConfig, VmCounters, VmInfo, VmState,
    Warnings,
};

/// A configuration with every field set, Cloud Hypervisor's (at their
/// defaults) included, so that it serialises every key the schemas list.
fn full_config() -> VmConfig {
    let mut cloud_hypervisor = ChFields::default();
    for (section, fields) in SECTIONS {
        for field in *fields {
            let path = if section.is_empty() {
                field.name.to_owned()
            } else {
                format!("{section}.{}", field.name)
            };
            cloud_hypervisor.insert(path, serde_json::from_str(field.default).unwrap());
        }
    }
    VmConfig {
        payload: Some(PayloadConfig {
            test_guest: Some(TestGuestConfig::attest()),
            firmware: Some("/f".into()),
            kernel: Some("/k".into()),
            cmdline: Some("c".into()),
            initramfs: Some("/i".into()),
            igvm: Some("/g".into()),
            host_data: Some("00".repeat(32)),
        }),
        cloud_hypervisor,
        ..VmConfig::default()
    }
}

fn document() -> Value {
    let text = include_str!("../openapi.yaml");
    serde_yaml::from_str(text).expect("openapi.yaml parses")
}

fn method_name(method: Method) -> String {
    method.as_str().to_ascii_lowercase()
}

fn schema_ref(name: &str) -> Value {
    Value::String(format!("#/components/schemas/{name}"))
}

#[test]
fn is_openapi_3() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["servers"][0]["url"], "http://localhost/api/v1");
}

#[test]
fn paths_and_methods_equal_the_route_table() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (format!("/{}", r.endpoint), method_name(r.method)))
        .collect();
    assert_eq!(documented, routed);
}

#[test]
fn bodies_and_responses_match_the_route_table() {
    let doc = document();
    for route in ROUTES {
        let op = &doc["paths"][format!("/{}", route.endpoint)][method_name(route.method)];
        let what = format!("{} {}", route.method.as_str(), route.endpoint);
        let request = &op["requestBody"];
        match route.request {
            Some(schema) => {
                assert_eq!(request["required"], true, "{what}");
                assert_eq!(
                    request["content"]["application/json"]["schema"]["$ref"],
                    schema_ref(schema),
                    "{what}"
                );
                for status in ["400", "413"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{what} lacks {status}"
                    );
                }
            }
            None => assert!(request.is_null(), "{what} documents a body"),
        }
        let responses = op["responses"].as_object().unwrap();
        let successes: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
        match route.success {
            Success::Json(schema) => {
                assert_eq!(successes, ["200"], "{what}");
                assert_eq!(
                    responses["200"]["content"]["application/json"]["schema"]["$ref"],
                    schema_ref(schema),
                    "{what}"
                );
            }
            Success::NoContent => {
                assert_eq!(successes, ["204"], "{what}");
                assert!(responses["204"].get("content").is_none(), "{what}");
            }
            Success::NoContentOrJson(schema) => {
                assert_eq!(successes, ["200", "204"], "{what}");
                assert_eq!(
                    responses["200"]["content"]["application/json"]["schema"]["$ref"],
                    schema_ref(schema),
                    "{what}"
                );
                assert!(responses["204"].get("content").is_none(), "{what}");
            }
        }
        let errors: Vec<u16> = responses
            .keys()
            .filter(|s| !s.starts_with('2'))
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(errors, route.error_statuses(), "{what}: error statuses");
        assert_eq!(
            responses["405"]["$ref"], "#/components/responses/MethodNotAllowed",
            "{what}"
        );
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20);
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    // Discriminator mappings are references too.
    let mapping = &doc["components"]["schemas"]["TestGuest"]["discriminator"]["mapping"];
    for target in mapping.as_object().unwrap().values() {
        let pointer = target.as_str().unwrap().strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
    }
}

/// The documented properties of each object schema are exactly the keys
/// the Rust type serialises, and request schemas refuse extra fields.
#[test]
fn schemas_match_the_rust_types() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let full_update = SnpCertsUpdate {
        certs_file: Some(Some("/c".into())),
        certs_timeout: Some(1),
        busy_budget: Some(1),
        on_error: Some(snp_certs_types::OnError::Busy),
        allow_large: Some(true),
    };
    let info = VmInfo {
        config: VmConfig::default(),
        state: VmState::Running,
        vcpus: vec![VcpuInfo {
            id: 0,
            state: "running".into(),
        }],
        certs: SnpCertsInfo::default(),
    };
    let ping = PingResponse {
        build_version: "0".into(),
        version: "0".into(),
        pid: 1,
        features: vec!["kvm".into()],
        hypervisor: "kvm".into(),
        snp_req_certs_supported: true,
    };
    let config = serde_json::to_value(full_config()).unwrap();
    let samples: BTreeMap<&str, Value> = BTreeMap::from([
        ("VmConfig", config.clone()),
        ("CpusConfig", config["cpus"].clone()),
        ("MemoryConfig", config["memory"].clone()),
        ("SnpConfig", config["snp"].clone()),
        ("PlatformConfig", config["platform"].clone()),
        ("PayloadConfig", config["payload"].clone()),
        (
            "Warnings",
            serde_json::to_value(Warnings {
                warnings: vec!["w".into()],
            })
            .unwrap(),
        ),
        (
            "AttestPayload",
            serde_json::to_value(TestGuestConfig::attest()).unwrap(),
        ),
        (
            "SnpAttestPayload",
            serde_json::to_value(TestGuestConfig::SnpAttest {
                requests: 1,
                interval_ms: 0,
                retry_ms: 10,
                max_busy_retries: 100,
                c_bit: Some(51),
            })
            .unwrap(),
        ),
        ("PingResponse", serde_json::to_value(&ping).unwrap()),
        ("VmInfo", serde_json::to_value(&info).unwrap()),
        ("VcpuInfo", serde_json::to_value(&info.vcpus[0]).unwrap()),
        (
            "SnpCertsInfo",
            serde_json::to_value(SnpCertsInfo::default()).unwrap(),
        ),
        (
            "SnpCertsUpdate",
            serde_json::to_value(&full_update).unwrap(),
        ),
        (
            "VmCounters",
            serde_json::to_value(VmCounters::default()).unwrap(),
        ),
        (
            "OutcomeCounts",
            serde_json::to_value(OutcomeCounts::default()).unwrap(),
        ),
        (
            "LockWaitSummary",
            serde_json::to_value(LockWaitSummary::default()).unwrap(),
        ),
    ]);
    let documented: BTreeSet<&str> = schemas
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["type"] == "object" && s.get("properties").is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(documented, samples.keys().copied().collect());
    for (name, sample) in &samples {
        let schema = &schemas[*name];
        let properties: BTreeSet<&String> =
            schema["properties"].as_object().unwrap().keys().collect();
        let keys: BTreeSet<&String> = sample.as_object().unwrap().keys().collect();
        assert_eq!(properties, keys, "{name}");
        if let Some(required) = schema["required"].as_array() {
            for field in required {
                assert!(
                    keys.contains(&field.as_str().unwrap().to_owned()),
                    "{name}: {field}"
                );
            }
        }
    }
    for request in [
        "VmConfig",
        "CpusConfig",
        "MemoryConfig",
        "PlatformConfig",
        "SnpConfig",
        "PayloadConfig",
        "AttestPayload",
        "SnpAttestPayload",
        "SnpCertsUpdate",
    ] {
        assert_eq!(schemas[request]["additionalProperties"], false, "{request}");
    }
    let states: Vec<Value> = [
        VmState::Created,
        VmState::Running,
        VmState::Shutdown,
        VmState::Paused,
    ]
    .iter()
    .map(|s| serde_json::to_value(s).unwrap())
    .collect();
    assert_eq!(schemas["VmState"]["enum"], Value::Array(states));
    // The error body is Cloud Hypervisor's array of strings.
    let error = serde_json::to_value(ErrorBody(vec!["a".into(), "b".into()])).unwrap();
    assert!(error.is_array());
    assert_eq!(schemas["ErrorBody"]["type"], "array");
    assert_eq!(schemas["ErrorBody"]["items"]["type"], "string");
    // The counters are Cloud Hypervisor's device → counter → integer map.
    let map = serde_json::to_value(VmCounters::default().counter_map()).unwrap();
    assert!(map[COUNTERS_DEVICE]["delivered"].is_u64());
    let counter = &schemas["CounterMap"]["additionalProperties"]["additionalProperties"];
    assert_eq!(counter["type"], "integer");
    // Paths carry the absolute-path pattern wherever a client sends one.
    for schema in ["SnpConfig", "SnpCertsUpdate"] {
        assert_eq!(
            schemas[schema]["properties"]["certs_file"]["pattern"], "^/",
            "{schema}"
        );
    }
}

/// The documented defaults are the Rust defaults.
#[test]
fn defaults_match() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let config = serde_json::to_value(VmConfig::default()).unwrap();
    for (section, schema) in [
        ("cpus", "CpusConfig"),
        ("memory", "MemoryConfig"),
        ("platform", "PlatformConfig"),
        ("snp", "SnpConfig"),
        ("payload", "AttestPayload"),
    ] {
        let defaults = match section {
            "payload" => serde_json::to_value(TestGuestConfig::attest()).unwrap(),
            _ => config[section].clone(),
        };
        for (field, property) in schemas[schema]["properties"].as_object().unwrap() {
            if let Some(default) = property.get("default") {
                assert_eq!(&defaults[field], default, "{schema}.{field}");
            }
        }
    }
}

#[test]
fn put_snp_certs_lists_409_for_a_locked_file() {
    let doc = document();
    let conflict = &doc["paths"]["/vm.snp-certs"]["put"]["responses"]["409"];
    assert_eq!(conflict["$ref"], "#/components/responses/Conflict");
    let description = doc["components"]["responses"]["Conflict"]["description"]
        .as_str()
        .unwrap();
    assert!(
        description.contains("locked by an update in progress"),
        "{description}"
    );
}

/// Every reason `snp-certs` can give is named in `docs/api.md`.
#[test]
fn docs_name_every_reason() {
    let doc = include_str!("../../docs/api.md");
    for reason in snp_certs_types::Reason::ALL {
        assert!(doc.contains(&format!("`{}`", reason.as_str())), "{reason}");
    }
}
