//! `cargo xtask bench`: the controller binary (release build) as its own process
//! against the testkit API server process and a local CA (ECDSA P-256), measured from
//! outside. Writes docs/benchmarks.md with the machine, the command and every figure
//! next to its target.
//!
//! One file because it is one run: each step feeds the report the next one extends,
//! and the helpers (creating, approving and timing requests) serve every step.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use certwright_api::{
    Base64Bytes, CaBackend, CertificateRequest, CertificateRequestSpec, InternalClusterIssuer,
    IssuerRef, IssuerSpec, RestBackend,
};
use certwright_simulators::rest_sim::{Behaviour, RestSimulator};
use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};
use futures::StreamExt as _;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

use crate::cluster::{self, Process};

const NS: &str = "cert-manager";
const APPS: &str = "bench";
/// IssuancePolicies in the cache during the run.
const POLICIES: usize = 200;
/// The namespace whose requests the policy approver decides in the latency step.
const GOVERNED: &str = "team-7";
/// The controller's RSS at 20,000 completed requests before the policy approver (the
/// last run of docs/benchmarks.md without it, commit c0c4ac0).
const RSS_BEFORE_APPROVER_MIB: f64 = 32.7;

/// What the command line asked for.
pub(crate) struct Options {
    /// Seconds of simulated PKI outage (the target speaks of 5 minutes).
    pub(crate) outage_seconds: u64,
    /// Completed requests for the memory figures (the target speaks of 20,000).
    pub(crate) total: usize,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            outage_seconds: 300,
            total: 20_000,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--outage-seconds" => {
                    options.outage_seconds = it.next().context("--outage-seconds N")?.parse()?
                }
                "--total" => options.total = it.next().context("--total N")?.parse()?,
                other => {
                    bail!("unknown bench option {other:?} (use --outage-seconds N, --total N)")
                }
            }
        }
        if options.total < 10_000 {
            bail!(
                "--total must be at least 10000 (the memory figures are read at 1,000, 10,000 and --total)"
            );
        }
        Ok(options)
    }
}

pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    println!("==> building release binaries");
    crate::cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "certwright-controller",
        "-p",
        "certwright-testkit",
        "--bin",
        "certwright-controller",
        "--bin",
        "certwright-apiserver",
    ])?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(bench(root, &options))?;
    let path = root.join("docs/benchmarks.md");
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    println!("==> wrote {}", path.display());
    Ok(())
}

/// A CertificateRequest's status conditions, all the driver's watches read.
#[derive(Clone, Debug, Default, serde::Deserialize)]
struct Conditions {
    #[serde(default)]
    conditions: Vec<certwright_api::Condition>,
}

/// A CertificateRequest decoded without its spec (no CSR), as the controller decodes
/// the ones it watches: the driver shares the machine with it.
type SlimRequest = kube::core::Object<kube::core::NotUsed, Conditions>;

fn slim_requests(client: Client, namespace: &str) -> Api<SlimRequest> {
    let resource = kube::core::ApiResource::erase::<CertificateRequest>(&());
    Api::namespaced_with(client, namespace, &resource)
}

fn conditions_of(request: &SlimRequest) -> &[certwright_api::Condition] {
    request
        .status
        .as_ref()
        .map_or(&[], |s| s.conditions.as_slice())
}

/// Watches CertificateRequests in the bench namespace and records when each became Ready.
#[derive(Clone, Default)]
struct ReadyTimes(Arc<Mutex<HashMap<String, Instant>>>);

