//! Label and field selectors, parsed from the `labelSelector` and `fieldSelector` query
//! parameters with the grammar the Kubernetes API server accepts, and matched against
//! stored objects.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::ApiError;

/// A parsed `labelSelector`: every requirement must hold (they are ANDed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelRequirement {
    /// `key`
    Exists(String),
    /// `!key`
    Absent(String),
    /// `key=value`, `key==value`
    Equals(String, String),
    /// `key!=value`: also true when the label is absent.
    NotEquals(String, String),
    /// `key in (a,b)`
    In(String, Vec<String>),
    /// `key notin (a,b)`: also true when the label is absent.
    NotIn(String, Vec<String>),
    /// `key>5` (integers only, as upstream)
    GreaterThan(String, i64),
    /// `key<5`
    LessThan(String, i64),
}

impl LabelSelector {
    /// Parses a selector; the empty string selects everything.
    pub(crate) fn parse(input: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(input) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_label_requirement(part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: invalid label selector {input:?}: {part:?}"
                ))
            })?);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector selects everything.
    pub(crate) fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::Absent(k) => !labels.contains_key(k),
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            LabelRequirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            LabelRequirement::GreaterThan(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            LabelRequirement::LessThan(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// Splits at commas that are not inside a `( ... )` value set.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn is_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_label_requirement(part: &str) -> Option<LabelRequirement> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return (!key.is_empty() && key.chars().all(is_key_char))
            .then(|| LabelRequirement::Absent(key.to_string()));
    }
    let key_len = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
    let key = &part[..key_len];
    if key.is_empty() {
        return None;
    }
    let key = key.to_string();
    let rest = part[key_len..].trim_start();
    if rest.is_empty() {
        return Some(LabelRequirement::Exists(key));
    }
    let single = |v: &str| {
        let v = v.trim();
        is_value(v).then(|| v.to_string())
    };
    if let Some(v) = rest.strip_prefix("!=") {
        return Some(LabelRequirement::NotEquals(key, single(v)?));
    }
    if let Some(v) = rest.strip_prefix("==") {
        return Some(LabelRequirement::Equals(key, single(v)?));
    }
    if let Some(v) = rest.strip_prefix('=') {
        return Some(LabelRequirement::Equals(key, single(v)?));
    }
    if let Some(v) = rest.strip_prefix('>') {
        return Some(LabelRequirement::GreaterThan(key, v.trim().parse().ok()?));
    }
    if let Some(v) = rest.strip_prefix('<') {
        return Some(LabelRequirement::LessThan(key, v.trim().parse().ok()?));
    }
    if let Some(set) = keyword(rest, "notin") {
        return Some(LabelRequirement::NotIn(key, parse_set(set)?));
    }
    if let Some(set) = keyword(rest, "in") {
        return Some(LabelRequirement::In(key, parse_set(set)?));
    }
    None
}

/// `rest` with the operator word `word` removed, when it is followed by a space or `(`.
fn keyword<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(word)?;
    after
        .starts_with(|c: char| c.is_whitespace() || c == '(')
        .then(|| after.trim())
}

fn parse_set(set: &str) -> Option<Vec<String>> {
    let inner = set.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(|v| {
            let v = v.trim();
            is_value(v).then(|| v.to_string())
        })
        .collect()
}

/// A parsed `fieldSelector`: `path=value`, `path==value` and `path!=value`, ANDed.
///
/// `metadata.name` and `metadata.namespace` work for every kind, as upstream. Any other
/// dotted path is looked up in the object (upstream allows only the fields each kind
/// declares selectable and answers 400 for the rest; this server is more lenient).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    path: String,
    value: String,
    equal: bool,
}

