//! CEL validation of custom resources: the `x-kubernetes-validations` rules of a CRD's
//! schema, compiled once when the CRD is stored and evaluated with kube-cel on every
//! create and update of its objects, as upstream evaluates them before storing (and
//! before validating admission webhooks).
//!
//! Only kinds whose schema has a rule get a [`CrdValidation`]; the others pay nothing.

use kube_cel::{CompilationError, CompiledSchema, ErrorKind, ValidationError};
use serde_json::Value;

use super::error::{FieldError, FieldErrorKind};

/// The compiled rules of one CRD version's schema.
#[derive(Debug)]
pub(crate) struct CrdValidation {
    compiled: CompiledSchema,
    /// The `openAPIV3Schema`, for the type upstream names in its messages.
    schema: Value,
}

impl CrdValidation {
    /// The rules of `version`'s schema in a CRD (apiextensions.k8s.io/v1 JSON), or `None`
    /// when that schema has none.
    ///
    /// # Errors
    /// A rule (or `messageExpression`) that does not compile, as the field error upstream
    /// rejects the CRD with.
    pub(crate) fn from_crd(
        crd: &Value,
        version: &str,
    ) -> Result<Option<CrdValidation>, Vec<FieldError>> {
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some((index, schema)) = versions.iter().enumerate().find_map(|(i, v)| {
            (v.get("name").and_then(Value::as_str) == Some(version))
                .then(|| v.pointer("/schema/openAPIV3Schema").map(|s| (i, s)))
                .flatten()
        }) else {
            return Ok(None);
        };
        if !has_rules(schema) {
            return Ok(None);
        }
        let compiled = kube_cel::compile_schema(schema);
        let mut errors = Vec::new();
        compilation_errors(
            &compiled,
            &format!("spec.versions[{index}].schema.openAPIV3Schema"),
            &mut errors,
        );
        if errors.is_empty() {
            Ok(Some(CrdValidation {
                compiled,
                schema: schema.clone(),
            }))
        } else {
            Err(errors)
        }
    }

    /// Evaluates the rules on `object` (and, for an update, transition rules against
    /// `old`).
    ///
    /// On an update an error about a value that did not change is dropped, as upstream's
    /// validation ratcheting does for rules that do not read `oldSelf` (here: compared at
    /// the error's field path).
    ///
    /// # Errors
    /// Every failed rule, as upstream reports it: `<field>: Invalid value: "<type>":
    /// <message>` (or the rule's `reason`).
    pub(crate) fn validate(
        &self,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<(), Vec<FieldError>> {
        let Err(errors) = kube_cel::validate_compiled(&self.compiled, object, old) else {
            return Ok(());
        };
        let errors: Vec<FieldError> = errors
            .iter()
            .filter(|e| !ratcheted(e, object, old))
            .map(|e| self.field_error(e))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn field_error(&self, error: &ValidationError) -> FieldError {
        let value = format!("{:?}", schema_type_at(&self.schema, &error.field_path));
        let detail = match error.kind {
            ErrorKind::ValidationFailure => error.message.clone(),
            _ => format!("rule evaluation failed: {}", error.message),
        };
        let kind = match error.reason.as_deref() {
            Some("FieldValueRequired") => FieldErrorKind::Required,
            Some("FieldValueForbidden") => FieldErrorKind::Forbidden,
            Some("FieldValueDuplicate") => FieldErrorKind::Duplicate(value),
            _ => FieldErrorKind::Invalid(value),
        };
        FieldError {
            field: error.field_path.clone(),
            kind,
            detail,
        }
    }
}

/// Whether any schema node carries `x-kubernetes-validations`.
fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "x-kubernetes-validations" && v.as_array().is_some_and(|a| !a.is_empty()))
                || has_rules(v)
        }),
        Value::Array(items) => items.iter().any(has_rules),
        _ => false,
    }
}

/// Collects the rules that failed to compile, with upstream's path to each.
fn compilation_errors(node: &CompiledSchema, path: &str, errors: &mut Vec<FieldError>) {
    for (i, result) in node.validations.iter().enumerate() {
        if let Err(e) = result {
            let (field, value) = match e {
                CompilationError::Parse { rule, .. } => ("rule", format!("{rule:?}")),
                CompilationError::MessageExpressionParse {
                    message_expression, ..
                } => ("messageExpression", format!("{message_expression:?}")),
                _ => ("rule", "\"\"".to_string()),
            };
            errors.push(FieldError::invalid(
                format!("{path}.x-kubernetes-validations[{i}].{field}"),
                value,
                format!("compilation failed: {e}"),
            ));
        }
    }
    let mut properties: Vec<_> = node.properties.iter().collect();
    properties.sort_by(|a, b| a.0.cmp(b.0));
    for (name, child) in properties {
        compilation_errors(child, &format!("{path}.properties[{name}]"), errors);
    }
    if let Some(items) = &node.items {
        compilation_errors(items, &format!("{path}.items"), errors);
    }
    if let Some(additional) = &node.additional_properties {
        compilation_errors(additional, &format!("{path}.additionalProperties"), errors);
    }
    for (keyword, branches) in [
        ("allOf", &node.all_of),
        ("oneOf", &node.one_of),
        ("anyOf", &node.any_of),
    ] {
        for (i, branch) in branches.iter().enumerate() {
            compilation_errors(branch, &format!("{path}.{keyword}[{i}]"), errors);
        }
    }
}

