//! `certwright policy test`: the approver's decision from files, with no cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use certwright_simulators::fixtures::{CsrBuilder, KeyKind};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certwright"))
        .args(args)
        .output()
        .expect("certwright runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn request_manifest(dir: &Path, names: &[&str], duration: &str, key: KeyKind) -> PathBuf {
    let mut builder = CsrBuilder::new(key).common_name(names[0]);
    for name in names {
        builder = builder.dns(name);
    }
    let csr = builder.build();
    let manifest = format!(
        r#"apiVersion: cert-manager.io/v1
kind: CertificateRequest
metadata:
  name: api-1
  namespace: payments
spec:
  request: {}
  duration: {duration}
  usages: ["digital signature", "key encipherment", "server auth"]
  issuerRef:
    name: internal-pki-issuer
    kind: ClusterIssuer
    group: cert-manager.io
"#,
        base64::engine::general_purpose::STANDARD.encode(&csr.csr_pem)
    );
    let path = dir.join("request.yaml");
    std::fs::write(&path, manifest).unwrap();
    path
}

#[test]
fn a_compliant_request_is_approved_and_a_bad_one_lists_every_violation() {
    let dir = tempfile::tempdir().unwrap();
    let policy = examples().join("payments-namespace-policy.yaml");
    let good = request_manifest(
        dir.path(),
        &["api.payments.internal.acme.corp"],
        "720h",
        KeyKind::EcdsaP256,
    );
    let out = run(&[
        "policy",
        "test",
        "--policy",
        policy.to_str().unwrap(),
        "--request",
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("payments/api-1: approved"),
        "{}",
        stdout(&out)
    );

    let bad = request_manifest(
        dir.path(),
        &["api.payments.internal.acme.corp", "x.other.corp"],
        "2400h",
        KeyKind::Rsa2048,
    );
    let out = run(&[
        "policy",
        "test",
        "--policy",
        policy.to_str().unwrap(),
        "--request",
        bad.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer["decision"], "denied");
    let fields: Vec<&str> = answer["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["dnsNames[1]", "spec.duration", "privateKey"]);
}

#[test]
fn a_csr_with_flags_and_an_approver_policy_manifest() {
    let dir = tempfile::tempdir().unwrap();
    // approver-policy's own kind is read too: the article's policy as written.
    let text = std::fs::read_to_string(examples().join("payments-namespace-policy.yaml"))
        .unwrap()
        .replace(
            "pki.certwright.io/v1alpha1",
            "policy.cert-manager.io/v1alpha1",
        )
        .replace("kind: IssuancePolicy", "kind: CertificateRequestPolicy");
    let policy = dir.path().join("crp.yaml");
    std::fs::write(&policy, text).unwrap();
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("web.payments.internal.acme.corp")
        .dns("web.payments.acme.corp")
        .build();
    let csr_path = dir.path().join("req.pem");
    std::fs::write(&csr_path, &csr.csr_pem).unwrap();
    let args = |namespace: &str| {
        run(&[
            "policy",
            "test",
            "--policy",
            policy.to_str().unwrap(),
            "--request",
            csr_path.to_str().unwrap(),
            "--namespace",
            namespace,
            "--issuer-name",
            "internal-pki-issuer",
            "--issuer-kind",
            "ClusterIssuer",
            "--duration",
            "720h",
            "--usage",
            "server auth",
        ])
    };
    let out = args("payments");
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = args("other");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("no IssuancePolicy covers namespace other"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn manual_and_ticket_policies_say_what_the_request_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let csr = CsrBuilder::new(KeyKind::Rsa4096)
        .dns("api.acme.corp")
        .build();
    let csr_path = dir.path().join("req.pem");
    std::fs::write(&csr_path, &csr.csr_pem).unwrap();
    let external = examples().join("external-certificates-require-approval.yaml");
    let out = run(&[
        "policy",
        "test",
        "--policy",
        external.to_str().unwrap(),
        "--request",
        csr_path.to_str().unwrap(),
        "--namespace",
        "production",
        "--issuer-name",
        "public-issuer",
        "--issuer-kind",
        "ClusterIssuer",
        "--duration",
        "720h",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("manual"), "{}", stdout(&out));

    let ticket = examples().join("change-ticket-approval.yaml");
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("db.internal.acme.corp")
        .dns("db.internal.acme.corp")
        .build();
    std::fs::write(&csr_path, &csr.csr_pem).unwrap();
    let with_ticket = |id: &str| {
        run(&[
            "policy",
            "test",
            "--policy",
            ticket.to_str().unwrap(),
            "--request",
            csr_path.to_str().unwrap(),
            "--namespace",
            "db",
            "--namespace-label",
            "pki.certwright.io/change-controlled=true",
            "--issuer-name",
            "corp",
            "--duration",
            "720h",
            "--annotation",
            &format!("pki.certwright.io/change-ticket={id}"),
        ])
    };
    let out = with_ticket("CHG-4521");
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("CHG-4521"), "{}", stdout(&out));
    // A ticket of another project is not accepted.
    let out = with_ticket("OPS-1");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("CHG-*"), "{}", stdout(&out));
}

#[test]
fn a_bad_policy_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.yaml");
    std::fs::write(
        &policy,
        "apiVersion: pki.certwright.io/v1alpha1\nkind: IssuancePolicy\nmetadata: {name: bad}\nspec:\n  selector: {}\n  constraints: {maxDuration: forever}\n",
    )
    .unwrap();
    let csr = CsrBuilder::new(KeyKind::EcdsaP256).dns("a.corp").build();
    let csr_path = dir.path().join("req.pem");
    std::fs::write(&csr_path, &csr.csr_pem).unwrap();
    let out = run(&[
        "policy",
        "test",
        "--policy",
        policy.to_str().unwrap(),
        "--request",
        csr_path.to_str().unwrap(),
        "--issuer-name",
        "corp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.selector") && err.contains("spec.constraints.maxDuration"),
        "{err}"
    );
}
