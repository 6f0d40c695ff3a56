//! Every manifest under `examples/` is valid for the API it is written against, so that
//! what users copy applies: certwright's CRDs, cert-manager's, Flux's and Argo CD's (the
//! CRD schemas in `fixtures/crd-schemas/`), and the built-in kinds. Fields are checked
//! strictly (an unknown field fails, as `kubectl apply --validate=strict` does), and the
//! orderings the integration examples exist to show (Argo CD sync waves, Flux
//! `dependsOn`) and the issuers they point at are checked too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use certwright_testkit::schema::{CrdSchema, validate};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every CRD an example may use.
fn schemas() -> Vec<CrdSchema> {
    let mut dirs = vec![
        root().join("deploy/crds"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/crd-schemas"),
    ];
    let mut schemas = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                schemas.extend(
                    CrdSchema::from_yaml(&text)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
                );
            }
        }
    }
    schemas
}

/// The built-in kinds the examples use, with the fields the Kubernetes API reference
/// gives them (`core/v1` Secret, `certificates.k8s.io/v1` CertificateSigningRequest).
fn builtin_schema(api_version: &str, kind: &str) -> Option<Value> {
    let metadata = json!({"type": "object"});
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    match (api_version, kind) {
        ("v1", "Secret") => Some(json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": metadata,
                "type": {"type": "string"},
                "data": strings,
                "stringData": strings,
                "immutable": {"type": "boolean"},
            }
        })),
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => Some(json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": metadata,
                "spec": {
                    "type": "object",
                    "required": ["request", "signerName"],
                    "properties": {
                        "request": {"type": "string"},
                        "signerName": {"type": "string"},
                        "expirationSeconds": {"type": "integer"},
                        "usages": {"type": "array", "items": {"type": "string", "enum": [
                            "signing", "digital signature", "content commitment",
                            "key encipherment", "key agreement", "data encipherment",
                            "cert sign", "crl sign", "encipher only", "decipher only", "any",
                            "server auth", "client auth", "code signing", "email protection",
                            "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
                            "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"
                        ]}},
                        "username": {"type": "string"},
                        "uid": {"type": "string"},
                        "groups": {"type": "array", "items": {"type": "string"}},
                        "extra": {"type": "object"},
                    }
                }
            }
        })),
        _ => None,
    }
}

/// Drops nulls and empty maps and lists, which a typed round trip adds or leaves out.
fn pruned(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), pruned(v)))
                .filter(|(_, v)| !v.is_null() && v != &json!({}) && v != &json!([]))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(pruned).collect()),
        other => other.clone(),
    }
}

/// An Ingress is checked by a round trip through k8s-openapi's type: a field the type
/// does not know is lost on the way and shows as a difference.
fn ingress_problems(object: &Value) -> Vec<String> {
    use k8s_openapi::api::networking::v1::Ingress;
    match serde_json::from_value::<Ingress>(object.clone()) {
        Err(e) => vec![e.to_string()],
        Ok(ingress) => {
            let back = pruned(&serde_json::to_value(&ingress).unwrap());
            if back == pruned(object) {
                Vec::new()
            } else {
                vec![format!(
                    "fields the Ingress type does not know: {object:#} became {back:#}"
                )]
            }
        }
    }
}

/// A document of an example file.
struct Manifest {
    file: String,
    value: Value,
}

impl Manifest {
    fn str(&self, pointer: &str) -> &str {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn kind(&self) -> &str {
        self.str("/kind")
    }

    fn name(&self) -> &str {
        self.str("/metadata/name")
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.value
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    }
}

/// Every YAML file under `examples/`, recursively, as (path from examples/, text).
fn example_files() -> Vec<(String, String)> {
    let base = root().join("examples");
    let mut files = Vec::new();
    let mut dirs = vec![base.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let rel = path.strip_prefix(&base).unwrap().display().to_string();
                files.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Helm values files among the examples: checked by [`istio_csr_values`], not as
/// manifests.
const VALUES_FILES: [&str; 1] = ["istio-csr-values.yaml"];

fn manifests() -> Vec<Manifest> {
    let mut out = Vec::new();
    for (file, text) in example_files() {
        if VALUES_FILES.contains(&file.as_str()) {
            continue;
        }
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{file}: {e}"));
            if value.is_null() {
                continue;
            }
            out.push(Manifest {
                file: file.clone(),
                value,
            });
        }
    }
    out
}

#[test]
fn every_example_manifest_is_valid_for_its_api() {
    let schemas = schemas();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for m in manifests() {
        let api_version = m.str("/apiVersion").to_string();
        let kind = m.kind().to_string();
        if m.name().is_empty() {
            problems.push(format!("{}: a {kind} without metadata.name", m.file));
        }
        let found = if let Some(crd) = schemas.iter().find(|s| s.serves(&api_version, &kind)) {
            crd.validate(&m.value)
        } else if let Some(schema) = builtin_schema(&api_version, &kind) {
            let mut found = Vec::new();
            validate(&schema, &m.value, "", &mut found);
            found
        } else if (api_version.as_str(), kind.as_str()) == ("networking.k8s.io/v1", "Ingress") {
            ingress_problems(&m.value)
        } else {
            vec![format!(
                "no schema for {api_version} {kind}: add its CRD to fixtures/crd-schemas"
            )]
        };
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("{}: {kind} {}: {p}", m.file, m.name())),
        );
        *checked.entry(kind).or_default() += 1;
    }
    assert!(problems.is_empty(), "{problems:#?}");
    for kind in [
        "InternalIssuer",
        "InternalClusterIssuer",
        "Certificate",
        "Ingress",
        "Application",
        "Kustomization",
        "HelmRelease",
        "GitRepository",
        "Secret",
        "CertificateSigningRequest",
        "IssuancePolicy",
    ] {
        assert!(
            checked.contains_key(kind),
            "no {kind} among the examples: {checked:?}"
        );
    }
}

