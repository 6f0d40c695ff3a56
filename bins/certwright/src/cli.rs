//! Flags, file loading, the commands and their output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use certwright_api::{IssuerSpec, parse_duration};
use certwright_backends::{BuildError, SecretData, build_backend};
use certwright_pki::{Backend, Error as PkiError, Outcome, Requester, SignRequest};
use certwright_x509::{Certificate, Csr};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

/// Largest issuer or Secret file read, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Exit codes, documented in docs/cli.md.
pub(crate) mod exit {
    /// The PKI answered with a failure: rejected, unauthorized, unreachable, garbage.
    pub(crate) const PKI_FAILED: u8 = 1;
    /// The input is wrong: flags, files, issuer spec, Secrets, CSR.
    pub(crate) const BAD_INPUT: u8 = 2;
    /// The CA holds the request for approval; the pending id is printed.
    pub(crate) const PENDING: u8 = 3;
}

#[derive(Parser, Debug)]
#[command(
    name = "certwright",
    version,
    about = "Check certwright issuers against their PKI, sign CSRs, inspect CSRs and certificates, test requests against IssuancePolicies."
)]
struct Cli {
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Can this issuer configuration reach and authenticate to its PKI?
    Check(IssuerArgs),
    /// Sign a CSR through the issuer's PKI and print the chain.
    Sign(SignArgs),
    /// Ask the PKI again about a request it holds for approval (the pending id `sign`
    /// printed) and print the chain once it is issued; nothing is submitted again.
    Poll(PollArgs),
    /// Show what a CSR or certificate (PEM or DER) contains.
    Inspect {
        /// The file to inspect.
        file: PathBuf,
    },
    /// Work with IssuancePolicies.
    Policy {
        #[command(subcommand)]
        command: crate::policy::PolicyCommand,
    },
}

#[derive(clap::Args, Debug)]
struct IssuerArgs {
    /// An InternalIssuer or InternalClusterIssuer manifest (YAML or JSON).
    #[arg(long)]
    issuer: PathBuf,
    /// Secret manifests the issuer references (repeatable; a file may hold several
    /// documents separated by `---`).
    #[arg(long = "secret")]
    secrets: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct SignArgs {
    #[command(flatten)]
    issuer: IssuerArgs,
    /// The PKCS#10 CSR, PEM or DER.
    #[arg(long)]
    csr: PathBuf,
    /// Requested lifetime as a Go duration, e.g. 720h; the issuer's default otherwise.
    #[arg(long)]
    duration: Option<String>,
    /// Request a CA certificate.
    #[arg(long)]
    is_ca: bool,
    /// Requested usage in cert-manager's spelling (repeatable), e.g. "server auth".
    #[arg(long = "usage")]
    usages: Vec<String>,
    /// Template or profile overriding the issuer's.
    #[arg(long)]
    template: Option<String>,
}

#[derive(clap::Args, Debug)]
struct PollArgs {
    #[command(flatten)]
    issuer: IssuerArgs,
    /// The PKCS#10 CSR that was signed, PEM or DER: the issued certificate is checked
    /// against its key.
    #[arg(long)]
    csr: PathBuf,
    /// The pending id `certwright sign` printed.
    #[arg(long)]
    id: String,
    /// The template or profile the request named, if it overrode the issuer's.
    #[arg(long)]
    template: Option<String>,
}

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    pub(crate) fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: exit::BAD_INPUT,
            error: error.into(),
        }
    }
}

impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Self {
        let code = match &e {
            // The adapter refused what it was given: a bad key or caBundle is input.
            BuildError::Backend(pki) if !pki.is_issuer_fault() => exit::PKI_FAILED,
            _ => exit::BAD_INPUT,
        };
        Failure {
            code,
            error: e.into(),
        }
    }
}