/// One step of a kube-cel field path: `spec.items[2].name` is `spec`, `items`, `[2]`,
/// `name`.
enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Step::Field(name));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Step::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// The value at a field path, if the object has one there.
fn value_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    steps(path).iter().try_fold(object, |v, step| match step {
        Step::Field(name) => v.get(name),
        Step::Index(i) => v.get(i),
    })
}

/// The schema `type` at a field path (`"object"` where it cannot be told).
fn schema_type_at(schema: &Value, path: &str) -> String {
    let node = steps(path)
        .iter()
        .try_fold(schema, |node, step| match step {
            Step::Field(name) => node
                .pointer(&format!("/properties/{name}"))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object())),
            Step::Index(_) => node.get("items"),
        });
    node.and_then(|n| n.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_string()
}

/// Ratcheting: an update may keep a value that fails a rule as long as it does not
/// change it (rules that read `oldSelf` are never ratcheted).
fn ratcheted(error: &ValidationError, object: &Value, old: Option<&Value>) -> bool {
    let Some(old) = old else { return false };
    error.kind == ErrorKind::ValidationFailure
        && !error.rule.contains("oldSelf")
        && value_at(object, &error.field_path) == value_at(old, &error.field_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(rule: &str) -> Value {
        json!({
            "spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": rule, "message": "a must not exceed b"}]
                }}
            }}}]}
        })
    }

    #[test]
    fn a_schema_without_rules_needs_no_validation() {
        let plain = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {"type": "object"}}
        }}}]}});
        assert!(
            CrdValidation::from_crd(&plain, "v1")
                .expect("compiles")
                .is_none()
        );
        assert!(
            CrdValidation::from_crd(&crd("self.a <= self.b"), "v2")
                .expect("no such version")
                .is_none()
        );
    }

    #[test]
    fn failed_rules_read_as_upstream_field_errors() {
        let v = CrdValidation::from_crd(&crd("self.a <= self.b"), "v1")
            .expect("compiles")
            .expect("has rules");
        assert!(v.validate(&json!({"spec": {"a": 1, "b": 2}}), None).is_ok());
        let errors = v
            .validate(&json!({"spec": {"a": 3, "b": 2}}), None)
            .expect_err("fails");
        assert_eq!(
            errors[0].to_string(),
            "spec: Invalid value: \"object\": a must not exceed b"
        );
        assert_eq!(errors[0].reason(), "FieldValueInvalid");
    }

    #[test]
    fn an_unchanged_invalid_value_is_ratcheted_on_update() {
        let v = CrdValidation::from_crd(&crd("self.a <= self.b"), "v1")
            .expect("compiles")
            .expect("has rules");
        let bad = json!({"spec": {"a": 3, "b": 2}, "status": {"x": 1}});
        let old = json!({"spec": {"a": 3, "b": 2}});
        assert!(v.validate(&bad, Some(&old)).is_ok());
        let worse = json!({"spec": {"a": 4, "b": 2}});
        assert!(v.validate(&worse, Some(&old)).is_err());
    }

    #[test]
    fn a_rule_that_does_not_compile_rejects_the_crd() {
        let errors = CrdValidation::from_crd(&crd("self.a <="), "v1").expect_err("bad rule");
        assert_eq!(
            errors[0].field,
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
        );
    }

    #[test]
    fn paths_and_types_are_followed_through_lists() {
        let object = json!({"spec": {"items": [{"n": 1}, {"n": 2}]}});
        assert_eq!(value_at(&object, "spec.items[1].n"), Some(&json!(2)));
        let schema = json!({"properties": {"spec": {"properties": {"items": {
            "type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}
        }}}}});
        assert_eq!(schema_type_at(&schema, "spec.items[1].n"), "integer");
        assert_eq!(schema_type_at(&schema, "spec.items"), "array");
        assert_eq!(schema_type_at(&schema, "nowhere"), "object");
    }
}
