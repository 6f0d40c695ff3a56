//! The real `certwright-webhook` binary against the testkit API server: AdmissionReviews
//! over HTTPS are allowed or denied with the messages a user sees, a rotated serving
//! certificate is picked up without a restart, and SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certwright_simulators::tls::unused_local_port;
use certwright_testkit::apiserver::{ApiServer, Method};
use certwright_testkit::fixtures::{KeyKind, TestCa};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::{Value, json};

/// The webhook process; killed if the test ends without stopping it.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    probe_addr: SocketAddr,
    /// Its log lines so far (also passed on to the test's stderr).
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start(kubeconfig: &Path, cert: &Path, key: &Path) -> Webhook {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, unused_local_port()));
        let probe_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, unused_local_port()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_certwright-webhook"))
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-private-key-file")
            .arg(key)
            .arg("--bind-address")
            .arg(addr.to_string())
            .arg("--health-probe-bind-address")
            .arg(probe_addr.to_string())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cluster-resource-namespace")
            .arg("cert-manager")
            .arg("--log-format")
            .arg("text")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the webhook binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    log.lock().unwrap().push(line);
                }
            }
        });
        Webhook {
            child,
            addr,
            probe_addr,
            log,
        }
    }

    /// Waits until a log line contains `text`.
    async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log.lock().unwrap().iter().any(|l| l.contains(text)) {
            assert!(
                Instant::now() < deadline,
                "the webhook never logged {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// An HTTPS client that trusts only `ca_pem` and reaches `localhost` at the webhook.
    fn client(&self, ca_pem: &str) -> reqwest::Client {
        let tls = certwright_simulators::tls::client_config(ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    async fn wait_ready(&mut self) {
        let probes = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.probe_addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the webhook exited early: {status}");
            }
            if let Ok(response) = probes.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "the webhook never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn write_serving_cert(dir: &Path, ca: &TestCa) {
    let leaf = ca.issue_leaf(KeyKind::EcdsaP256, "localhost");
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
}

fn secret(name: &str, keys: &[&str]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some(
            keys.iter()
                .map(|k| (k.to_string(), ByteString(b"not-shown".to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// An AdmissionReview v1 as the API server sends it.
fn review(uid: &str, kind: &str, namespace: Option<&str>, spec: Value) -> Value {
    let mut metadata = json!({"name": "corp"});
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    let plural = format!("{}s", kind.to_lowercase());
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "pki.certwright.io", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "pki.certwright.io", "version": "v1alpha1", "resource": plural},
            "name": "corp",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "pki.certwright.io/v1alpha1",
                "kind": kind,
                "metadata": metadata,
                "spec": spec,
            },
            "oldObject": null,
            "dryRun": false,
        }
    })
}

/// POSTs a review and returns the `response` of the AdmissionReview that comes back.
async fn post(client: &reqwest::Client, webhook: &Webhook, body: &Value) -> Value {
    let response = client
        .post(webhook.url("/validate"))
        .json(body)
        .send()
        .await
        .expect("the webhook answers");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    answer["response"].clone()
}

fn message(response: &Value) -> &str {
    response["status"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validates_issuers_reloads_its_certificate_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig_yaml("default")).unwrap();
    let first_ca = TestCa::root(KeyKind::EcdsaP256, "webhook serving CA one");
    write_serving_cert(dir.path(), &first_ca);

    let kube = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let cert_manager: Api<Secret> = Api::namespaced(kube.clone(), "cert-manager");
    let team_a: Api<Secret> = Api::namespaced(kube, "team-a");
    let pp = PostParams::default();
    cert_manager
        .create(&pp, &secret("dev-ca", &["tls.crt", "tls.key"]))
        .await
        .unwrap();
    cert_manager
        .create(&pp, &secret("half-ca", &["tls.crt"]))
        .await
        .unwrap();
    team_a
        .create(&pp, &secret("adcs-auth", &["username", "password"]))
        .await
        .unwrap();

    let mut webhook = Webhook::start(
        &kubeconfig,
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    );
    webhook.wait_ready().await;
    let client = webhook.client(first_ca.cert_pem());

    // The TLS port answers health checks too.
    let health = client.get(webhook.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // A cluster issuer whose CA Secret is in the cluster resource namespace.
    let ca = json!({"ca": {"secretName": "dev-ca"}});
    let answer = post(
        &client,
        &webhook,
        &review("u-1", "InternalClusterIssuer", None, ca.clone()),
    )
    .await;
    assert_eq!(answer["uid"], "u-1");
    assert_eq!(answer["allowed"], true, "{answer}");

    // The same spec on a namespaced issuer: its own namespace has no such Secret. That
    // is a warning (a GitOps tool may create the Secret next), not a denial.
    let answer = post(
        &client,
        &webhook,
        &review("u-2", "InternalIssuer", Some("team-a"), ca),
    )
    .await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(
        answer["warnings"][0],
        "spec.ca.secretName: Secret \"dev-ca\" not found in namespace \"team-a\" \
         (an InternalIssuer reads Secrets from its own namespace); the issuer is not Ready \
         until it exists"
    );

    // A Secret without the key: a warning naming it, and no Secret data is ever echoed.
    let answer = post(
        &client,
        &webhook,
        &review(
            "u-3",
            "InternalClusterIssuer",
            None,
            json!({"ca": {"secretName": "half-ca"}}),
        ),
    )
    .await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(
        answer["warnings"][0],
        "spec.ca.secretName: Secret \"half-ca\" in namespace \"cert-manager\" has no tls.key"
    );
    assert!(!answer.to_string().contains("not-shown"));

    // A spec problem is denied, with its field; the missing Secret is not a problem.
    let answer = post(
        &client,
        &webhook,
        &review(
            "u-4",
            "InternalIssuer",
            Some("team-a"),
            json!({"rest": {"url": "http://pki.corp.example/api/v1", "authSecretName": "pki-auth"}}),
        ),
    )
    .await;
    assert_eq!(answer["allowed"], false);
    let fields: Vec<_> = answer["status"]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["spec.rest.url"]);
    assert_eq!(answer["status"]["code"], 422);
    assert!(
        message(&answer).starts_with("spec.rest.url: Invalid value: must use https, not http"),
        "{}",
        message(&answer)
    );

    // Allowed, with warnings.
    let answer = post(
        &client,
        &webhook,
        &review(
            "u-5",
            "InternalIssuer",
            Some("team-a"),
            json!({"adcs": {
                "url": "https://adcs.corp.example/certsrv",
                "authMethod": "basic",
                "authSecretName": "adcs-auth",
                "templateName": "WebServer",
            }}),
        ),
    )
    .await;
    assert_eq!(answer["allowed"], true, "{answer}");
    let warnings = answer["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("spec.adcs.caBundle is not set")
    );
    assert!(
        warnings[1]
            .as_str()
            .unwrap()
            .starts_with("spec.adcs.authMethod basic")
    );

    // When the API server refuses the read, the webhook allows the issuer and says why it
    // could not check: the Secret check helps people, it guards nothing.
    server.faults().fail_next(
        Method::GET,
        "/namespaces/cert-manager/secrets/dev-ca",
        403,
        1,
    );
    let answer = post(
        &client,
        &webhook,
        &review(
            "u-6",
            "InternalClusterIssuer",
            None,
            json!({"ca": {"secretName": "dev-ca"}}),
        ),
    )
    .await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(
        answer["warnings"][0].as_str().unwrap_or_default().starts_with(
            "spec.ca.secretName: could not check Secret \"dev-ca\" in namespace \"cert-manager\": \
             the API server answered 403"
        ),
        "{answer}"
    );

    // A body that is no AdmissionReview is denied, naming the cause.
    let garbage = client
        .post(webhook.url("/validate"))
        .header("content-type", "application/json")
        .body("{\"apiVersion\": 7}")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 200);
    let garbage: Value = garbage.json().await.unwrap();
    assert_eq!(garbage["response"]["allowed"], false);
    assert!(
        message(&garbage["response"]).starts_with("the body is not an AdmissionReview: "),
        "{garbage}"
    );

    // More than 1 MiB: 413.
    let huge = client
        .post(webhook.url("/validate"))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await;
    match huge {
        Ok(response) => assert_eq!(response.status(), 413),
        // The server may close the connection before the client has sent everything.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }

    // Rotate the serving certificate to one from another CA: new connections see it.
    let second_ca = TestCa::root(KeyKind::EcdsaP256, "webhook serving CA two");
    write_serving_cert(dir.path(), &second_ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fresh = webhook.client(second_ca.cert_pem());
        if let Ok(response) = fresh.get(webhook.url("/healthz")).send().await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old_trust = webhook.client(first_ca.cert_pem());
    assert!(
        old_trust.get(webhook.url("/healthz")).send().await.is_err(),
        "a client trusting only the old CA must now fail"
    );

    // A broken file keeps the current certificate: the webhook sees it, says so, and
    // goes on serving.
    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    webhook
        .wait_log("the serving certificate files changed but do not load")
        .await;
    let fresh = webhook.client(second_ca.cert_pem());
    let still = fresh.get(webhook.url("/healthz")).send().await.unwrap();
    assert_eq!(still.status(), 200);

    // SIGTERM: a clean exit.
    #[cfg(unix)]
    {
        let pid = webhook.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = webhook.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.success(), "{status}");
    }
}