fn pki_failure(e: PkiError) -> Failure {
    Failure {
        code: exit::PKI_FAILED,
        error: anyhow!(e),
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli.output;
    let result = match cli.command {
        Command::Inspect { file } => inspect(&file, output),
        Command::Policy { command } => crate::policy::run(&command, output),
        Command::Check(args) => runtime().and_then(|rt| rt.block_on(check(&args, output))),
        Command::Sign(args) => runtime().and_then(|rt| rt.block_on(sign(&args, output))),
        Command::Poll(args) => runtime().and_then(|rt| rt.block_on(poll(&args, output))),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            if output == Output::Json {
                println!(
                    "{}",
                    json!({"ok": false, "error": format!("{error:#}"), "exitCode": code})
                );
            } else {
                eprintln!("certwright: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: exit::PKI_FAILED,
            error: anyhow!("starting the async runtime: {e}"),
        })
}

/// Reads a whole file, at most [`MAX_FILE_BYTES`]: through a cap on the read itself, so
/// that a FIFO, a device (`/dev/zero`) or a process substitution, whose size the file
/// system does not know, cannot make the CLI read without end.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, Failure> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(Failure::input)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(Failure::input)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Failure::input(anyhow!(
            "{} holds more than {MAX_FILE_BYTES} bytes, the limit",
            path.display()
        )));
    }
    Ok(bytes)
}

pub(crate) fn read_text(path: &Path) -> Result<String, Failure> {
    String::from_utf8(read_bounded(path)?)
        .map_err(|_| Failure::input(anyhow!("{} is not UTF-8 text", path.display())))
}

/// Reads an InternalIssuer or InternalClusterIssuer manifest.
fn load_issuer(path: &Path) -> Result<(String, IssuerSpec), Failure> {
    let text = read_text(path)?;
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not YAML or JSON", path.display()))
        .map_err(Failure::input)?;
    let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    let api_version = doc
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    if !matches!(kind, "InternalIssuer" | "InternalClusterIssuer")
        || api_version != format!("{}/{}", certwright_api::GROUP, certwright_api::VERSION)
    {
        return Err(Failure::input(anyhow!(
            "{}: expected kind InternalIssuer or InternalClusterIssuer in {}/{}, found {kind:?} in {api_version:?}",
            path.display(),
            certwright_api::GROUP,
            certwright_api::VERSION
        )));
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("(unnamed)")
        .to_string();
    let spec = doc.get("spec").cloned().unwrap_or(json!({}));
    let spec: IssuerSpec = serde_json::from_value(spec)
        .with_context(|| format!("{}: spec", path.display()))
        .map_err(Failure::input)?;
    Ok((format!("{kind}/{name}"), spec))
}

/// Reads Secret manifests: `data` (base64) and `stringData`, as the API server merges them.
fn load_secrets(paths: &[PathBuf]) -> Result<BTreeMap<String, SecretData>, Failure> {
    let mut secrets = BTreeMap::new();
    for path in paths {
        let text = read_text(path)?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <serde_json::Value as serde::Deserialize>::deserialize(document)
                .with_context(|| format!("{}: not YAML or JSON", path.display()))
                .map_err(Failure::input)?;
            if value.is_null() {
                continue;
            }
            let secret: Secret = serde_json::from_value(value)
                .with_context(|| format!("{}: not a Secret", path.display()))
                .map_err(Failure::input)?;
            let name = secret.metadata.name.clone().ok_or_else(|| {
                Failure::input(anyhow!(
                    "{}: a Secret without metadata.name",
                    path.display()
                ))
            })?;
            let mut data: SecretData = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            secrets.insert(name, data);
        }
    }
    Ok(secrets)
}

fn build(args: &IssuerArgs) -> Result<(String, IssuerSpec, std::sync::Arc<dyn Backend>), Failure> {
    let (name, spec) = load_issuer(&args.issuer)?;
    let secrets = load_secrets(&args.secrets)?;
    let backend = build_backend(&spec, &secrets)?;
    Ok((name, spec, backend))
}

async fn check(args: &IssuerArgs, output: Output) -> Result<u8, Failure> {
    let (name, spec, backend) = build(args)?;
    let kind = backend.kind();
    let health = backend.check().await.map_err(pki_failure)?;
    // The signerName Kubernetes CSRs name this issuer by, unless it opted out.
    let signer = (spec.kubernetes_csr != Some(false))
        .then(|| signer_of(&args.issuer))
        .transpose()?;
    match output {
        Output::Json => println!(
            "{}",
            json!({"ok": true, "issuer": name, "backend": kind, "message": health.message, "signerName": signer})
        ),
        Output::Text => {
            println!("{name}: ready ({kind}): {}", health.message);
            match &signer {
                Some(signer) => println!("Kubernetes CSRs: signerName {signer}"),
                None => println!("Kubernetes CSRs: not signed (spec.kubernetesCSR: false)"),
            }
        }
    }
    Ok(0)
}