impl FieldSelector {
    /// Parses a selector; the empty string selects everything.
    pub(crate) fn parse(input: &str) -> Result<FieldSelector, ApiError> {
        let mut requirements = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (path, value, equal) = if let Some((p, v)) = part.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, v, true)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {input:?}: {part:?} has no operator"
                )));
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {input:?}: empty field"
                )));
            }
            requirements.push(FieldRequirement {
                path: path.to_string(),
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether the selector selects everything.
    pub(crate) fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the object is selected. `object` is parsed only when a requirement looks
    /// past `metadata.name`/`metadata.namespace`.
    pub(crate) fn matches(
        &self,
        namespace: &str,
        name: &str,
        object: impl FnOnce() -> Value,
    ) -> bool {
        let mut object = Some(object);
        let mut parsed: Option<Value> = None;
        self.requirements.iter().all(|r| {
            let actual = match r.path.as_str() {
                "metadata.name" => name.to_string(),
                "metadata.namespace" => namespace.to_string(),
                path => {
                    if parsed.is_none() {
                        parsed = object.take().map(|f| f());
                    }
                    parsed
                        .as_ref()
                        .map(|v| field_string(v, path))
                        .unwrap_or_default()
                }
            };
            (actual == r.value) == r.equal
        })
    }
}

/// The value at a dotted path as a selector compares it: strings as they are, other
/// scalars in their JSON form, a missing field as "".
fn field_string(value: &Value, path: &str) -> String {
    let mut current = value;
    for segment in path.split('.') {
        match current.get(segment) {
            Some(next) => current = next,
            None => return String::new(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector)
            .expect("a valid selector")
            .matches(&labels(pairs))
    }

    #[test]
    fn equality_requirements() {
        assert!(selects("app=web", &[("app", "web")]));
        assert!(selects("app==web", &[("app", "web")]));
        assert!(!selects("app=web", &[("app", "db")]));
        assert!(selects("app!=web", &[("app", "db")]));
        assert!(
            selects("app!=web", &[]),
            "!= holds when the label is absent"
        );
        assert!(selects(
            "app = web , tier=front",
            &[("app", "web"), ("tier", "front")]
        ));
        assert!(!selects("app=web,tier=front", &[("app", "web")]));
    }

    #[test]
    fn set_requirements() {
        assert!(selects("env in (prod, staging)", &[("env", "staging")]));
        assert!(!selects("env in (prod,staging)", &[("env", "dev")]));
        assert!(!selects("env in (prod)", &[]));
        assert!(selects("env notin (prod)", &[("env", "dev")]));
        assert!(selects("env notin (prod)", &[]), "notin holds when absent");
        assert!(selects("env", &[("env", "")]));
        assert!(!selects("env", &[]));
        assert!(selects("!env", &[]));
        assert!(!selects("!env", &[("env", "x")]));
        assert!(selects(
            "env in (a,b),app=x,!gone",
            &[("env", "b"), ("app", "x")]
        ));
        assert!(selects(
            "example.com/team=pki",
            &[("example.com/team", "pki")]
        ));
        assert!(selects("n>3,n<10", &[("n", "5")]));
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        for bad in [
            "app=we b",
            "in (a)",
            "env in a,b",
            "env in (a",
            "=x",
            "env ~ x",
        ] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert_eq!(err.code, 400, "{bad}");
        }
        assert!(LabelSelector::parse("").expect("empty").is_empty());
    }

    #[test]
    fn field_selectors() {
        let object = serde_json::json!({"spec": {"type": "kubernetes.io/tls", "n": 3}});
        let sel =
            FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system").expect("valid");
        assert!(sel.matches("default", "a", || object.clone()));
        assert!(!sel.matches("kube-system", "a", || object.clone()));
        assert!(!sel.matches("default", "b", || object.clone()));
        let sel = FieldSelector::parse("spec.type==kubernetes.io/tls,spec.n=3").expect("valid");
        assert!(sel.matches("default", "a", || object.clone()));
        let sel = FieldSelector::parse("spec.missing=").expect("valid");
        assert!(sel.matches("default", "a", || object.clone()));
        assert_eq!(
            FieldSelector::parse("metadata.name")
                .expect_err("no op")
                .code,
            400
        );
    }
}
