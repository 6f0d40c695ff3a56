//! `certwright check` and `certwright sign` against the certsrv simulator, with an AD CS
//! issuer and its Secret given as files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use base64::Engine as _;
use certwright_simulators::adcs_sim::{
    AdcsSimulator, Behaviour, DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_USER,
};
use certwright_simulators::fixtures::{CsrBuilder, KeyKind};

fn b64(data: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn certwright(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_certwright"))
            .args(args)
            .output()
            .expect("certwright runs")
    })
    .await
    .unwrap()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }
}

fn issuer_files(sim: &AdcsSimulator, password: &str) -> (Files, String, String) {
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    let issuer = files.write(
        "adcs-issuer.yaml",
        &format!(
            "apiVersion: pki.certwright.io/v1alpha1\nkind: InternalClusterIssuer\nmetadata:\n  name: corp-adcs\nspec:\n  adcs:\n    url: {}\n    authMethod: ntlm\n    authSecretName: adcs-auth\n    caBundle: {}\n    templateName: WebServer\n    pollInterval: 5m\n    timeout: 5s\n",
            sim.url(),
            b64(sim.tls_ca_pem())
        ),
    );
    let secret = files.write(
        "adcs-secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: adcs-auth\nstringData:\n  username: {DEFAULT_USER}\n  password: \"{password}\"\n  domain: {DEFAULT_DOMAIN}\n"
        ),
    );
    (files, issuer, secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_sign_through_ad_cs() {
    let sim = AdcsSimulator::start().await.unwrap();
    let (files, issuer, secret) = issuer_files(&sim, DEFAULT_PASSWORD);
    let out = certwright(vec![
        "check".into(),
        "--issuer".into(),
        issuer.clone(),
        "--secret".into(),
        secret.clone(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("AD CS answered; template WebServer; CA chain of 2"),
        "{}",
        text(&out.stdout)
    );

    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("web.apps.example.test")
        .dns("web.apps.example.test")
        .build();
    let csr = files.write("req.pem", &csr.csr_pem);
    let sign = |csr: String| {
        vec![
            "--output".to_string(),
            "json".into(),
            "sign".into(),
            "--issuer".into(),
            issuer.clone(),
            "--secret".into(),
            secret.clone(),
            "--csr".into(),
            csr,
        ]
    };
    let out = certwright(sign(csr.clone())).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chain = certwright_x509::parse_pem_bundle(json["certificate"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then the issuing CA");
    assert_eq!(json["ca"].as_str().unwrap(), sim.root_pem());

    sim.set_behaviour(Behaviour::Pending);
    let out = certwright(sign(csr.clone())).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = json["pending"]["id"].as_str().unwrap().to_string();
    assert_eq!(sim.waiting_ids(), std::slice::from_ref(&id));

    // `poll` asks again under the id: still pending (exit 3), then issued (exit 0).
    let poll = || {
        vec![
            "poll".to_string(),
            "--issuer".into(),
            issuer.clone(),
            "--secret".into(),
            secret.clone(),
            "--csr".into(),
            csr.clone(),
            "--id".into(),
            id.clone(),
        ]
    };
    let out = certwright(poll()).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("pending id {id}")),
        "{}",
        text(&out.stdout)
    );
    assert!(sim.approve(&id));
    let out = certwright(poll()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let chain = certwright_x509::parse_pem_bundle(&out.stdout).unwrap();
    assert_eq!(chain.len(), 3, "leaf, issuing CA, root");
    assert_eq!(sim.submissions(), 2, "polling submits nothing");

    // A request denied on the page after its submission fails (exit 1), not pending.
    sim.set_behaviour(Behaviour::DenyOnFetch("no owner on record".into()));
    let out = certwright(sign(csr)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("no owner on record"),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_refused_credentials_without_echoing_them() {
    let sim = AdcsSimulator::start().await.unwrap();
    let (_files, issuer, secret) = issuer_files(&sim, "Wr0ng-Horse!");
    let out = certwright(vec![
        "check".into(),
        "--issuer".into(),
        issuer,
        "--secret".into(),
        secret,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not authorized by the PKI"), "{stderr}");
    assert!(stderr.contains("NTLM"), "{stderr}");
    assert!(!stderr.contains("Wr0ng-Horse!"), "{stderr}");
}