/// The signerName of the issuer in a manifest, from its kind, namespace and name.
fn signer_of(path: &Path) -> Result<String, Failure> {
    let text = read_text(path)?;
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not YAML or JSON", path.display()))
        .map_err(Failure::input)?;
    let field = |pointer: &str| {
        doc.pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    let cluster = field("/kind") == "InternalClusterIssuer";
    let namespace = match field("/metadata/namespace") {
        "" => "default",
        ns => ns,
    };
    Ok(certwright_api::signer_name(
        cluster,
        namespace,
        field("/metadata/name"),
    ))
}

fn read_csr(path: &Path) -> Result<Csr, Failure> {
    let csr_bytes = read_bounded(path)?;
    Csr::parse(&csr_bytes)
        .with_context(|| format!("{}", path.display()))
        .map_err(Failure::input)
}

/// A request from the CLI, named as such in the CA's audit log. Its idempotency key comes
/// from the CSR, so that `poll` presents the key `sign` enrolled with (EJBCA's pending id
/// is sealed to it) and a CA that deduplicates sees one request per CSR.
fn cli_request(csr: Csr) -> SignRequest {
    let digest = ring::digest::digest(&ring::digest::SHA256, csr.der());
    let key: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut request = SignRequest::new(csr, format!("certwright-cli-{key}"));
    request.requester = Requester {
        namespace: String::new(),
        name: "certwright-cli".into(),
    };
    request
}

async fn sign(args: &SignArgs, output: Output) -> Result<u8, Failure> {
    let csr = read_csr(&args.csr)?;
    let duration = args
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--duration")
        .map_err(Failure::input)?;
    let (name, _spec, backend) = build(&args.issuer)?;
    let mut request = cli_request(csr);
    request.duration = duration;
    request.is_ca = args.is_ca;
    request.usages = args.usages.clone();
    request.template = args.template.clone();
    let outcome = backend.sign(&request).await.map_err(pki_failure)?;
    report(&name, outcome, output)
}

async fn poll(args: &PollArgs, output: Output) -> Result<u8, Failure> {
    let csr = read_csr(&args.csr)?;
    let id = args.id.trim();
    if id.is_empty() || id.len() > 4096 {
        return Err(Failure::input(anyhow!(
            "--id must be the pending id `certwright sign` printed"
        )));
    }
    let (name, _spec, backend) = build(&args.issuer)?;
    let mut request = cli_request(csr);
    request.template = args.template.clone();
    let outcome = backend.poll(id, &request).await.map_err(pki_failure)?;
    report(&name, outcome, output)
}

/// Prints an issued chain (exit 0) or a pending id (exit 3).
fn report(name: &str, outcome: Outcome, output: Output) -> Result<u8, Failure> {
    match outcome {
        Outcome::Issued(bundle) => {
            let leaf = bundle.leaf().ok_or_else(|| {
                pki_failure(PkiError::InvalidResponse {
                    message: "empty chain".into(),
                })
            })?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "ok": true,
                        "issuer": name,
                        "certificate": bundle.certificate_pem(),
                        "ca": bundle.ca_pem(),
                        "leaf": certificate_json(leaf),
                    })
                ),
                Output::Text => {
                    eprintln!(
                        "issued by {name}: {} (serial {}), valid {} to {}",
                        leaf.subject(),
                        leaf.serial_hex(),
                        leaf.not_before(),
                        leaf.not_after()
                    );
                    print!("{}{}", bundle.certificate_pem(), bundle.ca_pem());
                }
            }
            Ok(0)
        }
        Outcome::Pending(pending) => {
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"ok": true, "issuer": name, "pending": {"id": pending.id, "retryAfterSeconds": pending.retry_after.as_secs()}})
                ),
                Output::Text => println!(
                    "{name}: the CA holds the request for approval: pending id {} (ask again \
                     with `certwright poll --id {}`)",
                    pending.id, pending.id
                ),
            }
            Ok(exit::PENDING)
        }
        other => Err(pki_failure(PkiError::InvalidResponse {
            message: format!("unexpected outcome {other:?}"),
        })),
    }
}

