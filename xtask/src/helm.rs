//! `cargo xtask helm-lint`: static checks of the chart in `helm/certwright`, for machines
//! without `helm`. It parses Chart.yaml, values.yaml (and values.schema.json) and the
//! templates' actions and YAML skeleton; it renders nothing. docs/helm.md, "The lint",
//! lists what it checks and what it cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_yaml_ng::Value;

const CHART_DIR: &str = "helm/certwright";
const DOCS: &str = "docs/helm.md";

/// Lints the chart under `root`; fails listing every problem as `file:line: message`.
pub(crate) fn lint(root: &Path) -> Result<()> {
    let chart = Chart::load(root)?;
    let findings = chart.check();
    if findings.is_empty() {
        println!(
            "helm-lint: {CHART_DIR}: {} templates, no problems",
            chart.templates.len()
        );
        return Ok(());
    }
    for f in &findings {
        eprintln!("{f}");
    }
    bail!("helm-lint: {} problem(s) in {CHART_DIR}", findings.len())
}

/// A problem at a file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    file: String,
    line: usize,
    message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// A file: its path relative to the repository root, and its text.
struct Source {
    path: String,
    text: String,
}

impl Source {
    fn finding(&self, line: usize, message: impl Into<String>) -> Finding {
        Finding {
            file: self.path.clone(),
            line,
            message: message.into(),
        }
    }
}

struct Chart {
    chart_yaml: Source,
    values: Source,
    schema: Option<Source>,
    /// Every file under templates/, sorted by path.
    templates: Vec<Source>,
    /// docs/helm.md, whose values table must name every value.
    docs: Option<Source>,
}

impl Chart {
    fn load(root: &Path) -> Result<Self> {
        let read = |rel: &str| -> Result<Source> {
            let text = std::fs::read_to_string(root.join(rel))
                .with_context(|| format!("reading {rel}"))?;
            Ok(Source {
                path: rel.to_string(),
                text,
            })
        };
        let optional = |rel: &str| root.join(rel).is_file().then(|| read(rel)).transpose();
        let mut files = Vec::new();
        walk(&root.join(CHART_DIR).join("templates"), &mut files)?;
        let mut templates = Vec::new();
        for path in files {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            templates.push(read(&rel)?);
        }
        Ok(Self {
            chart_yaml: read(&format!("{CHART_DIR}/Chart.yaml"))?,
            values: read(&format!("{CHART_DIR}/values.yaml"))?,
            schema: optional(&format!("{CHART_DIR}/values.schema.json"))?,
            templates,
            docs: optional(DOCS)?,
        })
    }