impl ReadyTimes {
    fn start(client: Client) -> ReadyTimes {
        let times = ReadyTimes::default();
        let inner = times.clone();
        tokio::spawn(async move {
            let api = slim_requests(client, APPS);
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                let objs = match event {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                    _ => continue,
                };
                for o in objs {
                    let ready = conditions_of(&o).iter().any(|c| {
                        c.type_ == "Ready" && c.status == certwright_api::ConditionStatus::True
                    });
                    if ready {
                        let name = o.metadata.name.clone().unwrap_or_default();
                        let mut map = inner.0.lock().unwrap_or_else(|p| p.into_inner());
                        map.entry(name).or_insert_with(Instant::now);
                    }
                }
            }
        });
        times
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn get(&self, name: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    async fn wait_count(&self, n: usize, controller: &mut Process, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            controller.ensure_running()?;
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} requests became Ready within {limit:?}",
                    self.count()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

fn csr_pem(name: &str) -> String {
    CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(&format!("{name}.bench.example.test"))
        .dns(&format!("{name}.bench.example.test"))
        .build()
        .csr_pem
}

async fn create_requests(
    api: &Api<CertificateRequest>,
    issuer: &str,
    names: &[String],
) -> Result<()> {
    let issuer = issuer.to_string();
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            let issuer = issuer.clone();
            async move {
                let mut cr = CertificateRequest::new(
                    &name,
                    CertificateRequestSpec {
                        request: Base64Bytes::from(csr_pem(&name).as_str()),
                        issuer_ref: IssuerRef {
                            name: issuer,
                            kind: "InternalClusterIssuer".into(),
                            group: "pki.certwright.io".into(),
                        },
                        duration: Some("720h".into()),
                        ..Default::default()
                    },
                );
                cr.metadata.namespace = Some(APPS.into());
                api.create(&PostParams::default(), &cr).await.map(|_| ())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("creating CertificateRequests")?;
    Ok(())
}

/// Approves as cert-manager's approver does, retrying injected conflicts.
async fn approve(api: &Api<CertificateRequest>, name: &str) -> Result<()> {
    let patch = json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "cert-manager.io",
        "message": "approved by the benchmark",
        "lastTransitionTime": jiff::Timestamp::now().to_string()
    }]}});
    for _ in 0..20 {
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).context("approving"),
        }
    }
    bail!("approving {name}: conflicts every time")
}

async fn approve_all(api: &Api<CertificateRequest>, names: &[String]) -> Result<()> {
    futures::stream::iter(names.iter())
        .map(|n| approve(api, n))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(())
}

