//! Policy decisions per second with 200 IssuancePolicies in the cache, in a release
//! build as the controller runs them, on every core. `cargo xtask bench` runs it
//! (`cargo bench -p certwright-policy --bench decisions`) and reports the two figures it
//! prints: decisions on requests already read, and decisions that read each request
//! first (its CSR parsed and its self-signature verified, as the approver does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use certwright_api::{CertificateRequest, CertificateRequestSpec, IssuancePolicySpec, IssuerRef};
use certwright_fixtures::{CsrBuilder, KeyKind};
use certwright_policy::{Evaluation, Policy, PolicySet, RequestFacts, Verdict};

/// Policies in the cache.
const POLICIES: usize = 200;
/// Distinct requests decided over and over.
const REQUESTS: usize = 400;
/// How long each figure is measured.
const RUN_FOR: Duration = Duration::from_secs(3);

/// Policy `i` governs namespace `team-<i>`: names under `team-<i>.corp`, at most
/// 2160h, keys of at least 256 bits, for the `bench` cluster issuer.
fn policies() -> PolicySet {
    PolicySet::new((0..POLICIES).map(|i| {
        let spec: IssuancePolicySpec = serde_yaml_ng::from_str(&format!(
            r#"
allowed:
  commonName: {{ value: "*.team-{i}.corp" }}
  dnsNames: {{ values: ["*.team-{i}.corp"], required: true }}
  usages: ["digital signature", "key encipherment", "server auth"]
constraints: {{ maxDuration: 2160h, privateKey: {{ minSize: 256 }} }}
selector:
  issuerRef: {{ name: bench, kind: InternalClusterIssuer, group: pki.certwright.io }}
  namespace: {{ matchNames: ["team-{i}"] }}
"#
        ))
        .unwrap();
        Arc::new(Policy::compile(&format!("team-{i}"), &spec))
    }))
}

fn request(i: usize) -> CertificateRequest {
    let team = i % POLICIES;
    let host = format!("app-{i}.team-{team}.corp");
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(&host)
        .dns(&host)
        .build();
    let mut cr = CertificateRequest::new(
        &format!("app-{i}"),
        CertificateRequestSpec {
            request: csr.csr_pem.as_str().into(),
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

/// Decisions per second on every core; with `read`, each decision reads its request.
fn rate(set: &Arc<PolicySet>, requests: &Arc<Vec<CertificateRequest>>, read: bool) -> f64 {
    let facts: Arc<Vec<RequestFacts>> = Arc::new(
        requests
            .iter()
            .map(|r| RequestFacts::from_request(r).unwrap())
            .collect(),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (set, requests, facts) = (set.clone(), requests.clone(), facts.clone());
            std::thread::spawn(move || {
                let mut decided = 0u64;
                let mut i = t;
                while started.elapsed() < RUN_FOR {
                    let n = i % requests.len();
                    let fresh;
                    let facts = if read {
                        fresh = RequestFacts::from_request(&requests[n]).unwrap();
                        &fresh
                    } else {
                        &facts[n]
                    };
                    let verdict = set.evaluate(facts, None, Evaluation::All);
                    assert!(matches!(verdict, Verdict::Approved { .. }), "{verdict:?}");
                    decided += 1;
                    i += threads;
                }
                decided
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let set = Arc::new(policies());
    let requests: Arc<Vec<CertificateRequest>> = Arc::new((0..REQUESTS).map(request).collect());
    let decided = rate(&set, &requests, false);
    let reading = rate(&set, &requests, true);
    println!("policy-decisions decided={decided:.0} reading={reading:.0}");
}
