//! The `certwright` binary as an operator runs it: files in, exit code and output out,
//! against a local CA given as files, a real cfssl server and the REST simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use certwright_simulators::cfssl::{AUTH_PROFILE, CfsslServer, PROFILE};
use certwright_simulators::fixtures::{CsrBuilder, KeyKind, TestCa};
use certwright_simulators::rest_sim::{Behaviour, RestSimulator, SimAuth};

fn b64(data: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
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

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn csr(&self) -> PathBuf {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("web.apps.example.test")
            .dns("web.apps.example.test")
            .dns("web")
            .build();
        self.write("req.pem", &csr.csr_pem)
    }
}

fn certwright(args: &[&str], files: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_certwright"));
    command.args(args);
    for f in files {
        command.arg(f);
    }
    command.output().expect("certwright runs")
}

/// Runs the binary off the async runtime, which keeps serving the simulator.
async fn certwright_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_certwright"))
            .args(args)
            .output()
            .expect("certwright runs")
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn local_ca_files(files: &Files) -> (PathBuf, PathBuf, TestCa) {
    let ca = TestCa::root(KeyKind::EcdsaP384, "Corp Dev CA");
    let issuer = files.write(
        "issuer.yaml",
        "apiVersion: pki.certwright.io/v1alpha1\nkind: InternalClusterIssuer\nmetadata:\n  name: dev\nspec:\n  ca:\n    secretName: dev-ca\n  defaultDuration: 2160h\n",
    );
    let secret = files.write(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: dev-ca\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(ca.cert_pem()),
            b64(ca.key_pem())
        ),
    );
    (issuer, secret, ca)
}

