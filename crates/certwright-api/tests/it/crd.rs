//! The generated CRDs as the API server sees them: valid `apiextensions.k8s.io/v1`,
//! structural schemas, and CEL rules that reject an issuer with zero or two backends.
#![allow(clippy::unwrap_used)]

use certwright_api::{InternalClusterIssuer, InternalIssuer};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn both() -> Vec<(CustomResourceDefinition, &'static str, &'static str)> {
    vec![
        (InternalIssuer::crd(), "InternalIssuer", "Namespaced"),
        (
            InternalClusterIssuer::crd(),
            "InternalClusterIssuer",
            "Cluster",
        ),
    ]
}

#[test]
fn crds_name_group_scope_and_subresources() {
    for (crd, kind, scope) in both() {
        let value = serde_json::to_value(&crd).unwrap();
        assert_eq!(value["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(value["kind"], "CustomResourceDefinition");
        assert_eq!(crd.spec.group, "pki.certwright.io");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.scope, scope);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{}.pki.certwright.io", crd.spec.names.plural).as_str())
        );
        assert!(
            !crd.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .is_empty()
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "{kind} must have the status subresource"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Ready", "Backend", "Reason", "Age"]);
    }
}

#[test]
fn both_kinds_share_one_spec_schema() {
    let [(a, ..), (b, ..)] = both().try_into().ok().unwrap();
    assert_eq!(
        schema_of(&a)["properties"]["spec"],
        schema_of(&b)["properties"]["spec"]
    );
}

/// The rules the API server applies to decide whether a schema is structural
/// (apiextensions-apiserver `pkg/apiserver/schema/validation.go`).
fn assert_structural(node: &Value, path: &str, in_junctor: bool) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    assert!(!obj.contains_key("$ref"), "{path}: $ref is not allowed");
    assert!(
        !obj.contains_key("definitions") && !obj.contains_key("$defs"),
        "{path}: definitions"
    );
    if in_junctor {
        for banned in [
            "type",
            "default",
            "nullable",
            "description",
            "additionalProperties",
        ] {
            assert!(
                !obj.contains_key(banned),
                "{path}: {banned} inside allOf/anyOf/oneOf/not"
            );
        }
    } else {
        let exempt = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        assert!(
            exempt || obj.contains_key("type"),
            "{path}: every node needs a type"
        );
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        panic!("{path}: properties and additionalProperties together");
    }
    if obj.get("type") == Some(&json!("array")) {
        assert!(obj.contains_key("items"), "{path}: array without items");
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            assert_structural(child, &format!("{path}.{name}"), in_junctor);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"), in_junctor);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(extra, &format!("{path}{{}}"), in_junctor);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        for (i, child) in obj
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            assert_structural(child, &format!("{path}.{junctor}[{i}]"), true);
        }
    }
    if let Some(not) = obj.get("not") {
        assert_structural(not, &format!("{path}.not"), true);
    }
}

#[test]
fn schemas_are_structural() {
    for (crd, kind, _) in both() {
        assert_structural(&schema_of(&crd), kind, false);
    }
}

fn object(kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "pki.certwright.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "corp"},
        "spec": spec,
    })
}

fn cel_errors(crd: &CustomResourceDefinition, obj: &Value) -> Vec<String> {
    let validator = kube_cel::Validator::new();
    match validator.validate(&schema_of(crd), obj, None) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn the_schema_itself_rejects_zero_or_two_backends() {
    let ca = json!({"secretName": "dev-ca"});
    let rest = json!({"url": "https://pki.corp.example/api/v1"});
    for (crd, kind, _) in both() {
        let one = cel_errors(&crd, &object(kind, json!({"ca": ca})));
        assert!(one.is_empty(), "{kind} with one backend: {one:?}");

        let two = cel_errors(&crd, &object(kind, json!({"ca": ca, "rest": rest})));
        assert_eq!(two.len(), 1, "{kind} with two backends: {two:?}");
        assert!(two[0].contains("exactly one backend block"), "{two:?}");

        let zero = cel_errors(&crd, &object(kind, json!({"maxConcurrentRequests": 2})));
        assert_eq!(zero.len(), 1, "{kind} with no backend: {zero:?}");
    }
}

#[test]
fn duration_pattern_in_schema_matches_the_parser() {
    let schema = schema_of(&InternalIssuer::crd());
    let pattern = schema["properties"]["spec"]["properties"]["defaultDuration"]["pattern"]
        .as_str()
        .unwrap();
    let re = regex::Regex::new(pattern).unwrap();
    for good in ["2160h", "1h30m", "30s", "1.5h", ".5m", "100ms", "10µs"] {
        assert!(re.is_match(good), "{good}");
        assert!(certwright_api::parse_duration(good).is_ok(), "{good}");
    }
    for bad in ["90d", "1 h", "h", "", "1h-5m", "10"] {
        assert!(!re.is_match(bad), "{bad}");
        assert!(certwright_api::parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn secret_name_pattern_in_schema_matches_the_validator() {
    let schema = schema_of(&InternalIssuer::crd());
    let spec = &schema["properties"]["spec"]["properties"];
    let patterns: Vec<&str> = [
        &spec["ca"]["properties"]["secretName"],
        &spec["rest"]["properties"]["authSecretName"],
        &spec["adcs"]["properties"]["authSecretName"],
        &spec["ejbca"]["properties"]["authSecretName"],
    ]
    .iter()
    .map(|field| {
        field["pattern"]
            .as_str()
            .expect("a pattern on every Secret name")
    })
    .collect();
    let re = regex::Regex::new(patterns[0]).unwrap();
    assert!(patterns.iter().all(|p| *p == patterns[0]));
    for good in ["dev-ca", "a", "pki.auth-1", "0x"] {
        assert!(re.is_match(good), "{good}");
        assert!(
            certwright_api::validation::check_dns1123_subdomain(good).is_ok(),
            "{good}"
        );
    }
    for bad in [
        "Dev-CA", "../x", "a/b", "-a", "a-", "a..b", "", "a_b", "a b",
    ] {
        assert!(!re.is_match(bad), "{bad}");
        assert!(
            certwright_api::validation::check_dns1123_subdomain(bad).is_err(),
            "{bad}"
        );
    }
}