#[test]
fn a_strict_check_catches_a_misspelt_field() {
    // The check is only worth something if it fails: a Certificate with a typo.
    let schemas = schemas();
    let crd = schemas
        .iter()
        .find(|s| s.serves("cert-manager.io/v1", "Certificate"))
        .unwrap();
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "x"},
        "spec": {"secretName": "x", "issuerRef": {"name": "i", "kind": "InternalIssuer", "group": "pki.certwright.io"},
                 "dnsName": ["x.example"]}
    });
    assert_eq!(
        crd.validate(&certificate),
        vec!["spec.dnsName: unknown field".to_string()]
    );
}

/// The issuers the examples define, by kind and name.
fn issuers(manifests: &[Manifest]) -> Vec<(&str, &str)> {
    manifests
        .iter()
        .filter(|m| m.str("/apiVersion").starts_with("pki.certwright.io/"))
        .map(|m| (m.kind(), m.name()))
        .collect()
}

#[test]
fn ingresses_name_a_certwright_issuer_as_ingress_shim_reads_it() {
    let all = manifests();
    let ingresses: Vec<&Manifest> = all.iter().filter(|m| m.kind() == "Ingress").collect();
    assert!(!ingresses.is_empty());
    for ingress in ingresses {
        // An external issuer is named with `issuer` plus `issuer-kind` and
        // `issuer-group`, whatever its scope: `cluster-issuer` means cert-manager's own
        // ClusterIssuer kind.
        assert!(
            ingress
                .annotation("cert-manager.io/cluster-issuer")
                .is_none()
        );
        assert!(
            ingress
                .annotation("cert-manager.io/issuer")
                .is_some_and(|n| !n.is_empty())
        );
        assert_eq!(
            ingress.annotation("cert-manager.io/issuer-group"),
            Some("pki.certwright.io"),
            "{}",
            ingress.name()
        );
        assert!(matches!(
            ingress.annotation("cert-manager.io/issuer-kind"),
            Some("InternalIssuer" | "InternalClusterIssuer")
        ));
        let tls = ingress.value.pointer("/spec/tls").and_then(Value::as_array);
        assert!(
            tls.is_some_and(|t| t
                .iter()
                .all(|e| e.get("secretName").is_some() && e.get("hosts").is_some())),
            "ingress-shim makes a Certificate per spec.tls entry with hosts and a secretName"
        );
    }
}

#[test]
fn the_linkerd_identity_issuer_is_a_ca_certificate_from_an_issuer_in_the_same_file() {
    let all = manifests();
    let in_file: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.file == "linkerd-identity-issuer.yaml")
        .collect();
    let certificate = in_file.iter().find(|m| m.kind() == "Certificate").unwrap();
    assert_eq!(certificate.value.pointer("/spec/isCA"), Some(&json!(true)));
    assert_eq!(certificate.str("/metadata/namespace"), "linkerd");
    assert_eq!(
        certificate.str("/spec/secretName"),
        "linkerd-identity-issuer"
    );
    assert_eq!(
        certificate.str("/spec/commonName"),
        "identity.linkerd.cluster.local"
    );
    let usages = certificate.value.pointer("/spec/usages").unwrap();
    for usage in ["cert sign", "crl sign"] {
        assert!(
            usages.as_array().unwrap().contains(&json!(usage)),
            "{usages}"
        );
    }
    let issuer = (
        certificate.str("/spec/issuerRef/kind"),
        certificate.str("/spec/issuerRef/name"),
    );
    assert_eq!(
        certificate.str("/spec/issuerRef/group"),
        "pki.certwright.io"
    );
    let owned: Vec<Manifest> = in_file
        .iter()
        .map(|m| Manifest {
            file: m.file.clone(),
            value: m.value.clone(),
        })
        .collect();
    assert!(
        issuers(&owned).contains(&issuer),
        "{issuer:?} is not defined beside it"
    );
}

