//! `certwright check` and `certwright sign` with an EJBCA issuer given as files, against
//! the EJBCA simulator: OAuth2 client credentials and a TLS client certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use base64::Engine as _;
use certwright_simulators::ejbca_sim::{
    APPROVAL_PROFILE, CA_NAME, CERTIFICATE_PROFILE, END_ENTITY_PROFILE, EjbcaSimulator,
};
use certwright_simulators::fixtures::{CsrBuilder, KeyKind, TestCa};

const CLIENT_ID: &str = "certwright-cli";
const CLIENT_SECRET: &str = "cli-client-secret";

fn b64(data: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }

    fn issuer(&self, sim: &EjbcaSimulator) -> String {
        self.issuer_of_ca(sim, CA_NAME)
    }

    fn issuer_of_ca(&self, sim: &EjbcaSimulator, ca_name: &str) -> String {
        self.write(
            "issuer.yaml",
            &format!(
                "apiVersion: pki.certwright.io/v1alpha1\n\
                 kind: InternalIssuer\n\
                 metadata:\n  name: corp-ejbca\n  namespace: apps\n\
                 spec:\n  ejbca:\n\
                 \x20   url: {}\n\
                 \x20   authSecretName: ejbca-client\n\
                 \x20   caBundle: {}\n\
                 \x20   certificateAuthorityName: \"{ca_name}\"\n\
                 \x20   certificateProfileName: {CERTIFICATE_PROFILE}\n\
                 \x20   endEntityProfileName: {END_ENTITY_PROFILE}\n\
                 \x20   endEntityName: dns\n\
                 \x20   sendEndTime: true\n\
                 \x20   timeout: 5s\n",
                sim.url(),
                b64(sim.tls_ca_pem())
            ),
        )
    }

    /// The OAuth2 client credentials Secret of the simulator's client.
    fn oauth_secret(&self, sim: &EjbcaSimulator) -> String {
        self.write(
            "secret.yaml",
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ejbca-client\n  namespace: apps\n\
                 type: Opaque\nstringData:\n  tokenUrl: {}\n  clientId: {CLIENT_ID}\n  \
                 clientSecret: {CLIENT_SECRET}\n",
                sim.token_url()
            ),
        )
    }

    fn csr(&self) -> String {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("web.apps.example.test")
            .dns("web.apps.example.test")
            .dns("web")
            .build();
        self.write("req.pem", &csr.csr_pem)
    }
}