    fn check(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        check_chart_yaml(&self.chart_yaml, &mut out);
        let values = match parse_yaml(&self.values) {
            Ok(v) => Some(v),
            Err(f) => {
                out.push(f);
                None
            }
        };
        if let Some(values) = &values {
            let index = KeyIndex::scan(&self.values.text);
            let documented = check_documented(&self.values, values, &index, &mut out);
            check_resources(&self.values, values, &index, &mut Vec::new(), &mut out);
            if let Some(schema) = &self.schema {
                check_schema(schema, &self.values, values, &index, &mut out);
            }
            match &self.docs {
                Some(docs) => {
                    for (path, line) in &documented {
                        if !docs.text.contains(&format!("`{path}`")) {
                            out.push(self.values.finding(
                                *line,
                                format!("`{path}` is missing from the values table of {DOCS}"),
                            ));
                        }
                    }
                }
                None => out.push(self.values.finding(1, format!("{DOCS} is missing"))),
            }
        }

        let mut parsed = Vec::new();
        for t in &self.templates {
            match parse_actions(&t.text) {
                Ok(actions) => parsed.push((t, actions)),
                Err((line, message)) => out.push(t.finding(line, message)),
            }
        }
        let defines: BTreeSet<&str> = parsed
            .iter()
            .flat_map(|(_, actions)| actions.iter().filter_map(Action::defined_name))
            .collect();
        for (t, actions) in &parsed {
            let balanced = check_blocks(t, actions, &mut out);
            for a in actions {
                for name in a.included_names() {
                    if !defines.contains(name) {
                        out.push(t.finding(
                            a.line,
                            format!("`include \"{name}\"`: no `define \"{name}\"` in the chart"),
                        ));
                    }
                }
                if let Some(values) = &values {
                    for path in a.value_paths() {
                        if lookup(values, &path).is_none() {
                            out.push(t.finding(
                                a.line,
                                format!("`.Values.{}` is not in values.yaml", path.join(".")),
                            ));
                        }
                    }
                }
            }
            if balanced && is_manifest(&t.path) {
                for doc in skeleton_docs(t, actions, &mut out) {
                    check_security(t, &doc, values.as_ref(), &mut out);
                    check_rbac(t, &doc, &mut out);
                }
            }
        }
        out
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// Templates that render manifests: *.yaml / *.yml whose name does not start with `_`.
fn is_manifest(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    !name.starts_with('_') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Parses `src` as one YAML document (JSON included).
fn parse_yaml(src: &Source) -> Result<Value, Finding> {
    serde_yaml_ng::from_str(&src.text).map_err(|e| {
        let line = e.location().map_or(1, |l| l.line());
        src.finding(line, format!("not valid YAML: {e}"))
    })
}

/// The 1-based line of the first line starting with `key:`, else 1.
fn key_line(text: &str, key: &str) -> usize {
    let prefix = format!("{key}:");
    text.lines()
        .position(|l| l.starts_with(&prefix))
        .map_or(1, |n| n + 1)
}

fn check_chart_yaml(src: &Source, out: &mut Vec<Finding>) {
    let chart = match parse_yaml(src) {
        Ok(v) => v,
        Err(f) => return out.push(f),
    };
    if chart.get("apiVersion").and_then(Value::as_str) != Some("v2") {
        out.push(src.finding(
            key_line(&src.text, "apiVersion"),
            "apiVersion must be v2 (Helm 3)",
        ));
    }
    for key in ["name", "version", "appVersion"] {
        if chart
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            out.push(src.finding(
                key_line(&src.text, key),
                format!("`{key}` must be a non-empty string"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// values.yaml

/// Where each key of values.yaml is, and whether a `# --` comment sits right above it.
/// Reads block-style YAML as values files are written; keys inside sequences and block
/// scalars are not indexed (a sequence is one value).
struct KeyIndex {
    keys: BTreeMap<Vec<String>, KeyLine>,
}

#[derive(Clone, Copy)]
struct KeyLine {
    line: usize,
    documented: bool,
}

impl KeyIndex {
    fn scan(text: &str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let content = |l: &str| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        };
        let mut keys = BTreeMap::new();
        let mut stack: Vec<(usize, String)> = Vec::new();
        let mut skip_deeper_than: Option<usize> = None;
        for (n, raw) in lines.iter().enumerate() {
            if !content(raw) {
                continue;
            }
            let trimmed = raw.trim_start();
            let indent = raw.len() - trimmed.len();
            if let Some(d) = skip_deeper_than {
                if indent > d || (indent == d && trimmed.starts_with('-')) {
                    continue;
                }
                skip_deeper_than = None;
            }
            let Some((key, rest)) = split_key(trimmed) else {
                continue;
            };
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let mut path: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
            path.push(key.clone());
            keys.insert(
                path,
                KeyLine {
                    line: n + 1,
                    documented: doc_comment_above(&lines, n),
                },
            );
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                skip_deeper_than = Some(indent);
            } else if rest.is_empty() || rest.starts_with('#') {
                let next = lines[n + 1..].iter().find(|l| content(l));
                if next.is_some_and(|l| l.trim_start().starts_with('-')) {
                    skip_deeper_than = Some(indent);
                }
                stack.push((indent, key));
            }
        }
        Self { keys }
    }

    /// The line of `path`, or of its nearest indexed ancestor, or 1.
    fn line(&self, path: &[String]) -> usize {
        (0..=path.len())
            .rev()
            .find_map(|n| self.keys.get(&path[..n]))
            .map_or(1, |k| k.line)
    }
}

/// `key: rest` → (key, rest); quoted keys are unquoted.
fn split_key(line: &str) -> Option<(String, &str)> {
    if let Some(q @ ('"' | '\'')) = line.chars().next() {
        let close = line[1..].find(q)? + 1;
        let rest = line[close + 1..].strip_prefix(':')?;
        return Some((line[1..close].to_string(), rest));
    }
    let colon = line
        .char_indices()
        .find(|&(i, c)| c == ':' && line[i + 1..].chars().next().is_none_or(char::is_whitespace))?
        .0;
    let key = &line[..colon];
    (!key.is_empty() && !key.contains(' ')).then(|| (key.to_string(), &line[colon + 1..]))
}

/// Whether the comment lines directly above line `n` (no blank line between) include one
/// starting with `# --`.
fn doc_comment_above(lines: &[&str], n: usize) -> bool {
    lines[..n]
        .iter()
        .rev()
        .map(|l| l.trim_start())
        .take_while(|l| l.starts_with('#'))
        .any(|l| l.starts_with("# --"))
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Every leaf value must be documented by a `# --` comment on itself or on a parent map
/// (helm-docs semantics). Returns the documented entries (dotted path, line).
fn check_documented(
    src: &Source,
    values: &Value,
    index: &KeyIndex,
    out: &mut Vec<Finding>,
) -> Vec<(String, usize)> {
    fn walk(
        src: &Source,
        value: &Value,
        path: &mut Vec<String>,
        index: &KeyIndex,
        documented: &mut Vec<(String, usize)>,
        out: &mut Vec<Finding>,
    ) {
        if !path.is_empty() {
            match index.keys.get(path.as_slice()) {
                Some(k) if k.documented => {
                    documented.push((path.join("."), k.line));
                    return;
                }
                Some(_) => {}
                None => {
                    out.push(src.finding(
                        index.line(path),
                        format!(
                            "cannot locate `{}` in the text (the lint reads block-style YAML)",
                            path.join(".")
                        ),
                    ));
                    return;
                }
            }
        }
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                for (k, v) in m {
                    path.push(key_name(k));
                    walk(src, v, path, index, documented, out);
                    path.pop();
                }
            }
            _ if !path.is_empty() => out.push(src.finding(
                index.line(path),
                format!(
                    "`{}` is not documented: put a `# -- description` comment above it",
                    path.join(".")
                ),
            )),
            _ => {}
        }
    }
    let mut documented = Vec::new();
    walk(src, values, &mut Vec::new(), index, &mut documented, out);
    documented
}

/// Every `resources` map in values.yaml sets requests and limits.
fn check_resources(
    src: &Source,
    value: &Value,
    index: &KeyIndex,
    path: &mut Vec<String>,
    out: &mut Vec<Finding>,
) {
    let Value::Mapping(m) = value else { return };
    for (k, v) in m {
        path.push(key_name(k));
        if path.last().is_some_and(|k| k == "resources") {
            for part in ["requests", "limits"] {
                if v.get(part)
                    .and_then(Value::as_mapping)
                    .is_none_or(|m| m.is_empty())
                {
                    out.push(src.finding(
                        index.line(path),
                        format!("`{}` must set {part}", path.join(".")),
                    ));
                }
            }
        } else {
            check_resources(src, v, index, path, out);
        }
        path.pop();
    }
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, seg| v.as_mapping()?.get(seg.as_str()))
}

// ---------------------------------------------------------------------------------------
// values.schema.json: the defaults must validate against it. Only the JSON Schema
// keywords below are understood; any other keyword is reported rather than ignored.

const SCHEMA_KEYWORDS: &[&str] = &[
    "title",
    "description",
    "type",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "required",
];

fn check_schema(
    schema_src: &Source,
    values_src: &Source,
    values: &Value,
    index: &KeyIndex,
    out: &mut Vec<Finding>,
) {
    let schema = match parse_yaml(schema_src) {
        Ok(s) => s,
        Err(f) => return out.push(f),
    };
    let mut unknown = BTreeSet::new();
    schema_keywords(&schema, &mut unknown);
    for kw in unknown {
        let line = schema_src
            .text
            .lines()
            .position(|l| l.contains(&format!("\"{kw}\"")))
            .map_or(1, |n| n + 1);
        out.push(schema_src.finding(
            line,
            format!("schema keyword `{kw}` is not understood by the lint"),
        ));
    }
    let mut problems = Vec::new();
    validate(&schema, values, &mut Vec::new(), &mut problems);
    for (path, message) in problems {
        let shown = if path.is_empty() {
            "values".to_string()
        } else {
            path.join(".")
        };
        out.push(values_src.finding(
            index.line(&path),
            format!("`{shown}` does not match values.schema.json: {message}"),
        ));
    }
}

fn schema_keywords(schema: &Value, unknown: &mut BTreeSet<String>) {
    let Some(m) = schema.as_mapping() else { return };
    for (k, v) in m {
        let k = key_name(k);
        match k.as_str() {
            "properties" => v
                .as_mapping()
                .into_iter()
                .flatten()
                .for_each(|(_, s)| schema_keywords(s, unknown)),
            "additionalProperties" | "items" => schema_keywords(v, unknown),
            kw if SCHEMA_KEYWORDS.contains(&kw) => {}
            _ => {
                unknown.insert(k);
            }
        }
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match (ty, v) {
        ("object", Value::Mapping(_))
        | ("array", Value::Sequence(_))
        | ("string", Value::String(_))
        | ("boolean", Value::Bool(_))
        | ("number", Value::Number(_))
        | ("null", Value::Null) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

fn validate(
    schema: &Value,
    value: &Value,
    path: &mut Vec<String>,
    problems: &mut Vec<(Vec<String>, String)>,
) {
    let mut problem = |message: String| problems.push((path.clone(), message));
    match schema.get("type") {
        Some(Value::String(t)) if !type_matches(t, value) => problem(format!("expected {t}")),
        Some(Value::Sequence(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, value)) =>
        {
            problem(format!(
                "expected one of {}",
                ts.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        _ => {}
    }
    if let Some(Value::Sequence(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(key_name).collect();
        problem(format!("must be one of {}", allowed.join(", ")));
    }
    let number = value.as_f64();
    if let (Some(n), Some(min)) = (number, schema.get("minimum").and_then(Value::as_f64))
        && n < min
    {
        problem(format!("must be at least {min}"));
    }
    if let (Some(n), Some(max)) = (number, schema.get("maximum").and_then(Value::as_f64))
        && n > max
    {
        problem(format!("must be at most {max}"));
    }
    if let (Some(s), Some(min)) = (
        value.as_str(),
        schema.get("minLength").and_then(Value::as_u64),
    ) && (s.chars().count() as u64) < min
    {
        problem(format!("must have at least {min} characters"));
    }
    match value {
        Value::Mapping(m) => {
            for required in schema
                .get("required")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(required) {
                    problem(format!("`{required}` is required"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_mapping);
            for (k, v) in m {
                let name = key_name(k);
                let sub = properties.and_then(|p| p.get(name.as_str()));
                path.push(name);
                match (sub, schema.get("additionalProperties")) {
                    (Some(sub), _) => validate(sub, v, path, problems),
                    (None, Some(Value::Bool(false))) => problems.push((
                        path.clone(),
                        "not declared in the schema (additionalProperties: false)".to_string(),
                    )),
                    (None, Some(sub @ Value::Mapping(_))) => validate(sub, v, path, problems),
                    (None, _) => {}
                }
                path.pop();
            }
        }
        Value::Sequence(items) => {
            if let Some(sub) = schema.get("items") {
                for (n, item) in items.iter().enumerate() {
                    path.push(n.to_string());
                    validate(sub, item, path, problems);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Template actions

/// One `{{ ... }}` of a template.
#[derive(Debug)]
struct Action {
    /// 1-based line of its `{{`.
    line: usize,
    /// Byte range in the file, delimiters included.
    start: usize,
    end: usize,
    /// Its tokens; empty for a comment `{{/* ... */}}`.
    tokens: Vec<Token>,
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `if`, `range`, `with`, `define`, `block`: needs an `end`.
    Open,
    Else,
    End,
    Other,
}

impl Action {
    fn word(&self, n: usize) -> Option<&str> {
        match self.tokens.get(n) {
            Some(Token::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn kind(&self) -> Kind {
        match self.word(0) {
            Some("if" | "range" | "with" | "define" | "block") => Kind::Open,
            Some("else") => Kind::Else,
            Some("end") => Kind::End,
            _ => Kind::Other,
        }
    }

    fn defined_name(&self) -> Option<&str> {
        match (self.word(0), self.tokens.get(1)) {
            (Some("define" | "block"), Some(Token::Str(name))) => Some(name),
            _ => None,
        }
    }

    /// Names passed to `include` and `template`.
    fn included_names(&self) -> impl Iterator<Item = &str> {
        self.tokens.windows(2).filter_map(|w| match w {
            [Token::Word(f), Token::Str(name)] if f == "include" || f == "template" => {
                Some(name.as_str())
            }
            _ => None,
        })
    }

    /// The `a.b.c` of every `.Values.a.b.c` (also `$.Values...`, `.ctx.Values...`).
    fn value_paths(&self) -> Vec<Vec<String>> {
        let mut paths = Vec::new();
        for token in &self.tokens {
            let Token::Word(w) = token else { continue };
            let mut rest = w.as_str();
            while let Some(i) = rest.find(".Values.") {
                rest = &rest[i + ".Values.".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(rest.len());
                let path: Vec<String> = rest[..end]
                    .split('.')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if !path.is_empty() {
                    paths.push(path);
                }
                rest = &rest[end..];
            }
        }
        paths
    }
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos].matches('\n').count() + 1
}

/// Splits a template into its actions. Fails, with the line, on `{{` without `}}`,
/// `}}` without `{{`, unterminated strings and comments.
fn parse_actions(text: &str) -> Result<Vec<Action>, (usize, String)> {
    let mut actions = Vec::new();
    let mut pos = 0;
    loop {
        let next = text[pos..].find("{{").map(|i| pos + i);
        let gap_end = next.unwrap_or(text.len());
        if let Some(i) = text[pos..gap_end].find("}}") {
            return Err((
                line_of(text, pos + i),
                "`}}` outside an action: its `{{` is missing".to_string(),
            ));
        }
        let Some(start) = next else { break };
        let (end, tokens) =
            scan_action(text, start).map_err(|(at, message)| (line_of(text, at), message))?;
        actions.push(Action {
            line: line_of(text, start),
            start,
            end,
            tokens,
        });
        pos = end;
    }
    Ok(actions)
}

/// Scans the action opening at `start`; returns the offset after its `}}` and its tokens.
fn scan_action(text: &str, start: usize) -> Result<(usize, Vec<Token>), (usize, String)> {
    let b = text.as_bytes();
    let unclosed = || (start, "`{{` without its `}}`".to_string());
    let mut i = start + 2;
    if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(u8::is_ascii_whitespace) {
        i += 2;
    }
    let body = i + text[i..].len() - text[i..].trim_start().len();
    if text[body..].starts_with("/*") {
        let close = text[body + 2..]
            .find("*/")
            .ok_or((start, "unterminated comment `{{/*`".to_string()))?
            + body
            + 2;
        let after = text[close + 2..].trim_start_matches(' ');
        let after = after.strip_prefix('-').unwrap_or(after);
        if !after.starts_with("}}") {
            return Err((start, "a comment must end with `*/}}`".to_string()));
        }
        return Ok((text.len() - after.len() + 2, Vec::new()));
    }
    let mut tokens = Vec::new();
    loop {
        let c = *b.get(i).ok_or_else(unclosed)?;
        match c {
            b'}' if b.get(i + 1) == Some(&b'}') => return Ok((i + 2, tokens)),
            b'{' if b.get(i + 1) == Some(&b'{') => {
                return Err((
                    start,
                    format!(
                        "`{{{{` without its `}}}}`: the next `{{{{` (line {}) comes first",
                        line_of(text, i)
                    ),
                ));
            }
            b'-' if i > 0 && b[i - 1].is_ascii_whitespace() && text[i + 1..].starts_with("}}") => {
                i += 1; // the right trim marker ` -}}`
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'"' | b'\'' | b'`' => {
                let close = string_end(b, i).ok_or((i, "unterminated string".to_string()))?;
                tokens.push(Token::Str(text[i + 1..close].to_string()));
                i = close + 1;
            }
            b'(' | b')' | b'|' | b',' => {
                tokens.push(Token::Punct(char::from(c)));
                i += 1;
            }
            _ => {
                let end = (i..b.len())
                    .find(|&j| {
                        let c = b[j];
                        c.is_ascii_whitespace()
                            || b"\"'`()|,".contains(&c)
                            || text[j..].starts_with("}}")
                            || text[j..].starts_with("{{")
                    })
                    .unwrap_or(b.len());
                tokens.push(Token::Word(text[i..end].to_string()));
                i = end;
            }
        }
    }
}

/// The offset of the quote closing the string literal that opens at `open`.
fn string_end(b: &[u8], open: usize) -> Option<usize> {
    let quote = b[open];
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Every `if`/`range`/`with`/`define`/`block` has its `end`, every `else` and `end` a
/// block. Returns whether the file is balanced.
fn check_blocks(src: &Source, actions: &[Action], out: &mut Vec<Finding>) -> bool {
    let before = out.len();
    let mut open: Vec<(&str, usize)> = Vec::new();
    for a in actions {
        match a.kind() {
            Kind::Open => open.push((a.word(0).unwrap_or_default(), a.line)),
            Kind::Else => {
                if open
                    .last()
                    .is_none_or(|(k, _)| matches!(*k, "define" | "block"))
                {
                    out.push(src.finding(a.line, "`else` outside an if/range/with"));
                }
            }
            Kind::End => {
                if open.pop().is_none() {
                    out.push(src.finding(a.line, "`end` without an open block"));
                }
            }
            Kind::Other => {}
        }
    }
    for (keyword, line) in open {
        out.push(src.finding(line, format!("`{keyword}` has no matching `end`")));
    }
    out.len() == before
}

// ---------------------------------------------------------------------------------------
// The YAML skeleton of a manifest template

const MARK: char = '\u{0}';

/// The template with its actions taken out, line for line: a line holding only actions
/// becomes empty, an action among text becomes the scalar `TPL`, and the `else`
/// branches are blanked so that every condition reads as true.
fn skeleton(text: &str, actions: &[Action]) -> String {
    let newlines = |s: &str| "\n".repeat(s.matches('\n').count());
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut depth = 0usize;
    let mut skipping: Option<usize> = None;
    for a in actions {
        let gap = &text[pos..a.start];
        if skipping.is_some() {
            out.push_str(&newlines(gap));
        } else {
            out.push_str(gap);
        }
        let mut emit = skipping.is_none();
        match a.kind() {
            Kind::Open => depth += 1,
            Kind::Else if skipping.is_none() => skipping = Some(depth),
            Kind::End => {
                if skipping == Some(depth) {
                    skipping = None;
                    emit = true;
                }
                depth = depth.saturating_sub(1);
            }
            Kind::Else | Kind::Other => {}
        }
        if emit {
            out.push(MARK);
        }
        out.push_str(&newlines(&text[a.start..a.end]));
        pos = a.end;
    }
    out.push_str(&text[pos..]);
    out.split('\n')
        .map(|line| {
            if !line.contains(MARK) {
                line.to_string()
            } else if line.chars().all(|c| c == MARK || c.is_whitespace()) {
                String::new()
            } else {
                line.replace(MARK, "TPL")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One YAML document of a template's skeleton.
struct Doc {
    /// 1-based line of its first content line in the template.
    line: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Parses the skeleton's documents; each must be a mapping with `apiVersion` and `kind`.
fn skeleton_docs(src: &Source, actions: &[Action], out: &mut Vec<Finding>) -> Vec<Doc> {
    let skeleton = skeleton(&src.text, actions);
    let lines: Vec<&str> = skeleton.split('\n').collect();
    let mut docs = Vec::new();
    let mut first = 0;
    for n in 0..=lines.len() {
        let boundary = n == lines.len() || lines[n].trim_end() == "---";
        if !boundary {
            continue;
        }
        let chunk = lines[first..n].join("\n");
        let offset = first;
        first = n + 1;
        let content_line = lines[offset..n]
            .iter()
            .position(|l| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with('#')
            })
            .map(|p| offset + p + 1);
        let Some(line) = content_line else { continue };
        let value = match serde_yaml_ng::from_str::<Value>(&chunk) {
            Ok(v) => v,
            Err(e) => {
                let at = e.location().map_or(1, |l| l.line());
                out.push(src.finding(
                    offset + at,
                    format!("the YAML around the template actions does not parse: {e}"),
                ));
                continue;
            }
        };
        if !value.is_mapping() {
            out.push(src.finding(line, "a manifest must be a YAML mapping"));
            continue;
        }
        for key in ["apiVersion", "kind"] {
            if value.get(key).is_none_or(Value::is_null) {
                out.push(src.finding(line, format!("manifest without `{key}`")));
            }
        }
        docs.push(Doc { line, value });
    }
    docs
}

fn at<'a>(value: Option<&'a Value>, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value?, |v, key| v.get(key))
}

/// The values map a template renders with `toYaml .Values.<path>` in place of a
/// skeleton's empty key: the chart's defaults, which the hardening checks then read.
fn rendered_from_values<'a>(
    src: &Source,
    values: Option<&'a Value>,
    key: &str,
) -> Option<&'a Value> {
    let marker = format!(".{key} }}}}");
    let line = src
        .text
        .lines()
        .find(|l| l.contains("{{- with .Values.") && l.trim_end().ends_with(&marker))?;
    let path = line
        .split("{{- with .Values.")
        .nth(1)?
        .trim_end()
        .strip_suffix(" }}")?;
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    lookup(values?, &path)
}

/// Pod and container hardening in every Deployment; a security context taken from
/// values is checked as its default in values.yaml.
fn check_security(src: &Source, doc: &Doc, values: Option<&Value>, out: &mut Vec<Finding>) {
    if doc.kind() != "Deployment" {
        return;
    }
    let pod = at(Some(&doc.value), &["spec", "template", "spec"]);
    let pod_sc = at(pod, &["securityContext"])
        .filter(|v| !v.is_null())
        .or_else(|| rendered_from_values(src, values, "securityContext"));
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| at(pod, &[*k]).and_then(Value::as_sequence))
        .flatten()
        .collect();
    if containers.is_empty() {
        out.push(src.finding(doc.line, "Deployment without spec.template.spec.containers"));
    }
    for c in containers {
        let name = at(Some(c), &["name"])
            .and_then(Value::as_str)
            .unwrap_or("?");
        let sc = at(Some(c), &["securityContext"])
            .filter(|v| !v.is_null())
            .or_else(|| rendered_from_values(src, values, "containerSecurityContext"));
        let either = |path: &[&str]| at(sc, path).or_else(|| at(pod_sc, path));
        let mut require = |ok: bool, what: &str| {
            if !ok {
                out.push(src.finding(
                    doc.line,
                    format!("Deployment container `{name}` lacks {what}"),
                ));
            }
        };
        require(
            either(&["runAsNonRoot"]) == Some(&Value::Bool(true)),
            "runAsNonRoot: true",
        );
        require(
            at(sc, &["readOnlyRootFilesystem"]) == Some(&Value::Bool(true)),
            "securityContext.readOnlyRootFilesystem: true",
        );
        require(
            at(sc, &["allowPrivilegeEscalation"]) == Some(&Value::Bool(false)),
            "securityContext.allowPrivilegeEscalation: false",
        );
        require(
            at(sc, &["capabilities", "drop"])
                .and_then(Value::as_sequence)
                .is_some_and(|d| d.iter().any(|c| c.as_str() == Some("ALL"))),
            "securityContext.capabilities.drop: [ALL]",
        );
        require(
            either(&["seccompProfile", "type"]).and_then(Value::as_str) == Some("RuntimeDefault"),
            "seccompProfile.type: RuntimeDefault",
        );
        require(
            c.as_mapping().is_some_and(|m| m.contains_key("resources")),
            "resources",
        );
    }
}

/// No `*` in Roles and ClusterRoles; Secrets read-only.
fn check_rbac(src: &Source, doc: &Doc, out: &mut Vec<Finding>) {
    if !matches!(doc.kind(), "Role" | "ClusterRole") {
        return;
    }
    let rules = at(Some(&doc.value), &["rules"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten();
    for (n, rule) in rules.enumerate() {
        let mut problem =
            |message: String| out.push(src.finding(doc.line, format!("rule {}: {message}", n + 1)));
        let list = |field: &str| -> Vec<&str> {
            at(Some(rule), &[field])
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or("TPL"))
                .collect()
        };
        for field in ["apiGroups", "resources", "verbs"] {
            let items = list(field);
            if items.contains(&"*") {
                problem(format!("`*` in {field}: grant what is needed by name"));
            }
            if items.iter().any(|i| i.contains("TPL")) {
                problem(format!(
                    "{field} is templated; write it literally so it can be checked"
                ));
            }
        }
        // A Lease is elected on by name: reading or renewing another one (another
        // controller's) is never needed. Only create cannot be narrowed by name.
        let leases = list("resources").contains(&"leases")
            && list("apiGroups").contains(&"coordination.k8s.io");
        let unnamed = at(Some(rule), &["resourceNames"])
            .and_then(Value::as_sequence)
            .is_none_or(|names| names.is_empty());
        if leases && unnamed && list("verbs").iter().any(|v| *v != "create") {
            problem("leases other than create must name the Lease in resourceNames".to_string());
        }
        let secrets = list("resources")
            .iter()
            .any(|r| *r == "secrets" || r.starts_with("secrets/"));
        if secrets && list("apiGroups").contains(&"") {
            let writes: Vec<&str> = list("verbs")
                .into_iter()
                .filter(|v| !matches!(*v, "get" | "list" | "watch"))
                .collect();
            if !writes.is_empty() {
                problem(format!(
                    "secrets may only be read (get, list, watch), not {}",
                    writes.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART_YAML: &str = "apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: \"1.0\"\n";

    const VALUES: &str = "\
# -- Replicas.
replicaCount: 2
image:
  # -- Image repository.
  repository: example/demo
# -- Container resources.
resources:
  requests:
    cpu: 10m
  limits:
    memory: 64Mi
";

    const DOCS_MD: &str = "`replicaCount` `image.repository` `resources`";

    const DEPLOYMENT: &str = r#"{{- if gt (int .Values.replicaCount) 0 }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "demo.name" . }}
  labels:
    {{- include "demo.name" . | nindent 4 }}
spec:
  replicas: {{ .Values.replicaCount }}
  template:
    spec:
      securityContext:
        runAsNonRoot: true
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: app
          image: "{{ .Values.image.repository }}:{{ .Chart.AppVersion }}"
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities:
              drop: [ALL]
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
{{- end }}
"#;

    const HELPERS: &str = "{{- define \"demo.name\" -}}\ndemo\n{{- end }}\n";

    fn source(path: &str, text: &str) -> Source {
        Source {
            path: path.to_string(),
            text: text.to_string(),
        }
    }

    fn chart(templates: &[(&str, &str)]) -> Chart {
        let mut all = vec![source("templates/_helpers.tpl", HELPERS)];
        all.extend(
            templates
                .iter()
                .map(|(p, t)| source(&format!("templates/{p}"), t)),
        );
        Chart {
            chart_yaml: source("Chart.yaml", CHART_YAML),
            values: source("values.yaml", VALUES),
            schema: None,
            templates: all,
            docs: Some(source(DOCS, DOCS_MD)),
        }
    }

    /// The findings of `chart`, as `file:line: message`.
    fn lint(chart: &Chart) -> Vec<String> {
        chart.check().iter().map(ToString::to_string).collect()
    }

    #[track_caller]
    fn assert_one(findings: &[String], location: &str, text: &str) {
        assert!(
            findings.len() == 1 && findings[0].starts_with(location) && findings[0].contains(text),
            "expected one finding at {location} containing {text:?}, got {findings:#?}"
        );
    }

    #[test]
    fn a_sound_chart_passes() {
        assert_eq!(
            lint(&chart(&[("deployment.yaml", DEPLOYMENT)])),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_certwright_chart_passes() -> Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has a parent")?;
        let chart = Chart::load(root)?;
        assert_eq!(
            chart
                .check()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            Vec::<String>::new()
        );
        assert!(chart.templates.len() > 10 && chart.schema.is_some());
        Ok(())
    }

    #[test]
    fn chart_yaml_needs_v2_and_its_fields() {
        let mut c = chart(&[]);
        c.chart_yaml = source("Chart.yaml", "apiVersion: v1\nname: demo\nversion: 0.1.0\n");
        let findings = lint(&c);
        assert_eq!(findings.len(), 2, "{findings:#?}");
        assert!(findings[0].starts_with("Chart.yaml:1: apiVersion must be v2"));
        assert!(findings[1].starts_with("Chart.yaml:1: `appVersion`"));
        c.chart_yaml = source("Chart.yaml", "apiVersion: v2\nname: [unclosed\n");
        assert_one(&lint(&c), "Chart.yaml:", "not valid YAML");
    }

    #[test]
    fn values_must_parse() {
        let mut c = chart(&[]);
        c.values = source("values.yaml", "# -- A.\na: 1\nb: [\n");
        assert_one(&lint(&c), "values.yaml:", "not valid YAML");
    }

    #[test]
    fn every_value_is_documented() {
        let mut c = chart(&[]);
        c.values = source(
            "values.yaml",
            &VALUES.replace("  # -- Image repository.\n", ""),
        );
        assert_one(
            &lint(&c),
            "values.yaml:4:",
            "`image.repository` is not documented",
        );
        // A comment that is not a `# --` one does not count; a blank line breaks the block.
        c.values = source(
            "values.yaml",
            &VALUES.replace("# -- Replicas.\n", "# -- Replicas.\n\n# a note\n"),
        );
        assert_one(
            &lint(&c),
            "values.yaml:4:",
            "`replicaCount` is not documented",
        );
    }

    #[test]
    fn every_value_is_in_the_docs_table() {
        let mut c = chart(&[]);
        c.docs = Some(source(DOCS, "`replicaCount` `resources`"));
        assert_one(
            &lint(&c),
            "values.yaml:5:",
            "`image.repository` is missing from the values table",
        );
    }

    #[test]
    fn resources_set_requests_and_limits() {
        let mut c = chart(&[]);
        c.values = source(
            "values.yaml",
            &VALUES.replace("  limits:\n    memory: 64Mi\n", ""),
        );
        assert_one(&lint(&c), "values.yaml:7:", "`resources` must set limits");
    }

    #[test]
    fn values_references_must_exist() {
        let t = DEPLOYMENT.replace(".Values.image.repository", ".Values.image.repo");
        assert_one(
            &lint(&chart(&[("deployment.yaml", &t)])),
            "templates/deployment.yaml:18:",
            "`.Values.image.repo` is not in values.yaml",
        );
    }

    #[test]
    fn actions_must_be_closed() {
        let t = DEPLOYMENT.replace("{{ .Values.replicaCount }}", "{{ .Values.replicaCount }");
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:9:",
            "`{{` without its `}}`",
        );
        let t = DEPLOYMENT.replace("{{ .Values.replicaCount }}", ".Values.replicaCount }}");
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:9:",
            "`}}` outside an action",
        );
        let t = format!("{DEPLOYMENT}{{{{/* a comment never closed\n");
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:27:",
            "unterminated comment",
        );
    }

    #[test]
    fn strings_inside_actions_may_hold_braces() -> Result<(), (usize, String)> {
        let actions = parse_actions("a: {{`{{ $labels.x }}`}} b: {{ \"}}\" | quote -}}\n")?;
        assert_eq!(actions.len(), 2);
        assert_eq!(
            actions[0].tokens,
            vec![Token::Str("{{ $labels.x }}".to_string())]
        );
        assert_eq!(
            actions[1].tokens,
            vec![
                Token::Str("}}".to_string()),
                Token::Punct('|'),
                Token::Word("quote".to_string())
            ]
        );
        Ok(())
    }

    #[test]
    fn blocks_must_be_balanced() {
        let t = DEPLOYMENT.replace("{{- end }}\n", "");
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:1:",
            "`if` has no matching `end`",
        );
        let t = format!("{DEPLOYMENT}{{{{- end }}}}\n");
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:27:",
            "`end` without an open block",
        );
        let t = format!("{{{{- else }}}}\n{DEPLOYMENT}");
        let findings = lint(&chart(&[("d.yaml", &t)]));
        assert!(
            findings[0].starts_with("templates/d.yaml:1: `else` outside"),
            "{findings:#?}"
        );
    }

    #[test]
    fn includes_must_be_defined() {
        let t = DEPLOYMENT.replace("include \"demo.name\" . }}", "include \"demo.nmae\" . }}");
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:5:",
            "no `define \"demo.nmae\"`",
        );
    }

    #[test]
    fn the_skeleton_must_parse_with_api_version_and_kind() {
        // Bad indentation, reported at its line.
        let t = DEPLOYMENT.replace("  replicas: {{", "\treplicas: {{");
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:9:",
            "does not parse",
        );
        // A second document without kind.
        let t = format!(
            "{DEPLOYMENT}---\napiVersion: v1\nmetadata:\n  name: {{{{ .Release.Name }}}}\n"
        );
        assert_one(
            &lint(&chart(&[("d.yaml", &t)])),
            "templates/d.yaml:28:",
            "manifest without `kind`",
        );
        // Both branches of an if/else setting the same key are not a duplicate key.
        let t = DEPLOYMENT.replace(
            "  replicas: {{ .Values.replicaCount }}\n",
            "  {{- if true }}\n  replicas: 1\n  {{- else }}\n  replicas: 2\n  {{- end }}\n",
        );
        assert_eq!(lint(&chart(&[("d.yaml", &t)])), Vec::<String>::new());
    }

    #[test]
    fn skeleton_drops_action_lines_and_keeps_line_numbers() -> Result<(), (usize, String)> {
        let text = "a:\n  {{- toYaml . | nindent 2 }}\nb: {{ .x }}-y\n{{- if .c }}\nc: 1\n{{- else }}\nc: 2\n{{- end }}\n";
        let actions = parse_actions(text)?;
        assert_eq!(skeleton(text, &actions), "a:\n\nb: TPL-y\n\nc: 1\n\n\n\n");
        Ok(())
    }

    #[test]
    fn deployments_must_be_hardened() {
        for (remove, missing) in [
            ("        runAsNonRoot: true\n", "runAsNonRoot"),
            (
                "            readOnlyRootFilesystem: true\n",
                "readOnlyRootFilesystem",
            ),
            (
                "            allowPrivilegeEscalation: false\n",
                "allowPrivilegeEscalation",
            ),
            ("              drop: [ALL]\n", "capabilities.drop"),
            ("          type: RuntimeDefault\n", "seccompProfile"),
            (
                "          resources:\n            {{- toYaml .Values.resources | nindent 12 }}\n",
                "lacks resources",
            ),
        ] {
            assert!(DEPLOYMENT.contains(remove), "{remove}");
            let t = DEPLOYMENT.replace(remove, "");
            assert_one(
                &lint(&chart(&[("d.yaml", &t)])),
                "templates/d.yaml:2:",
                missing,
            );
        }
    }

    const ROLE: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ include "demo.name" . }}
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["cert-manager.io"]
    resources: ["certificaterequests"]
    verbs: ["get", "patch"]
"#;

    #[test]
    fn lease_rules_name_their_lease() {
        let unnamed = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: le
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update"]
"#;
        assert_one(
            &lint(&chart(&[("le.yaml", unnamed)])),
            "templates/le.yaml:",
            "resourceNames",
        );
        let named = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: le
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["create"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    resourceNames: [{{ .Values.image.repository | quote }}]
    verbs: ["get", "update"]
"#;
        assert_eq!(lint(&chart(&[("le.yaml", named)])), Vec::<String>::new());
    }

    #[test]
    fn rbac_has_no_wildcards_and_reads_secrets_only() {
        assert_eq!(lint(&chart(&[("rbac.yaml", ROLE)])), Vec::<String>::new());
        let t = ROLE.replace(r#"["get", "patch"]"#, r#"["*"]"#);
        assert_one(
            &lint(&chart(&[("rbac.yaml", &t)])),
            "templates/rbac.yaml:1:",
            "rule 2: `*` in verbs",
        );
        let t = ROLE.replace(r#"["certificaterequests"]"#, r#"["*"]"#);
        assert_one(
            &lint(&chart(&[("rbac.yaml", &t)])),
            "templates/rbac.yaml:1:",
            "rule 2: `*` in resources",
        );
        let t = ROLE.replace(r#""list", "watch""#, r#""list", "update""#);
        assert_one(
            &lint(&chart(&[("rbac.yaml", &t)])),
            "templates/rbac.yaml:1:",
            "rule 1: secrets may only be read",
        );
        let t = ROLE.replace(r#""patch""#, r#"{{ .Values.image.repository | quote }}"#);
        assert_one(
            &lint(&chart(&[("rbac.yaml", &t)])),
            "templates/rbac.yaml:1:",
            "verbs is templated",
        );
    }

    const SCHEMA: &str = r#"{
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "replicaCount": {"type": "integer", "minimum": 1},
    "image": {"type": "object", "properties": {"repository": {"type": "string", "minLength": 1}}},
    "resources": {"type": "object"}
  }
}"#;

    #[test]
    fn defaults_must_match_the_schema() {
        let mut c = chart(&[]);
        c.schema = Some(source("values.schema.json", SCHEMA));
        assert_eq!(lint(&c), Vec::<String>::new());
        c.values = source(
            "values.yaml",
            &VALUES.replace("replicaCount: 2", "replicaCount: \"2\""),
        );
        assert_one(
            &lint(&c),
            "values.yaml:2:",
            "`replicaCount` does not match values.schema.json: expected integer",
        );
        c.values = source("values.yaml", &format!("{VALUES}# -- New.\nextra: 1\n"));
        c.docs = Some(source(DOCS, &format!("{DOCS_MD} `extra`")));
        assert_one(
            &lint(&c),
            "values.yaml:13:",
            "`extra` does not match values.schema.json: not declared",
        );
        c.values = source("values.yaml", VALUES);
        c.schema = Some(source(
            "values.schema.json",
            &SCHEMA.replace("minLength", "pattern"),
        ));
        assert_one(
            &lint(&c),
            "values.schema.json:6:",
            "keyword `pattern` is not understood",
        );
    }
}
