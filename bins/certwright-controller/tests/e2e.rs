//! The real controller binary against the testkit API server: issuance, metrics and
//! probes, a graceful stop, and two replicas with leader election where the leader is
//! killed mid-run and no request gets two certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use certwright_simulators::rest_sim::RestSimulator;
use certwright_simulators::tls::unused_local_port as free_port;
use certwright_testkit::apiserver::ApiServer;
use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};
use serde_json::{Value, json};

const CR: &str = "certificaterequests.cert-manager.io";

struct Controller {
    child: Child,
    metrics: u16,
    health: u16,
}

impl Controller {
    fn start(kubeconfig: &Path, name: &str, leader_elect: bool) -> Controller {
        Self::start_with_env(kubeconfig, name, leader_elect, &[])
    }

    fn start_with_env(
        kubeconfig: &Path,
        name: &str,
        leader_elect: bool,
        env: &[(&str, String)],
    ) -> Controller {
        let (metrics, health) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_certwright-controller"));
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let child = command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--cluster-resource-namespace", "cert-manager"])
            // The REST simulator is on loopback, which the egress policy refuses to
            // issuers; these tests' issuers are cluster issuers, written by the platform.
            .arg("--egress-exempt-cluster-issuers")
            .args([
                "--leader-elect",
                if leader_elect { "true" } else { "false" },
            ])
            .args(["--leader-election-lease-duration", "2s"])
            .args(["--leader-election-renew-deadline", "1500ms"])
            .args(["--leader-election-retry-period", "200ms"])
            .args(["--metrics-bind-address", &format!("127.0.0.1:{metrics}")])
            .args([
                "--health-probe-bind-address",
                &format!("127.0.0.1:{health}"),
            ])
            .args(["--log-format", "json"])
            .env("POD_NAME", name)
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("controller starts");
        Controller {
            child,
            metrics,
            health,
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn get(port: u16, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{port}{path}");
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect_timeout(
                &url[7..].split('/').next()?.parse().ok()?,
                Duration::from_millis(500),
            )
            .ok()?;
            use std::io::{Read, Write};
            let path = &url[url[7..].find('/').map(|i| i + 7)?..];
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let code = response.split_whitespace().nth(1)?.parse().ok()?;
            let body = response
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            Some((code, body))
        })
        .await
        .unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn api_server() -> (ApiServer, tempfile::NamedTempFile) {
    let server = ApiServer::start().await.unwrap();
    server
        .register_crds_yaml(certwright_testkit::crds::CERT_MANAGER)
        .unwrap();
    for file in [
        "internalissuers.pki.certwright.io.yaml",
        "internalclusterissuers.pki.certwright.io.yaml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/crds")
            .join(file);
        server
            .register_crds_yaml(&std::fs::read_to_string(path).unwrap())
            .unwrap();
    }
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), server.kubeconfig_yaml("default")).unwrap();
    (server, kubeconfig)
}

fn approved_request(name: &str, issuer: &str) -> Value {
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(&format!("{name}.example.test"))
        .dns(&format!("{name}.example.test"))
        .build();
    use base64::Engine as _;
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}")},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr.csr_pem),
            "issuerRef": {"name": issuer, "kind": "InternalClusterIssuer", "group": "pki.certwright.io"},
            "duration": "24h"
        },
        "status": {"conditions": [{
            "type": "Approved", "status": "True", "reason": "policy.cert-manager.io",
            "message": "approved", "lastTransitionTime": jiff::Timestamp::now().to_string()
        }]}
    })
}

fn ready_reason(server: &ApiServer, name: &str) -> Option<String> {
    let cr = server.get_json(CR, "apps", name)?;
    cr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["reason"].as_str())
        .map(str::to_string)
}