/// Runs the binary off the async runtime, which keeps serving the simulator.
async fn certwright(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_certwright"))
            .args(args)
            .output()
            .expect("certwright runs")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_sign_with_oauth_client_credentials() {
    let sim = EjbcaSimulator::start_oauth(CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let files = Files::new();
    let issuer = files.issuer(&sim);
    let secret = files.write(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ejbca-client\n  namespace: apps\n\
             type: Opaque\nstringData:\n  tokenUrl: {}\n  clientId: {CLIENT_ID}\n  \
             clientSecret: {CLIENT_SECRET}\n  scopes: ejbca\n",
            sim.token_url()
        ),
    );

    let out = certwright(&["check", "--issuer", &issuer, "--secret", &secret]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("InternalIssuer/corp-ejbca: ready (ejbca)"),
        "{stdout}"
    );
    assert!(stdout.contains("CA IssuingCA"), "{stdout}");
    assert!(stdout.contains("OAuth2 client"), "{stdout}");

    let csr = files.csr();
    let out = certwright(&[
        "sign",
        "--issuer",
        &issuer,
        "--secret",
        &secret,
        "--csr",
        &csr,
        "--duration",
        "720h",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let chain = certwright_x509::parse_pem_bundle(&out.stdout).unwrap();
    assert_eq!(chain.len(), 3, "leaf, issuing CA, root");
    chain[0].verify_signed_by(&chain[1]).unwrap();
    chain[1].verify_signed_by(&chain[2]).unwrap();
    assert_eq!(chain[2].to_pem(), sim.issuing_root_pem());
    let lifetime = chain[0].not_after().duration_since(chain[0].not_before());
    assert!(
        lifetime.as_secs().abs_diff(720 * 3600) <= 120,
        "end_time honoured: {lifetime:?}"
    );
    assert_eq!(sim.end_entities(), ["web.apps.example.test"]);

    // A wrong client secret: check fails with exit code 1 and says why.
    let wrong = files.write(
        "wrong.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ejbca-client\ntype: Opaque\n\
             stringData:\n  tokenUrl: {}\n  clientId: {CLIENT_ID}\n  clientSecret: not-the-secret\n",
            sim.token_url()
        ),
    );
    let enrollments = sim.enrollments();
    let out = certwright(&["check", "--issuer", &issuer, "--secret", &wrong]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not authorized by the PKI"), "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(stderr.contains("clientSecret"), "{stderr}");
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
    assert_eq!(sim.enrollments(), enrollments);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_sign_with_a_client_certificate() {
    let clients = TestCa::root(KeyKind::EcdsaP256, "Corp Client CA");
    let sim = EjbcaSimulator::start_mtls(clients.cert_pem())
        .await
        .unwrap();
    let client = clients.issue_leaf(KeyKind::EcdsaP256, "certwright.corp.example");
    let files = Files::new();
    let issuer = files.issuer(&sim);
    let secret = files.write(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ejbca-client\n\
             type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&client.cert_pem),
            b64(&client.key_pem)
        ),
    );
    let out = certwright(&[
        "--output", "json", "check", "--issuer", &issuer, "--secret", &secret,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["backend"], "ejbca");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("TLS client certificate"),
        "{json}"
    );

    let csr = files.csr();
    let out = certwright(&[
        "--output", "json", "sign", "--issuer", &issuer, "--secret", &secret, "--csr", &csr,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chain = certwright_x509::parse_pem_bundle(json["certificate"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(json["ca"].as_str().unwrap(), sim.issuing_root_pem());
    assert_eq!(
        json["leaf"]["dnsNames"],
        serde_json::json!(["web.apps.example.test", "web"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_finished_with_poll() {
    let sim = EjbcaSimulator::start_oauth(CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let files = Files::new();
    let issuer = files.issuer(&sim);
    let secret = files.oauth_secret(&sim);
    let csr = files.csr();
    let out = certwright(&[
        "--output",
        "json",
        "sign",
        "--issuer",
        &issuer,
        "--secret",
        &secret,
        "--csr",
        &csr,
        "--template",
        APPROVAL_PROFILE,
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = json["pending"]["id"].as_str().unwrap().to_string();
    let poll = [
        "poll", "--issuer", &issuer, "--secret", &secret, "--csr", &csr, "--id", &id,
    ];
    let out = certwright(&poll).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let request_id: i64 = id.split('.').next().unwrap().parse().unwrap();
    assert!(sim.approve(request_id));
    let out = certwright(&poll).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let chain = certwright_x509::parse_pem_bundle(&out.stdout).unwrap();
    assert_eq!(chain.len(), 3, "leaf, issuing CA, root");
    assert_eq!(
        sim.enrollments(),
        1,
        "finished by finalize, not enrolled again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_named_like_a_dn_is_an_ejbca_name() {
    let sim = EjbcaSimulator::start_oauth(CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let files = Files::new();
    // "CN=ExampleCA" is the REST contract's own example of a CA name: the issuer is
    // valid, and EJBCA is asked for it (this simulator knows no such CA).
    let issuer = files.issuer_of_ca(&sim, "CN=ExampleCA");
    let secret = files.oauth_secret(&sim);
    let out = certwright(&["check", "--issuer", &issuer, "--secret", &secret]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("EJBCA lists no CA named \"CN=ExampleCA\""),
        "{stderr}"
    );
}