#[test]
fn sign_through_a_local_ca_given_as_files() {
    let files = Files::new();
    let (issuer, secret, _ca) = local_ca_files(&files);
    let csr = files.csr();
    let out = certwright(
        &["--output", "json", "sign", "--duration", "720h", "--issuer"],
        &[&issuer],
    );
    // Missing --csr is a usage error.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let mut command = Command::new(env!("CARGO_BIN_EXE_certwright"));
    command
        .args(["--output", "json", "sign", "--duration", "720h", "--issuer"])
        .arg(&issuer)
        .arg("--secret")
        .arg(&secret)
        .arg("--csr")
        .arg(&csr);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chain = certwright_x509::parse_pem_bundle(json["certificate"].as_str().unwrap().as_bytes())
        .unwrap();
    let root = certwright_x509::parse_pem_bundle(json["ca"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(root[0].subject().to_string(), "CN=Corp Dev CA");
    chain[0].verify_signed_by(&root[0]).unwrap();
    assert_eq!(chain[0].sans().dns, ["web.apps.example.test", "web"]);
    // notBefore is backdated a minute for clock skew; the duration counts from signing.
    let lifetime = chain[0].not_after().duration_since(chain[0].not_before());
    assert_eq!(lifetime.as_secs(), 720 * 3600 + 60);
    assert_eq!(
        json["leaf"]["dnsNames"],
        serde_json::json!(["web.apps.example.test", "web"])
    );
}

#[test]
fn check_local_ca_and_name_a_missing_secret() {
    let files = Files::new();
    let (issuer, secret, _ca) = local_ca_files(&files);
    let mut ok = Command::new(env!("CARGO_BIN_EXE_certwright"));
    let out = ok
        .arg("check")
        .arg("--issuer")
        .arg(&issuer)
        .arg("--secret")
        .arg(&secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("InternalClusterIssuer/dev: ready (ca)")
            && text(&out.stdout).contains(
                "Kubernetes CSRs: signerName internalclusterissuers.pki.certwright.io/dev"
            ),
        "{}",
        text(&out.stdout)
    );

    let out = certwright(&["check", "--issuer"], &[&issuer]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Secret \"dev-ca\" not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_invalid_issuer_names_every_field() {
    let files = Files::new();
    let issuer = files.write(
        "bad.yaml",
        "apiVersion: pki.certwright.io/v1alpha1\nkind: InternalIssuer\nmetadata:\n  name: bad\nspec:\n  rest:\n    url: http://pki.corp.example\n    authSecretName: Bad_Name\n",
    );
    let out = certwright(&["--output", "json", "check", "--issuer"], &[&issuer]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains("spec.rest.url: Invalid value: must use https"),
        "{error}"
    );
    assert!(error.contains("spec.rest.authSecretName"), "{error}");
}

#[test]
fn inspect_explains_a_csr_and_a_certificate() {
    let files = Files::new();
    let csr = files.csr();
    let out = certwright(&["--output", "json", "inspect"], &[&csr]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["type"], "csr");
    assert_eq!(json["subject"], "CN=web.apps.example.test");
    assert_eq!(json["publicKey"], "ECDSA P-256");
    assert_eq!(
        json["dnsNames"],
        serde_json::json!(["web.apps.example.test", "web"])
    );

    let ca = TestCa::root(KeyKind::Ed25519, "Inspect Me");
    let cert = files.write("ca.pem", ca.cert_pem());
    let out = certwright(&["inspect"], &[&cert]);
    assert_eq!(out.status.code(), Some(0));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("subject: CN=Inspect Me") && shown.contains("isCA: true"),
        "{shown}"
    );

    let garbage = files.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    );
    let out = certwright(&["inspect"], &[&garbage]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("garbage.pem"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn inputs_without_a_known_size_are_read_through_a_cap() {
    // /dev/zero has no size and no end; a FIFO reports size 0 whatever is written to it.
    let out = certwright(&["inspect"], &[Path::new("/dev/zero")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("more than 1048576 bytes"),
        "{}",
        text(&out.stderr)
    );
    let files = Files::new();
    let fifo = files.dir.path().join("csr.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut pipe = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            // Twice the cap; the reader stops early and the write then fails.
            let _ = pipe.write_all(&vec![b'A'; 2 * 1024 * 1024]);
        })
    };
    let out = certwright(&["inspect"], &[&fifo]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("more than"),
        "{}",
        text(&out.stderr)
    );
    writer.join().unwrap();
}

fn cfssl_issuer(
    files: &Files,
    server: &CfsslServer,
    profile: &str,
    ca_pem: &str,
    auth: bool,
) -> PathBuf {
    let auth_line = if auth {
        "    authSecretName: cfssl-auth\n"
    } else {
        ""
    };
    files.write(
        "cfssl-issuer.yaml",
        &format!(
            "apiVersion: pki.certwright.io/v1alpha1\nkind: InternalClusterIssuer\nmetadata:\n  name: cfssl\nspec:\n  rest:\n    url: {}\n    flavor: cfssl\n    templateName: {profile}\n    caBundle: {}\n{auth_line}    timeout: 10s\n",
            server.url(),
            b64(ca_pem)
        ),
    )
}

#[test]
fn sign_and_check_through_a_running_cfssl() {
    let server = CfsslServer::start().unwrap_or_else(|e| panic!("{e}"));
    let files = Files::new();
    let issuer = cfssl_issuer(&files, &server, PROFILE, server.tls_ca_pem(), false);
    let csr = files.csr();
    let mut command = Command::new(env!("CARGO_BIN_EXE_certwright"));
    let out = command
        .arg("sign")
        .arg("--issuer")
        .arg(&issuer)
        .arg("--csr")
        .arg(&csr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let chain = certwright_x509::parse_pem_bundle(&out.stdout).unwrap();
    assert_eq!(chain.len(), 2, "leaf then cfssl's CA");
    chain[0].verify_signed_by(&chain[1]).unwrap();
    assert_eq!(
        chain[1].to_pem(),
        server.signing_ca_pem().replace("\r\n", "\n")
    );
    assert!(text(&out.stderr).contains("issued by InternalClusterIssuer/cfssl"));

    // authsign with the right HMAC key passes check; a wrong key is named.
    let issuer = cfssl_issuer(&files, &server, AUTH_PROFILE, server.tls_ca_pem(), true);
    let good = files.write(
        "good.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cfssl-auth\nstringData:\n  key: {}\n",
            server.auth_key_hex()
        ),
    );
    let out = certwright(
        &["check", "--secret"],
        &[&good, Path::new("--issuer"), &issuer],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = files.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cfssl-auth\nstringData:\n  key: 00112233445566778899aabbccddeeff\n",
    );
    let out = certwright(
        &["check", "--secret"],
        &[&bad, Path::new("--issuer"), &issuer],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not authorized"),
        "{}",
        text(&out.stderr)
    );

    // A caBundle that does not sign cfssl's TLS certificate is named as such.
    let other = TestCa::root(KeyKind::EcdsaP256, "Some Other CA");
    let issuer = cfssl_issuer(&files, &server, PROFILE, other.cert_pem(), false);
    let out = certwright(&["check", "--issuer"], &[&issuer]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not trusted by caBundle"),
        "{}",
        text(&out.stderr)
    );
}

fn rest_issuer(files: &Files, sim: &RestSimulator) -> (String, String) {
    let issuer = files.write(
        "rest-issuer.yaml",
        &format!(
            "apiVersion: pki.certwright.io/v1alpha1\nkind: InternalIssuer\nmetadata:\n  name: corp\n  namespace: apps\nspec:\n  rest:\n    url: {}\n    authSecretName: pki-auth\n    caBundle: {}\n    timeout: 5s\n",
            sim.url(),
            b64(sim.tls_ca_pem())
        ),
    );
    let secret = files.write(
        "rest-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: pki-auth\nstringData:\n  username: svc-certwright\n  password: wrong-password\n",
    );
    (issuer.display().to_string(), secret.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_wrong_password_and_sign_reports_pending() {
    let sim = RestSimulator::start().await.unwrap();
    sim.set_auth(SimAuth::Basic {
        username: "svc-certwright".into(),
        password: "right-password".into(),
    });
    let files = Files::new();
    let (issuer, secret) = rest_issuer(&files, &sim);
    let out = certwright_async(vec![
        "check".into(),
        "--issuer".into(),
        issuer.clone(),
        "--secret".into(),
        secret.clone(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not authorized by the PKI"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("wrong-password"),
        "the password must not be echoed"
    );

    sim.set_auth(SimAuth::Basic {
        username: "svc-certwright".into(),
        password: "wrong-password".into(),
    });
    sim.set_behaviour(Behaviour::Pending);
    let csr = files.csr().display().to_string();
    let out = certwright_async(vec![
        "--output".into(),
        "json".into(),
        "sign".into(),
        "--issuer".into(),
        issuer,
        "--secret".into(),
        secret,
        "--csr".into(),
        csr,
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = json["pending"]["id"].as_str().unwrap();
    assert_eq!(sim.waiting_ids(), [id.to_string()]);
}