async fn wait_issued(server: &ApiServer, names: &[String], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let pending: Vec<&String> = names
            .iter()
            .filter(|n| ready_reason(server, n).as_deref() != Some("Issued"))
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not issued in time: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_issues_serves_metrics_and_stops_gracefully() {
    let (server, kubeconfig) = api_server().await;
    let ca = TestCa::root(KeyKind::EcdsaP256, "e2e root");
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    server
        .create_json(
            "secrets",
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "dev-ca", "namespace": "cert-manager"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": b64(ca.cert_pem()), "tls.key": b64(ca.key_pem())}
            }),
        )
        .unwrap();
    server
        .create_json(
            "internalclusterissuers.pki.certwright.io",
            json!({
                "apiVersion": "pki.certwright.io/v1alpha1", "kind": "InternalClusterIssuer",
                "metadata": {"name": "dev"}, "spec": {"ca": {"secretName": "dev-ca"}}
            }),
        )
        .unwrap();
    // An OTLP/HTTP collector stand-in: records the paths it is sent.
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector_port = collector.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let received = received.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in collector.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut buf = vec![0u8; 1 << 20];
                let n = stream.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(line) = head.lines().next() {
                    received.lock().unwrap().push(line.to_string());
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
    }
    let controller = Controller::start_with_env(
        kubeconfig.path(),
        "solo",
        false,
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector_port}"),
        )],
    );
    let names: Vec<String> = (0..5).map(|i| format!("web-{i}")).collect();
    for name in &names {
        server
            .create_json(CR, approved_request(name, "dev"))
            .unwrap();
    }
    wait_issued(&server, &names, Duration::from_secs(30)).await;

    // The status write lands before the controller counts the result: a scrape may
    // come between the two.
    let issued = r#"certwright_certificate_requests_total{issuer_name="dev",issuer_kind="InternalClusterIssuer",issuer_group="pki.certwright.io",namespace="",resource="CertificateRequest",result="issued"} 5"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (code, body) = Controller::get(controller.metrics, "/metrics")
            .await
            .expect("metrics answer");
        assert_eq!(code, 200);
        if body.contains(issued) {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("certwright_issuer_ready"), "{body}");
    let (code, _) = Controller::get(controller.health, "/healthz")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (code, _) = Controller::get(controller.health, "/readyz").await.unwrap();
    assert_eq!(code, 200);

    controller.signal("-TERM");
    let mut controller = controller;
    let status = tokio::task::spawn_blocking(move || controller.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_the_leader_killed_mid_run_never_issue_twice() {
    let (server, kubeconfig) = api_server().await;
    let sim = RestSimulator::start().await.unwrap();
    sim.set_signing_delay(Duration::from_millis(20));
    use base64::Engine as _;
    server
        .create_json("internalclusterissuers.pki.certwright.io", json!({
            "apiVersion": "pki.certwright.io/v1alpha1", "kind": "InternalClusterIssuer",
            "metadata": {"name": "corp"},
            "spec": {
                "rest": {
                    "url": sim.url(),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(sim.tls_ca_pem()),
                    "timeout": "5s"
                },
                "requestsPerSecond": 100,
                "maxConcurrentRequests": 4
            }
        }))
        .unwrap();
    let a = Controller::start(kubeconfig.path(), "replica-a", true);
    let b = Controller::start(kubeconfig.path(), "replica-b", true);
    // Let one of them lead.
    let mut leader = None;
    for _ in 0..600 {
        if let Some(lease) = server.get_json(
            "leases.coordination.k8s.io",
            "cert-manager",
            "certwright-controller",
        ) {
            leader = lease["spec"]["holderIdentity"].as_str().map(str::to_string);
            if leader.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = leader.expect("a leader is elected");
    let names: Vec<String> = (0..40).map(|i| format!("svc-{i}")).collect();
    for name in &names[..20] {
        server
            .create_json(CR, approved_request(name, "corp"))
            .unwrap();
    }
    // Kill the leader without warning while it works: once it has issued something.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !names[..20]
        .iter()
        .any(|n| ready_reason(&server, n).as_deref() == Some("Issued"))
    {
        assert!(tokio::time::Instant::now() < deadline, "nothing issued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (killed, standby) = if leader == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    killed.signal("-KILL");
    for name in &names[20..] {
        server
            .create_json(CR, approved_request(name, "corp"))
            .unwrap();
    }
    wait_issued(&server, &names, Duration::from_secs(60)).await;
    let lease = server
        .get_json(
            "leases.coordination.k8s.io",
            "cert-manager",
            "certwright-controller",
        )
        .unwrap();
    assert_ne!(
        lease["spec"]["holderIdentity"],
        json!(leader),
        "the standby took over"
    );
    // One certificate per request: the uid is the idempotency key, so a submission the
    // killed leader made but never recorded is answered with the same certificate.
    assert_eq!(
        sim.certificates_issued(),
        40,
        "{} submissions",
        sim.sign_submissions()
    );
    drop(standby);
    drop(killed);
}
