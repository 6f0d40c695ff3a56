//! `certwright policy test`: the policy approver's decision on a request, from files,
//! with no cluster, so a team can check a request before committing it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use certwright_api::{
    CertificateRequest, CertificateRequestSpec, IssuancePolicySpec, IssuerRef, KeyUsage,
};
use certwright_policy::{Evaluation, Policy, PolicySet, RequestFacts, Verdict};
use certwright_x509::Csr;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::cli::{Failure, Output, exit, read_bounded, read_text};

/// `certwright policy ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Evaluate a CertificateRequest (or a CSR with flags) against IssuancePolicy files
    /// and print the decision with every violation.
    Test(TestArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EvaluationArg {
    /// Every applicable policy must allow the request.
    All,
    /// One applicable policy is enough (the requester is taken to may `use` each).
    Any,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TestArgs {
    /// IssuancePolicy manifests (repeatable; a file may hold several documents separated
    /// by `---`). approver-policy CertificateRequestPolicies are read too.
    #[arg(long = "policy", required = true)]
    policies: Vec<PathBuf>,
    /// A CertificateRequest manifest (YAML or JSON), or a PKCS#10 CSR (PEM or DER) with
    /// the flags below.
    #[arg(long)]
    request: PathBuf,
    /// How applicable policies combine, as the controller's `--policy-evaluation`.
    #[arg(long, value_enum, default_value_t = EvaluationArg::All)]
    evaluation: EvaluationArg,
    /// The request's namespace (a CertificateRequest's own wins).
    #[arg(long)]
    namespace: Option<String>,
    /// A label of the request's namespace, `key=value` (repeatable), for `matchLabels`.
    #[arg(long = "namespace-label")]
    namespace_labels: Vec<String>,
    /// For a CSR: the issuer's name.
    #[arg(long)]
    issuer_name: Option<String>,
    /// For a CSR: the issuer's kind.
    #[arg(long, default_value = "Issuer")]
    issuer_kind: String,
    /// For a CSR: the issuer's group.
    #[arg(long, default_value = "cert-manager.io")]
    issuer_group: String,
    /// For a CSR: the requested lifetime, a Go duration.
    #[arg(long)]
    duration: Option<String>,
    /// For a CSR: a requested usage in cert-manager's spelling (repeatable).
    #[arg(long = "usage")]
    usages: Vec<String>,
    /// For a CSR: request a CA certificate.
    #[arg(long)]
    is_ca: bool,
    /// An annotation of the request, `key=value` (repeatable), e.g. the change ticket.
    #[arg(long = "annotation")]
    annotations: Vec<String>,
}

/// Runs a policy command.
pub(crate) fn run(command: &PolicyCommand, output: Output) -> Result<u8, Failure> {
    match command {
        PolicyCommand::Test(args) => test(args, output),
    }
}

fn key_value(flag: &str, raw: &str) -> Result<(String, String), Failure> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| Failure::input(anyhow!("--{flag} {raw:?}: expected key=value")))
}

fn test(args: &TestArgs, output: Output) -> Result<u8, Failure> {
    let mut policies = Vec::new();
    for path in &args.policies {
        policies.extend(load_policies(path)?);
    }
    let set = PolicySet::new(policies.into_iter().map(Arc::new));
    let request = load_request(args)?;
    let facts = RequestFacts::from_request(&request)
        .with_context(|| format!("{}", args.request.display()))
        .map_err(Failure::input)?;
    let labels: BTreeMap<String, String> = args
        .namespace_labels
        .iter()
        .map(|raw| key_value("namespace-label", raw))
        .collect::<Result<_, _>>()?;
    let evaluation = match args.evaluation {
        EvaluationArg::All => Evaluation::All,
        EvaluationArg::Any => Evaluation::Any,
    };
    let verdict = set.evaluate(&facts, Some(&labels), evaluation);
    let (decision, code, message, violations) = match &verdict {
        Verdict::Unmatched => (
            "denied",
            exit::PKI_FAILED,
            format!(
                "no IssuancePolicy covers namespace {} and issuer {} (the controller denies it, or leaves it with --policy-unmatched=ignore)",
                facts.namespace,
                facts.issuer.describe()
            ),
            Vec::new(),
        ),
        Verdict::Denied { violations } => (
            "denied",
            exit::PKI_FAILED,
            format!("denied: {}", Verdict::denial_message(violations)),
            violations.clone(),
        ),
        Verdict::Approved { policies } => (
            "approved",
            0,
            format!("approved by {}", policies.join(", ")),
            Vec::new(),
        ),
        Verdict::Manual {
            policies,
            approvers,
        } => (
            "manual",
            exit::PENDING,
            format!(
                "allowed; waits for a person ({}) as {} asks",
                if approvers.is_empty() {
                    "anyone who may approve its signer".to_string()
                } else {
                    approvers.join("; ")
                },
                policies.join(", ")
            ),
            Vec::new(),
        ),
        // As the controller: a ticket a policy refuses denies under all; under any, only
        // when no policy accepts the ticket named.
        Verdict::Ticket { checks, all, .. }
            if (*all
                || !checks
                    .iter()
                    .any(|c| matches!(c.config.ticket_of(&facts.annotations), Ok(Some(_)))))
                && let Some((policy, why)) = checks.iter().find_map(|c| {
                    c.config.ticket_of(&facts.annotations).err().map(|why| {
                        (
                            c.policy.clone(),
                            format!("metadata.annotations[{}] {why}", c.config.annotation),
                        )
                    })
                }) =>
        {
            (
                "denied",
                exit::PKI_FAILED,
                format!("denied: {policy}: {why}"),
                Vec::new(),
            )
        }
        Verdict::Ticket { checks, .. } => {
            let wanted: Vec<String> = checks
                .iter()
                .map(|c| {
                    let named = c
                        .config
                        .ticket_of(&facts.annotations)
                        .ok()
                        .flatten()
                        .map_or_else(|| "none named".to_string(), str::to_string);
                    format!("{} (annotation {}: {named})", c.policy, c.config.annotation)
                })
                .collect();
            (
                "ticket",
                exit::PENDING,
                format!(
                    "allowed; approved once the ticket system approves the change ticket of {}",
                    wanted.join(", ")
                ),
                Vec::new(),
            )
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "ok": true,
                "decision": decision,
                "message": message,
                "violations": violations.iter().map(|v| json!({
                    "policy": v.policy, "field": v.field, "detail": v.detail,
                })).collect::<Vec<_>>(),
                "exitCode": code,
            })
        ),
        Output::Text => {
            println!("{}/{}: {decision}", facts.namespace, facts.name);
            if violations.is_empty() {
                println!("  {message}");
            }
            for v in &violations {
                println!("  {v}");
            }
        }
    }
    Ok(code)
}