/// Creates `n` CertificateSigningRequests for the `bench` cluster issuer's signer,
/// approves them all, and returns how many per second got a certificate, timed from the
/// first approval to the last certificate seen by a watch.
async fn csr_throughput(client: &kube::Client, n: usize, controller: &mut Process) -> Result<f64> {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestSpec,
    };
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let batch = names("csr", 0, n);
    let signer = certwright_api::signer_name(true, "", "bench");
    futures::stream::iter(batch.iter().cloned())
        .map(|name| {
            let (csrs, signer) = (csrs.clone(), signer.clone());
            async move {
                let mut csr = CertificateSigningRequest {
                    spec: CertificateSigningRequestSpec {
                        request: k8s_openapi::ByteString(csr_pem(&name).into_bytes()),
                        signer_name: signer,
                        usages: Some(vec!["digital signature".into(), "server auth".into()]),
                        username: Some("bench".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                csr.metadata.name = Some(name);
                csrs.create(&PostParams::default(), &csr).await.map(|_| ())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("creating CertificateSigningRequests")?;
    // Watch for certificates before approving, so that none is missed.
    let signed = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let seen = signed.clone();
    let watched = csrs.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watched, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                continue;
            };
            if o.status
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                .is_some()
            {
                let name = o.metadata.name.clone().unwrap_or_default();
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    let approve = json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "KubectlApprove",
        "message": "approved by the benchmark"
    }]}});
    let start = Instant::now();
    futures::stream::iter(batch.iter())
        .map(|name| {
            let csrs = Api::<CertificateSigningRequest>::all(client.clone());
            let approve = approve.clone();
            async move {
                csrs.patch_approval(name, &PatchParams::default(), &Patch::Merge(&approve))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("approving CertificateSigningRequests")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = signed.lock().unwrap_or_else(|p| p.into_inner()).len();
        if done >= n {
            break;
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!("only {done} of {n} CSRs were signed within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watch.abort();
    let last = signed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .max()
        .copied()
        .unwrap_or_else(Instant::now);
    Ok(n as f64 / last.duration_since(start).as_secs_f64())
}

fn names(prefix: &str, from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn metric_sum(metrics: &str, name: &str, must_contain: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && must_contain.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn post_fault(url: &str, body: serde_json::Value) -> Result<()> {
    let client = reqwest::Client::new();
    let method = if body.is_null() {
        reqwest::Method::DELETE
    } else {
        reqwest::Method::POST
    };
    let mut request = client.request(method, format!("{url}/testkit/faults"));
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.context("calling the fault endpoint")?;
    if !response.status().is_success() {
        bail!("fault endpoint answered {}", response.status());
    }
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {:.0} GiB memory",
        mem as f64 / 1024.0 / 1024.0
    )
}

#[allow(clippy::too_many_lines)]
/// Signatures the signing step makes with each key.
const SIGNATURES: usize = 4000;
/// Signatures in flight at once in the signing step (the issuer's concurrency cap and
/// the token's session pool).
const SIGNING_IN_FLIGHT: usize = 4;

/// Certificates per second the local CA backend issues through [`Backend::sign`] (the
/// whole certificate: encoding, signature, read back and verified), with the ECDSA
/// P-256 key in memory and in a SoftHSM2 token through PKCS#11.
async fn signing_throughput() -> Result<(f64, f64)> {
    use certwright_backend_ca::{LocalCa, LocalCaConfig, TokenKeyConfig, TokenRef};
    use certwright_pki::Backend as _;
    use certwright_simulators::softhsm::{SoftHsm, USER_PIN};

    let ca = TestCa::root(KeyKind::EcdsaP256, "certwright bench signing CA");
    let memory = LocalCa::from_pem(
        ca.cert_pem().as_bytes(),
        ca.key_pem().as_bytes(),
        LocalCaConfig::default(),
    )?;
    let hsm = SoftHsm::new();
    hsm.import(ca.key_pem(), "bench-ca", &[1]);
    let token = LocalCa::with_token(
        ca.cert_pem().as_bytes(),
        TokenKeyConfig::new(hsm.module(), TokenRef::Label(hsm.label().into()), USER_PIN)
            .key_label("bench-ca")
            .max_sessions(SIGNING_IN_FLIGHT),
        LocalCaConfig::default(),
    )?;
    // Opens the token, logs in and proves the key, as an issuer's first check does.
    token.check().await?;
    let csr = certwright_x509::Csr::parse(csr_pem("signing").as_bytes())?;
    let request = certwright_pki::SignRequest::new(csr, "bench");
    Ok((
        sign_rate(Arc::new(memory), &request).await?,
        sign_rate(Arc::new(token), &request).await?,
    ))
}

/// Signs [`SIGNATURES`] certificates, [`SIGNING_IN_FLIGHT`] at once, each call a task of
/// its own as the engine's workers make them: certificates per second.
async fn sign_rate(
    backend: Arc<certwright_backend_ca::LocalCa>,
    request: &certwright_pki::SignRequest,
) -> Result<f64> {
    use certwright_pki::Backend as _;
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..SIGNATURES)
        .map(|_| {
            let (backend, request) = (backend.clone(), request.clone());
            tokio::spawn(async move { backend.sign(&request).await })
        })
        .buffer_unordered(SIGNING_IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    for result in results {
        result??;
    }
    Ok(SIGNATURES as f64 / elapsed)
}

/// The IssuancePolicies of the run: policy `i` governs namespace `team-<i>` (names
/// under `team-<i>.corp`, at most 2160h, keys of at least 256 bits) for the `bench`
/// issuer; none selects the `bench` namespace, whose requests the driver approves.
fn bench_policies() -> Vec<certwright_api::IssuancePolicy> {
    (0..POLICIES)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "pki.certwright.io/v1alpha1",
                "kind": "IssuancePolicy",
                "metadata": {"name": format!("team-{i}")},
                "spec": {
                    "allowed": {
                        "commonName": {"value": format!("*.team-{i}.corp")},
                        "dnsNames": {"values": [format!("*.team-{i}.corp")], "required": true},
                        "usages": ["digital signature", "key encipherment", "server auth"]
                    },
                    "constraints": {"maxDuration": "2160h", "privateKey": {"minSize": 256}},
                    "selector": {
                        "issuerRef": {"name": "bench", "kind": "InternalClusterIssuer", "group": "pki.certwright.io"},
                        "namespace": {"matchNames": [format!("team-{i}")]}
                    }
                }
            }))
            .expect("a bench policy is an IssuancePolicy")
        })
        .collect()
}

/// A request in `team-<team>` for a name its policy allows.
fn governed_request(name: &str, team: usize) -> CertificateRequest {
    let host = format!("{name}.team-{team}.corp");
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(&host)
        .dns(&host)
        .build();
    let mut cr = CertificateRequest::new(
        name,
        CertificateRequestSpec {
            request: Base64Bytes::from(csr.csr_pem.as_str()),
            issuer_ref: IssuerRef {
                name: "bench".into(),
                kind: "InternalClusterIssuer".into(),
                group: "pki.certwright.io".into(),
            },
            duration: Some("720h".into()),
            ..Default::default()
        },
    );
    cr.metadata.namespace = Some(format!("team-{team}"));
    cr
}

/// Policy decisions per second with [`POLICIES`] policies in the cache, measured by the
/// `decisions` bench of `certwright-policy` in a release build, as the controller runs
/// the evaluation: (decisions on requests already read, decisions that also read each
/// request — its CSR parsed and its self-signature verified, as the approver does).
fn policy_decisions_per_second() -> Result<(f64, f64)> {
    let output =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "bench",
                "--quiet",
                "-p",
                "certwright-policy",
                "--bench",
                "decisions",
            ])
            .output()
            .context("running the policy decisions bench")?;
    if !output.status.success() {
        bail!(
            "the policy decisions bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("policy-decisions "))
        .context("the policy decisions bench printed no figures")?;
    let figure = |key: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .context("a figure is missing")?
            .parse::<f64>()
            .context("a figure is not a number")
    };
    Ok((figure("decided=")?, figure("reading=")?))
}