fn certificate_json(cert: &Certificate) -> serde_json::Value {
    let sans = cert.sans();
    json!({
        "subject": cert.subject().to_string(),
        "issuer": cert.issuer().to_string(),
        "serial": cert.serial_hex(),
        "notBefore": cert.not_before().to_string(),
        "notAfter": cert.not_after().to_string(),
        "sha256": cert.fingerprint_hex(),
        "isCA": cert.is_ca(),
        "publicKey": cert.public_key().algorithm.to_string(),
        "dnsNames": sans.dns,
        "ipAddresses": sans.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "uris": sans.uris,
        "emails": sans.emails,
        "keyUsages": cert.key_usage().map(|u| u.iter().map(|k| k.name()).collect::<Vec<_>>()).unwrap_or_default(),
        "extendedKeyUsages": cert.extended_key_usages().iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn csr_json(csr: &Csr) -> serde_json::Value {
    let sans = csr.sans();
    json!({
        "type": "csr",
        "subject": csr.subject().to_string(),
        "signatureAlgorithm": format!("{:?}", csr.signature_algorithm()),
        "signatureVerified": true,
        "publicKey": csr.public_key().algorithm.to_string(),
        "dnsNames": sans.dns,
        "ipAddresses": sans.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "uris": sans.uris,
        "emails": sans.emails,
        "keyUsages": csr.key_usage().map(|u| u.iter().map(|k| k.name()).collect::<Vec<_>>()).unwrap_or_default(),
        "extendedKeyUsages": csr.extended_key_usages().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "basicConstraints": csr.basic_constraints().map(|b| json!({"ca": b.ca, "pathLen": b.path_len})),
    })
}

fn print_fields(value: &serde_json::Value, indent: &str) {
    if let Some(map) = value.as_object() {
        for (key, v) in map {
            match v {
                serde_json::Value::Array(items) if items.is_empty() => {}
                serde_json::Value::Null => {}
                serde_json::Value::Array(items) => println!(
                    "{indent}{key}: {}",
                    items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                serde_json::Value::String(s) => println!("{indent}{key}: {s}"),
                other => println!("{indent}{key}: {other}"),
            }
        }
    }
}

fn inspect(path: &Path, output: Output) -> Result<u8, Failure> {
    let bytes = read_bounded(path)?;
    let looks_like_csr = bytes
        .windows(b"CERTIFICATE REQUEST".len())
        .any(|w| w == b"CERTIFICATE REQUEST");
    let is_pem = bytes.starts_with(b"-----") || bytes.windows(5).any(|w| w == b"-----");
    let value = if looks_like_csr {
        let csr = Csr::parse(&bytes)
            .with_context(|| format!("{}", path.display()))
            .map_err(Failure::input)?;
        csr_json(&csr)
    } else if is_pem {
        let certs = certwright_x509::parse_pem_bundle(&bytes)
            .with_context(|| format!("{}", path.display()))
            .map_err(Failure::input)?;
        json!({"type": "certificates", "certificates": certs.iter().map(certificate_json).collect::<Vec<_>>()})
    } else {
        // DER: a CSR or a single certificate.
        match Csr::from_der(&bytes) {
            Ok(csr) => csr_json(&csr),
            Err(csr_err) => {
                let cert = Certificate::from_der(&bytes).map_err(|cert_err| {
                    Failure::input(anyhow!(
                        "{}: neither a CSR ({csr_err}) nor a certificate ({cert_err})",
                        path.display()
                    ))
                })?;
                json!({"type": "certificates", "certificates": [certificate_json(&cert)]})
            }
        }
    };
    match output {
        Output::Json => println!("{value}"),
        Output::Text => {
            if value["type"] == "csr" {
                println!("Certificate signing request (signature verified)");
                print_fields(&value, "  ");
            } else {
                for (i, cert) in value["certificates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    println!("Certificate {}", i + 1);
                    print_fields(cert, "  ");
                }
            }
        }
    }
    Ok(0)
}