/// Reads IssuancePolicies (and approver-policy CertificateRequestPolicies, whose
/// `allowed`, `constraints` and `selector` mean the same) from a manifest file.
fn load_policies(path: &Path) -> Result<Vec<Policy>, Failure> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc = <serde_json::Value as serde::Deserialize>::deserialize(document)
            .with_context(|| format!("{}: not YAML or JSON", path.display()))
            .map_err(Failure::input)?;
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        let name = doc
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("(unnamed)")
            .to_string();
        if kind.is_empty() {
            return Err(Failure::input(anyhow!(
                "{}: a document without kind; expected IssuancePolicy",
                path.display()
            )));
        }
        if !matches!(kind, "IssuancePolicy" | "CertificateRequestPolicy") {
            // A file that ships a policy with what it needs (a Secret) is read as is.
            eprintln!("certwright: {}: skipping {kind} {name}", path.display());
            continue;
        }
        if doc.pointer("/spec/plugins").is_some() {
            return Err(Failure::input(anyhow!(
                "{}: {name}: spec.plugins (approver-policy's plugins) is not supported; the policy would allow more than its author meant",
                path.display()
            )));
        }
        let spec: IssuancePolicySpec =
            serde_json::from_value(doc.get("spec").cloned().unwrap_or(json!({})))
                .with_context(|| format!("{}: {name}: spec", path.display()))
                .map_err(Failure::input)?;
        let problems = certwright_policy::validate(&spec);
        if !problems.is_empty() {
            return Err(Failure::input(anyhow!(
                "{}: {name} is not a valid IssuancePolicy: {}",
                path.display(),
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        out.push(Policy::compile(&name, &spec));
    }
    Ok(out)
}

/// Reads the request: a CertificateRequest manifest, or a CSR completed by the flags.
fn load_request(args: &TestArgs) -> Result<CertificateRequest, Failure> {
    let bytes = read_bounded(&args.request)?;
    let mut annotations: BTreeMap<String, String> = args
        .annotations
        .iter()
        .map(|raw| key_value("annotation", raw))
        .collect::<Result<_, _>>()?;
    if let Ok(csr) = Csr::parse(&bytes) {
        let usages = args
            .usages
            .iter()
            .map(|u| {
                serde_json::from_value::<KeyUsage>(json!(u))
                    .ok()
                    .filter(|k| *k != KeyUsage::Unknown)
                    .ok_or_else(|| {
                        Failure::input(anyhow!("--usage {u:?}: not a usage cert-manager knows"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut request = CertificateRequest::new(
            "(from a CSR)",
            CertificateRequestSpec {
                request: csr.to_pem().into_bytes().into(),
                issuer_ref: IssuerRef {
                    name: args.issuer_name.clone().ok_or_else(|| {
                        Failure::input(anyhow!("--issuer-name is required with a CSR"))
                    })?,
                    kind: args.issuer_kind.clone(),
                    group: args.issuer_group.clone(),
                },
                duration: args.duration.clone(),
                is_ca: args.is_ca,
                usages,
                ..Default::default()
            },
        );
        request.metadata.namespace = Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
        );
        request.metadata.annotations = Some(annotations);
        return Ok(request);
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        Failure::input(anyhow!(
            "{}: neither a CSR nor a CertificateRequest manifest",
            args.request.display()
        ))
    })?;
    let mut request: CertificateRequest = serde_yaml_ng::from_str(&text)
        .with_context(|| {
            format!(
                "{}: neither a CSR nor a CertificateRequest manifest",
                args.request.display()
            )
        })
        .map_err(Failure::input)?;
    if request.metadata.namespace.is_none() {
        request.metadata.namespace = Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
        );
    }
    let mut existing = request.metadata.annotations.take().unwrap_or_default();
    existing.append(&mut annotations);
    request.metadata.annotations = Some(existing);
    Ok(request)
}