async fn bench(root: &Path, options: &Options) -> Result<String> {
    // 0. The local CA's signatures alone, before anything else runs on the machine.
    println!("==> signing throughput: key in memory, key in SoftHSM2");
    let (in_memory, in_token) = signing_throughput().await?;
    println!("==> policy decisions with {POLICIES} policies");
    let (decisions, decisions_reading) = policy_decisions_per_second()?;
    let bin = root.join("target/release");
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut api = start_apiserver_with_faults(&bin, root, d)?;
    let client = cluster::client(&api.url)?;
    let (metrics_port, health_port) = (cluster::free_port(), cluster::free_port());
    let mut controller = Process::spawn(
        "certwright-controller",
        &bin.join("certwright-controller"),
        &[
            "--kubeconfig".into(),
            api.kubeconfig.display().to_string(),
            "--cluster-resource-namespace".into(),
            NS.into(),
            // The outage test's REST simulator is on loopback, which the egress policy
            // refuses to issuers; the bench's issuers are cluster issuers.
            "--egress-exempt-cluster-issuers".into(),
            "--leader-elect=false".into(),
            "--max-concurrent-reconciles".into(),
            "32".into(),
            "--metrics-bind-address".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--health-probe-bind-address".into(),
            format!("127.0.0.1:{health_port}"),
            "--log-level".into(),
            "warn".into(),
            // The policy approver runs throughout, with 200 policies, none of which
            // selects the namespace whose requests the driver approves itself.
            "--policy-approver".into(),
            "--policy-unmatched=ignore".into(),
        ],
        d.join("controller.log"),
    )?;
    cluster::wait_port(metrics_port, &mut controller, Duration::from_secs(20))?;
    let policies: Api<certwright_api::IssuancePolicy> = Api::all(client.clone());
    for policy in bench_policies() {
        policies.create(&PostParams::default(), &policy).await?;
    }

    // The local CA (ECDSA P-256) and an issuer tuned not to throttle.
    let ca = TestCa::root(KeyKind::EcdsaP256, "certwright bench CA");
    cluster::create_ca_secret(&client, NS, "bench-ca", &ca).await?;
    let issuers: Api<InternalClusterIssuer> = Api::all(client.clone());
    let tuned = |spec: IssuerSpec| IssuerSpec {
        max_concurrent_requests: Some(64),
        requests_per_second: Some(5000.0),
        ..spec
    };
    issuers
        .create(
            &PostParams::default(),
            &InternalClusterIssuer::new(
                "bench",
                tuned(IssuerSpec {
                    ca: Some(CaBackend {
                        secret_name: "bench-ca".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .into(),
            ),
        )
        .await?;
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), APPS);
    let ready = ReadyTimes::start(client.clone());
    let mut report = String::new();
    let mut rows: Vec<(String, String, String, bool)> = Vec::new();
    rows.push((
        format!(
            "local CA certificates per second, ECDSA P-256 key in memory ({SIGNING_IN_FLIGHT} at once)"
        ),
        format!("{in_memory:.0}/s"),
        "—".into(),
        true,
    ));
    rows.push((
        format!(
            "local CA certificates per second, ECDSA P-256 key in SoftHSM2 via PKCS#11 ({SIGNING_IN_FLIGHT} at once)"
        ),
        format!("{in_token:.0}/s"),
        "≥ 500/s".into(),
        in_token >= 500.0,
    ));
    rows.push((
        format!("policy decisions per second, {POLICIES} policies in the cache"),
        format!("{decisions:.0}/s"),
        "≥ 20,000/s".into(),
        decisions >= 20_000.0,
    ));
    rows.push((
        format!(
            "policy decisions per second, {POLICIES} policies, each request read first (CSR parsed, signature verified)"
        ),
        format!("{decisions_reading:.0}/s"),
        "—".into(),
        true,
    ));

    // 1. Warm-up to 1,000 completed; RSS at 1,000.
    println!("==> 1,000 requests (warm-up)");
    let batch = names("warm", 0, 1000);
    create_requests(&requests, "bench", &batch).await?;
    approve_all(&requests, &batch).await?;
    ready
        .wait_count(1000, &mut controller, Duration::from_secs(300))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_1k = controller
        .rss_kib()
        .context("reading the controller's RSS")?;

    // 2. Throughput: 2,000 approved at once.
    println!("==> throughput: 2,000 requests approved at once");
    let batch = names("burst", 0, 2000);
    create_requests(&requests, "bench", &batch).await?;
    let start = Instant::now();
    approve_all(&requests, &batch).await?;
    ready
        .wait_count(3000, &mut controller, Duration::from_secs(300))
        .await?;
    let last = batch
        .iter()
        .filter_map(|n| ready.get(n))
        .max()
        .unwrap_or_else(Instant::now);
    let per_second = batch.len() as f64 / last.duration_since(start).as_secs_f64();
    rows.push((
        "issued per second (2,000 approved at once)".into(),
        format!("{per_second:.0}/s"),
        "≥ 300/s".into(),
        per_second >= 300.0,
    ));

    // 2b. Kubernetes CSRs: 1,000 approved at once, through the same issuer.
    println!("==> throughput: 1,000 Kubernetes CSRs approved at once");
    let csr_rate = csr_throughput(&client, 1000, &mut controller).await?;
    rows.push((
        "Kubernetes CSRs signed per second (1,000 approved at once)".into(),
        format!("{csr_rate:.0}/s"),
        "—".into(),
        true,
    ));

    // 3. Latency from approval to Ready at a steady 50 requests per second.
    println!("==> latency: 1,500 requests approved at 50/s");
    let batch = names("steady", 0, 1500);
    create_requests(&requests, "bench", &batch).await?;
    let mut approved_at = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for name in &batch {
        tick.tick().await;
        approved_at.insert(name.clone(), Instant::now());
        let api = requests.clone();
        let name = name.clone();
        tokio::spawn(async move { approve(&api, &name).await });
    }
    ready
        .wait_count(4500, &mut controller, Duration::from_secs(120))
        .await?;
    let mut latencies: Vec<f64> = batch
        .iter()
        .filter_map(|n| {
            Some(
                ready
                    .get(n)?
                    .duration_since(*approved_at.get(n)?)
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    rows.push((
        "approval → Ready p50 at 50/s".into(),
        format!("{p50:.1} ms"),
        "—".into(),
        true,
    ));
    rows.push((
        "approval → Ready p99 at 50/s".into(),
        format!("{p99:.1} ms"),
        "≤ 50 ms".into(),
        p99 <= 50.0,
    ));

    // 3b. Latency from creation to Approved, the policy approver deciding, at 50/s.
    println!("==> policy latency: 1,000 requests created at 50/s in {GOVERNED}");
    let (created_to_approved_p50, created_to_approved_p99) =
        policy_latency(&client, &mut controller).await?;
    rows.push((
        "creation → Approved by policy, p50 at 50/s".into(),
        format!("{created_to_approved_p50:.1} ms"),
        "—".into(),
        true,
    ));
    rows.push((
        "creation → Approved by policy, p99 at 50/s".into(),
        format!("{created_to_approved_p99:.1} ms"),
        "≤ 20 ms".into(),
        created_to_approved_p99 <= 20.0,
    ));

    // 4. Memory at 10,000 and `total` completed requests.
    println!("==> filling to 10,000 completed");
    let batch = names("fill", 0, 10_000 - 4500);
    create_requests(&requests, "bench", &batch).await?;
    approve_all(&requests, &batch).await?;
    ready
        .wait_count(10_000, &mut controller, Duration::from_secs(600))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_10k = controller.rss_kib().context("RSS")?;
    println!("==> filling to {} completed", options.total);
    let batch = names("more", 0, options.total - 10_000);
    create_requests(&requests, "bench", &batch).await?;
    approve_all(&requests, &batch).await?;
    ready
        .wait_count(options.total, &mut controller, Duration::from_secs(900))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_total = controller.rss_kib().context("RSS")?;
    let growth = (rss_total as f64 - rss_1k as f64) / (options.total as f64 - 1000.0) * 1024.0;
    let mib = |k: u64| k as f64 / 1024.0;
    rows.push((
        "controller RSS at 1,000 completed".into(),
        format!("{:.1} MiB", mib(rss_1k)),
        "—".into(),
        true,
    ));
    rows.push((
        "controller RSS at 10,000 completed".into(),
        format!("{:.1} MiB", mib(rss_10k)),
        "—".into(),
        true,
    ));
    rows.push((
        format!("controller RSS at {} completed", options.total),
        format!("{:.1} MiB", mib(rss_total)),
        "≤ 40 MiB".into(),
        mib(rss_total) <= 40.0,
    ));
    rows.push((
        format!(
            "controller RSS at {} completed, with the policy approver and {POLICIES} policies, against {RSS_BEFORE_APPROVER_MIB} MiB without",
            options.total
        ),
        format!(
            "{:+.1} MiB",
            mib(rss_total) - RSS_BEFORE_APPROVER_MIB
        ),
        "≤ +5 MiB".into(),
        mib(rss_total) - RSS_BEFORE_APPROVER_MIB <= 5.0,
    ));
    rows.push((
        "RSS growth per completed request (1,000 → total)".into(),
        format!("{growth:.0} bytes"),
        "≤ 1 KiB".into(),
        growth <= 1024.0,
    ));

    // 5. Sign calls per issued request with 5% of status writes answered 409.
    println!("==> 1,000 requests with 5% of status writes answered 409");
    let before = cluster::http_get(metrics_port, "/metrics")?;
    post_fault(
        &api.url,
        json!({"method": "PATCH", "pattern": "/status", "code": 409, "ratio": 0.05}),
    )
    .await?;
    let batch = names("conflict", 0, 1000);
    create_requests(&requests, "bench", &batch).await?;
    approve_all(&requests, &batch).await?;
    ready
        .wait_count(
            options.total + 1000,
            &mut controller,
            Duration::from_secs(300),
        )
        .await?;
    post_fault(&api.url, serde_json::Value::Null).await?;
    let after = cluster::http_get(metrics_port, "/metrics")?;
    let signs = metric_sum(
        &after,
        "certwright_backend_calls_total",
        &["operation=\"sign\"", "issuer_name=\"bench\""],
    ) - metric_sum(
        &before,
        "certwright_backend_calls_total",
        &["operation=\"sign\"", "issuer_name=\"bench\""],
    );
    let conflicts = metric_sum(
        &after,
        "certwright_certificate_requests_total",
        &["result=\"issued\"", "issuer_name=\"bench\""],
    ) - metric_sum(
        &before,
        "certwright_certificate_requests_total",
        &["result=\"issued\"", "issuer_name=\"bench\""],
    );
    let per_issued = signs / conflicts.max(1.0);
    rows.push((
        "backend sign calls per issued request, 5% of status writes 409".into(),
        format!("{per_issued:.2}"),
        "1.00".into(),
        (per_issued - 1.0).abs() < 0.005,
    ));

    // 6. A PKI outage: the REST simulator answers 500 for `outage_seconds`.
    println!("==> PKI outage for {} s", options.outage_seconds);
    let sim = RestSimulator::start()
        .await
        .context("starting the REST simulator")?;
    issuers
        .create(
            &PostParams::default(),
            &InternalClusterIssuer::new(
                "outage",
                tuned(IssuerSpec {
                    rest: Some(RestBackend {
                        url: sim.url(),
                        ca_bundle: Some(Base64Bytes::from(sim.tls_ca_pem())),
                        timeout: Some("5s".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .into(),
            ),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.set_behaviour(Behaviour::Fail500);
    let batch = names("outage", 0, 50);
    for name in &batch {
        let mut cr = CertificateRequest::new(
            name,
            CertificateRequestSpec {
                request: Base64Bytes::from(csr_pem(name).as_str()),
                issuer_ref: IssuerRef {
                    name: "outage".into(),
                    kind: "InternalClusterIssuer".into(),
                    group: "pki.certwright.io".into(),
                },
                ..Default::default()
            },
        );
        cr.metadata.namespace = Some(APPS.into());
        requests.create(&PostParams::default(), &cr).await?;
    }
    let before_calls = sim.sign_submissions();
    let outage_start = Instant::now();
    approve_all(&requests, &batch).await?;
    // The calls that detect the outage, until the breaker opens.
    let breaker_open = r#"certwright_circuit_breaker_state{issuer_name="outage",issuer_kind="InternalClusterIssuer",issuer_group="pki.certwright.io",namespace=""} 2"#;
    let mut opened_after = None;
    while outage_start.elapsed() < Duration::from_secs(options.outage_seconds) {
        if cluster::http_get(metrics_port, "/metrics")?.contains(breaker_open) {
            opened_after = Some(outage_start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Calls started before the breaker opened may reach the simulator a little after
    // the metric shows it open (the controller shares the cores with the driver); they
    // are detection, not probes. The first probe is due 30 s after opening, so a
    // second's wait takes in every such call and no probe.
    if opened_after.is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let detection = sim.sign_submissions() - before_calls;
    let rest = Duration::from_secs(options.outage_seconds).saturating_sub(outage_start.elapsed());
    tokio::time::sleep(rest).await;
    let probes = sim.sign_submissions() - before_calls - detection;
    sim.set_behaviour(Behaviour::Issue);
    ready
        .wait_count(
            options.total + 1050,
            &mut controller,
            Duration::from_secs(400),
        )
        .await?;
    // One probe per open period: 30 s, doubling up to 5 min (probes at 30 s, 90 s,
    // 210 s, 510 s, ... after opening).
    let open_for = options
        .outage_seconds
        .saturating_sub(opened_after.map_or(0, |d| d.as_secs()));
    let mut bound = 0u64;
    let (mut t, mut period) = (30u64, 30u64);
    while t <= open_for {
        bound += 1;
        period = (period * 2).min(300);
        t += period;
    }
    rows.push((
        format!(
            "PKI calls until the breaker opened ({} requests waiting)",
            batch.len()
        ),
        format!(
            "{detection} (open after {:.1} s)",
            opened_after.map_or(f64::NAN, |d| d.as_secs_f64())
        ),
        "5 consecutive failures; after the first failure one call at a time".into(),
        opened_after.is_some(),
    ));
    rows.push((
        format!(
            "PKI calls while the breaker was open, {} s outage",
            options.outage_seconds
        ),
        format!("{probes}"),
        format!("≤ {bound} (one probe per breaker interval)"),
        probes <= bound,
    ));

    controller.terminate(Duration::from_secs(20))?;
    api.process.terminate(Duration::from_secs(5))?;

    writeln!(report, "# Benchmarks\n")?;
    writeln!(
        report,
        "Produced by `cargo xtask bench` on {} ({}).",
        jiff::Timestamp::now().strftime("%Y-%m-%d"),
        machine()
    )?;
    writeln!(
        report,
        "The controller binary (release build) runs as its own process against the `certwright-apiserver`"
    )?;
    writeln!(
        report,
        "process and a local CA with an ECDSA P-256 key; the driver creates and approves CertificateRequests"
    )?;
    writeln!(
        report,
        "over HTTP as cert-manager would, and times Ready from its own watch. All three processes share the"
    )?;
    writeln!(report, "machine's cores.\n")?;
    writeln!(report, "| figure | measured | target | met |")?;
    writeln!(report, "|---|---|---|---|")?;
    for (figure, measured, target, met) in &rows {
        writeln!(
            report,
            "| {figure} | {measured} | {target} | {} |",
            if *met { "yes" } else { "**no**" }
        )?;
    }
    let missed: Vec<&str> = rows.iter().filter(|r| !r.3).map(|r| r.0.as_str()).collect();
    writeln!(report)?;
    if missed.is_empty() {
        writeln!(report, "Every target is met.")?;
    } else {
        writeln!(report, "Targets missed: {}.", missed.join("; "))?;
    }
    writeln!(
        report,
        "\nRun it with `cargo xtask bench` (about {} minutes; `--outage-seconds N` shortens the outage,",
        4 + options.outage_seconds / 60
    )?;
    writeln!(
        report,
        "`--total N` changes the last memory figure). It is not part of `cargo xtask test`."
    )?;
    print!("{report}");
    Ok(report)
}

/// Creates 1,000 requests at 50/s in [`GOVERNED`], whose policy allows them, and times
/// each from just before its create call to the Approved condition seen by a watch:
/// (p50, p99) in milliseconds.
async fn policy_latency(client: &Client, controller: &mut Process) -> Result<(f64, f64)> {
    const N: usize = 1000;
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), GOVERNED);
    let approved = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let seen = approved.clone();
    let watched = slim_requests(client.clone(), GOVERNED);
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watched, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                continue;
            };
            if conditions_of(&o)
                .iter()
                .any(|c| c.type_ == "Approved" && c.status == certwright_api::ConditionStatus::True)
            {
                let name = o.metadata.name.clone().unwrap_or_default();
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    // The requests are built (keys and CSRs) before the clock starts.
    let team: usize = GOVERNED.trim_start_matches("team-").parse()?;
    let requests: Vec<CertificateRequest> = (0..N)
        .map(|i| governed_request(&format!("gov-{i:05}"), team))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let created = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut tasks = Vec::with_capacity(N);
    for cr in requests {
        tick.tick().await;
        let (api, created) = (api.clone(), created.clone());
        tasks.push(tokio::spawn(async move {
            let name = cr.metadata.name.clone().unwrap_or_default();
            created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name, Instant::now());
            api.create(&PostParams::default(), &cr).await.map(|_| ())
        }));
    }
    for task in tasks {
        task.await?.context("creating a governed request")?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = approved.lock().unwrap_or_else(|p| p.into_inner()).len();
        if done >= N {
            break;
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!("only {done} of {N} governed requests were approved within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watch.abort();
    let created = created.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let approved = approved.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut latencies: Vec<f64> = created
        .iter()
        .filter_map(|(name, at)| {
            Some(approved.get(name)?.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok((percentile(&latencies, 50.0), percentile(&latencies, 99.0)))
}

fn start_apiserver_with_faults(
    bin: &Path,
    root: &Path,
    dir: &Path,
) -> Result<cluster::ApiServerProcess> {
    cluster::start_apiserver_with(
        &bin.join("certwright-apiserver"),
        root,
        dir,
        &["--enable-fault-endpoint", "--history-limit", "100000"],
    )
}
