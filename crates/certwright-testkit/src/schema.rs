//! Strict validation of an object against a CustomResourceDefinition's structural
//! schema (`openAPIV3Schema`), as the API server's strict field validation
//! (`kubectl apply --validate=strict`) does: unknown fields, wrong types, missing
//! required fields, values outside an `enum`. Formats, patterns and CEL rules are not
//! checked (the test API server evaluates the CEL rules of certwright's own CRDs).
//!
//! The CRDs of other projects that certwright's examples use are in
//! `fixtures/crd-schemas/`, each naming the upstream file it was taken from.

use serde_json::Value;

/// One CRD's kind, group and served versions with their schemas.
#[derive(Clone, Debug)]
pub struct CrdSchema {
    /// `spec.group`.
    pub group: String,
    /// `spec.names.kind`.
    pub kind: String,
    versions: Vec<(String, Value)>,
}

impl CrdSchema {
    /// The schema of a CRD given as JSON (`apiextensions.k8s.io/v1`).
    pub fn from_crd(crd: &Value) -> Result<CrdSchema, String> {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .ok_or("the CRD has no spec.group")?;
        let kind = crd
            .pointer("/spec/names/kind")
            .and_then(Value::as_str)
            .ok_or("the CRD has no spec.names.kind")?;
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .ok_or("the CRD has no spec.versions")?
            .iter()
            .filter_map(|v| {
                let name = v.get("name")?.as_str()?;
                let schema = v.pointer("/schema/openAPIV3Schema")?;
                Some((name.to_string(), schema.clone()))
            })
            .collect();
        Ok(CrdSchema {
            group: group.to_string(),
            kind: kind.to_string(),
            versions,
        })
    }

    /// The schemas of every CRD in a YAML stream of CRDs.
    pub fn from_yaml(yaml: &str) -> Result<Vec<CrdSchema>, String> {
        let mut out = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value: Value =
                serde::Deserialize::deserialize(document).map_err(|e| e.to_string())?;
            if value.is_null() {
                continue;
            }
            out.push(CrdSchema::from_crd(&value)?);
        }
        Ok(out)
    }

    /// Whether this CRD serves `apiVersion` (`<group>/<version>`) and `kind`.
    pub fn serves(&self, api_version: &str, kind: &str) -> bool {
        self.schema(api_version, kind).is_some()
    }

    fn schema(&self, api_version: &str, kind: &str) -> Option<&Value> {
        let (group, version) = api_version.split_once('/')?;
        if group != self.group || kind != self.kind {
            return None;
        }
        self.versions
            .iter()
            .find(|(name, _)| name == version)
            .map(|(_, schema)| schema)
    }

    /// Every way `object` breaks the schema of its `apiVersion`, as
    /// `<field path>: <problem>`; empty when it is valid.
    pub fn validate(&self, object: &Value) -> Vec<String> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let Some(schema) = self.schema(api_version, kind) else {
            return vec![format!("{api_version} {kind} is not served by this CRD")];
        };
        let mut problems = Vec::new();
        validate(schema, object, "", &mut problems);
        problems
    }
}

/// Checks `value` against one schema node; `path` is the field path so far.
pub fn validate(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let at = |p: &str| {
        if p.is_empty() {
            "<root>".to_string()
        } else {
            p.to_string()
        }
    };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            problems.push(format!("{}: null is not allowed", at(path)));
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            problems.push(format!("{}: must be an integer or a string", at(path)));
        }
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        problems.push(format!("{}: {value} is not one of {options:?}", at(path)));
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(map) = value.as_object() else {
                problems.push(format!("{}: must be an object", at(path)));
                return;
            };
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for field in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(field) {
                    problems.push(format!("{}: required", join(path, field)));
                }
            }
            for (key, child) in map {
                let child_path = join(path, key);
                if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                    validate(child_schema, child, &child_path, problems);
                } else if let Some(extra) = additional.filter(|a| a.is_object()) {
                    validate(extra, child, &child_path, problems);
                } else if !preserve
                    && additional != Some(&Value::Bool(true))
                    && (properties.is_some() || additional == Some(&Value::Bool(false)))
                    // The API server serves these at the root of every kind, whether the
                    // schema names them or not.
                    && !(path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"))
                {
                    problems.push(format!("{child_path}: unknown field"));
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                problems.push(format!("{}: must be an array", at(path)));
                return;
            };
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item_schema, item, &format!("{path}[{i}]"), problems);
                }
            }
        }
        Some("string") if !value.is_string() => {
            problems.push(format!("{}: must be a string", at(path)));
        }
        Some("integer") if !(value.is_i64() || value.is_u64()) => {
            problems.push(format!("{}: must be an integer", at(path)));
        }
        Some("number") if !value.is_number() => {
            problems.push(format!("{}: must be a number", at(path)));
        }
        Some("boolean") if !value.is_boolean() => {
            problems.push(format!("{}: must be a boolean", at(path)));
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn crd() -> CrdSchema {
        CrdSchema::from_crd(&json!({
            "spec": {
                "group": "example.io",
                "names": {"kind": "Widget"},
                "versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": {
                                "size": {"type": "integer"},
                                "mode": {"type": "string", "enum": ["a", "b"]},
                                "port": {"x-kubernetes-int-or-string": true},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            }
                        }
                    }
                }}}]
            }
        }))
        .unwrap()
    }

    fn widget(spec: Value) -> Value {
        json!({"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec})
    }

    #[test]
    fn a_valid_object_has_no_problems() {
        let object = widget(json!({
            "size": 3, "mode": "a", "port": "http", "labels": {"x": "y"},
            "items": [{"name": "one"}], "free": {"anything": [1, 2]}
        }));
        assert_eq!(crd().validate(&object), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let object = widget(json!({
            "mode": "c", "port": 1.5, "labels": {"x": 1},
            "items": [{"name": "one", "nmae": "typo"}], "colour": "red"
        }));
        let problems = crd().validate(&object);
        for expected in [
            "spec.size: required",
            "spec.port: must be an integer or a string",
            "spec.labels.x: must be a string",
            "spec.items[0].nmae: unknown field",
            "spec.colour: unknown field",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected}: {problems:#?}"
            );
        }
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("spec.mode: \"c\" is not one of"))
        );
    }

    #[test]
    fn another_version_or_kind_is_not_served() {
        let mut object = widget(json!({"size": 1}));
        object["apiVersion"] = json!("example.io/v2");
        assert_eq!(
            crd().validate(&object),
            vec!["example.io/v2 Widget is not served by this CRD".to_string()]
        );
        assert!(crd().serves("example.io/v1", "Widget"));
        assert!(!crd().serves("example.io/v1", "Gadget"));
    }
}
