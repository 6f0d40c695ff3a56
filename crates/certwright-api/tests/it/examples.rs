//! Every issuer in `examples/` is valid, so that what users copy works.
#![allow(clippy::unwrap_used)]

use certwright_api::{IssuerSpec, validate_issuer_spec};

#[test]
fn every_example_issuer_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut issuers = 0;
    let mut files = Vec::new();
    let mut dirs = vec![dir];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = value["kind"].as_str().unwrap_or_default();
            if !kind.starts_with("Internal") {
                continue;
            }
            assert_eq!(
                value["apiVersion"],
                "pki.certwright.io/v1alpha1",
                "{}",
                path.display()
            );
            let spec: IssuerSpec = serde_json::from_value(value["spec"].clone())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            validate_issuer_spec(&spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            issuers += 1;
        }
    }
    assert_eq!(issuers, 10, "every issuer of the examples");
}