#[test]
fn argo_cd_sync_waves_put_the_secret_before_the_issuer_before_the_certificate() {
    let all = manifests();
    let wave = |kind: &str| -> i64 {
        let m = all
            .iter()
            .find(|m| m.file.starts_with("argocd/") && m.kind() == kind)
            .unwrap_or_else(|| panic!("no {kind} in examples/argocd"));
        m.annotation("argocd.argoproj.io/sync-wave")
            .unwrap_or_else(|| panic!("{kind} has no sync-wave"))
            .parse()
            .unwrap()
    };
    let chart = wave("Application");
    let secret = wave("Secret");
    let issuer = wave("InternalIssuer");
    let certificate = wave("Certificate");
    assert!(chart < secret && secret < issuer && issuer < certificate);
    // The Certificate names the issuer of the same sync.
    let cert = all
        .iter()
        .find(|m| m.file.starts_with("argocd/") && m.kind() == "Certificate")
        .unwrap();
    let issuer_obj = all
        .iter()
        .find(|m| m.file.starts_with("argocd/") && m.kind() == "InternalIssuer")
        .unwrap();
    assert_eq!(cert.str("/spec/issuerRef/name"), issuer_obj.name());
    assert_eq!(
        cert.str("/metadata/namespace"),
        issuer_obj.str("/metadata/namespace")
    );
    assert_eq!(
        issuer_obj.str("/spec/ca/secretName"),
        all.iter()
            .find(|m| m.file.starts_with("argocd/") && m.kind() == "Secret")
            .unwrap()
            .name()
    );
}

#[test]
fn flux_kustomizations_depend_on_each_other_in_order_and_exist() {
    let all = manifests();
    let kustomizations: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.file.starts_with("flux/") && m.kind() == "Kustomization")
        .collect();
    let names: Vec<&str> = kustomizations.iter().map(|k| k.name()).collect();
    let depends = |name: &str| -> Vec<String> {
        let k = kustomizations.iter().find(|k| k.name() == name).unwrap();
        k.value
            .pointer("/spec/dependsOn")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    for k in &kustomizations {
        for dependency in depends(k.name()) {
            assert!(
                names.contains(&dependency.as_str()),
                "{} depends on a missing {dependency}",
                k.name()
            );
        }
    }
    assert_eq!(depends("certwright-issuers"), ["certwright"]);
    assert_eq!(depends("apps"), ["certwright-issuers"]);
    // The issuers' Kustomization waits for an issuer to be Ready, by certwright's kind.
    let issuers = kustomizations
        .iter()
        .find(|k| k.name() == "certwright-issuers")
        .unwrap();
    let checks = issuers.value.pointer("/spec/healthChecks").unwrap();
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["apiVersion"] == "pki.certwright.io/v1alpha1")
    );
    // The HelmRelease installs the chart from the repository's path.
    let release = all.iter().find(|m| m.kind() == "HelmRelease").unwrap();
    assert_eq!(release.str("/spec/chart/spec/chart"), "./helm/certwright");
}

#[test]
fn istio_csr_values_point_at_an_internal_cluster_issuer() {
    let text = std::fs::read_to_string(root().join("examples/istio-csr-values.yaml")).unwrap();
    let values: Value = serde_yaml_ng::from_str(&text).unwrap();
    let issuer = values
        .pointer("/app/certmanager/issuer")
        .expect("app.certmanager.issuer");
    assert_eq!(issuer["group"], "pki.certwright.io");
    assert_eq!(issuer["kind"], "InternalClusterIssuer");
    assert!(issuer["name"].as_str().is_some_and(|n| !n.is_empty()));
    // The keys istio-csr's chart reads (its values.yaml): nothing else at the top of app.
    for key in values["app"].as_object().unwrap().keys() {
        assert!(
            [
                "certmanager",
                "tls",
                "server",
                "istio",
                "controller",
                "runtimeConfiguration",
                "logLevel",
                "logFormat",
                "metrics",
                "readinessProbe"
            ]
            .contains(&key.as_str()),
            "app.{key} is not an istio-csr value"
        );
    }
    assert_eq!(
        values.pointer("/app/certmanager/namespace"),
        Some(&json!("istio-system"))
    );
}
