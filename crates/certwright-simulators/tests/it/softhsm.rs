//! The local CA with its key in a PKCS#11 token, against a real SoftHSM2: every key type
//! and signature scheme, and each way a token fails, named by its fault, and recovered
//! from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_ca::{CaFault, LocalCa, LocalCaConfig, RsaScheme, TokenKeyConfig, TokenRef};
use certwright_pki::{Backend, Error, Outcome, SignRequest};
use certwright_simulators::fixtures::{CsrBuilder, KeyKind, TestCa};
use certwright_simulators::softhsm::{SoftHsm, USER_PIN};
use certwright_x509::{Certificate, Csr};

/// The DER of each signature algorithm's OID, as it appears in a certificate.
const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const RSA_PKCS1_SHA256: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
];
const RSA_PSS: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
];

fn signed_with(cert: &Certificate, oid: &[u8]) -> bool {
    cert.der().windows(oid.len()).any(|w| w == oid)
}

fn config(hsm: &SoftHsm, key_label: &str) -> TokenKeyConfig {
    TokenKeyConfig::new(
        hsm.module(),
        TokenRef::Label(hsm.label().to_string()),
        USER_PIN,
    )
    .key_label(key_label)
    .reload_interval(Duration::ZERO)
}

fn request(name: &str) -> SignRequest {
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(name)
        .dns(name)
        .build();
    let mut request = SignRequest::new(Csr::parse(csr.csr_pem.as_bytes()).unwrap(), "softhsm-test");
    request.duration = Some(Duration::from_secs(3600));
    request
}

async fn issue(ca: &LocalCa, name: &str) -> Result<Vec<Certificate>, Error> {
    match ca.sign(&request(name)).await? {
        Outcome::Issued(bundle) => Ok(bundle.chain.into_iter().chain(bundle.ca).collect()),
        other => panic!("expected a certificate, got {other:?}"),
    }
}

fn fault(result: Result<impl std::fmt::Debug, Error>) -> (CaFault, Error) {
    let e = result.expect_err("the token should fail");
    (
        CaFault::of(&e).unwrap_or_else(|| panic!("no fault in {e}")),
        e,
    )
}

#[tokio::test]
async fn every_key_type_signs_in_the_token_and_verifies() {
    for (kind, scheme, algorithm) in [
        (KeyKind::EcdsaP256, RsaScheme::Pkcs1v15, ECDSA_SHA256),
        (KeyKind::EcdsaP384, RsaScheme::Pkcs1v15, ECDSA_SHA384),
        (KeyKind::Rsa2048, RsaScheme::Pkcs1v15, RSA_PKCS1_SHA256),
        (KeyKind::Rsa3072, RsaScheme::Pss, RSA_PSS),
    ] {
        let hsm = SoftHsm::new();
        let root = TestCa::root(kind, "Token Root");
        hsm.import(root.key_pem(), "root", &[1]);
        let ca = LocalCa::with_token(
            root.cert_pem().as_bytes(),
            config(&hsm, "root").rsa_scheme(scheme),
            LocalCaConfig::default(),
        )
        .unwrap();
        ca.check().await.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let chain = issue(&ca, "www.example.test").await.unwrap();
        let leaf = &chain[0];
        assert!(signed_with(leaf, algorithm), "{kind:?}");
        leaf.verify_signed_by(&chain[1]).unwrap();
        assert_eq!(chain[1].der(), root.cert().cert_der.as_slice());
    }
}

#[tokio::test]
async fn the_key_is_found_by_id_and_signatures_run_concurrently() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "Token Root");
    hsm.import(root.key_pem(), "root", &[0xca, 0xfe]);
    let config = TokenKeyConfig::new(
        hsm.module(),
        TokenRef::Label(hsm.label().to_string()),
        USER_PIN,
    )
    .key_id(vec![0xca, 0xfe])
    .max_sessions(3);
    let ca = Arc::new(
        LocalCa::with_token(root.cert_pem().as_bytes(), config, LocalCaConfig::default()).unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..24 {
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            issue(&ca, &format!("host{i}.example.test")).await
        }));
    }
    for task in tasks {
        let chain = task.await.unwrap().unwrap();
        chain[0].verify_signed_by(&chain[1]).unwrap();
    }
}

#[tokio::test]
async fn a_key_of_another_ca_or_no_key_at_all_is_named() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "Token Root");
    let other = TestCa::root(KeyKind::EcdsaP256, "Other Root");
    let rsa = TestCa::root(KeyKind::Rsa2048, "RSA Root");
    hsm.import(other.key_pem(), "other", &[2]);
    hsm.import(rsa.key_pem(), "rsa", &[3]);
    let build = |label: &str| {
        LocalCa::with_token(
            root.cert_pem().as_bytes(),
            config(&hsm, label),
            LocalCaConfig::default(),
        )
        .unwrap()
    };
    let (kind, e) = fault(build("other").check().await);
    assert_eq!(kind, CaFault::KeyMismatch, "{e}");
    assert!(
        e.to_string().contains("does not match the CA certificate"),
        "{e}"
    );
    let (kind, e) = fault(build("rsa").check().await);
    assert_eq!(kind, CaFault::KeyMismatch, "{e}");
    let (kind, e) = fault(build("absent").check().await);
    assert_eq!(kind, CaFault::HsmKeyNotFound, "{e}");
    assert!(e.to_string().contains("\"absent\""), "{e}");
    // The same fault from a signature: nothing is issued.
    let (kind, _) = fault(issue(&build("other"), "www.example.test").await);
    assert_eq!(kind, CaFault::KeyMismatch);
}

#[tokio::test]
async fn a_wrong_pin_is_named_and_not_tried_again() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "Token Root");
    hsm.import(root.key_pem(), "root", &[1]);
    let mut wrong = config(&hsm, "root");
    wrong.pin = "not-the-pin".to_string();
    let ca =
        LocalCa::with_token(root.cert_pem().as_bytes(), wrong, LocalCaConfig::default()).unwrap();
    let (kind, e) = fault(ca.check().await);
    assert_eq!(kind, CaFault::HsmPinRejected, "{e}");
    assert!(matches!(e, Error::Misconfigured { .. }), "{e:?}");
    assert!(!e.to_string().contains("not-the-pin"), "{e}");
    // Not presented again (it would count another wrong try), by this issuer or by a
    // rebuilt one with the same PIN.
    let (kind, again) = fault(ca.check().await);
    assert_eq!(kind, CaFault::HsmPinRejected);
    assert!(again.to_string().contains("not tried again"), "{again}");
    let mut wrong = config(&hsm, "root");
    wrong.pin = "not-the-pin".to_string();
    let rebuilt =
        LocalCa::with_token(root.cert_pem().as_bytes(), wrong, LocalCaConfig::default()).unwrap();
    let (_, again) = fault(rebuilt.check().await);
    assert!(again.to_string().contains("not tried again"), "{again}");

    // A right PIN (the rebuilt issuer) works; and then a second key on the same token,
    // opened with another PIN, is refused rather than let in by the first one's login.
    let good = LocalCa::with_token(
        root.cert_pem().as_bytes(),
        config(&hsm, "root"),
        LocalCaConfig::default(),
    )
    .unwrap();
    good.check().await.unwrap();
    let mut other_pin = config(&hsm, "root");
    other_pin.pin = "guess".to_string();
    let intruder = LocalCa::with_token(
        root.cert_pem().as_bytes(),
        other_pin,
        LocalCaConfig::default(),
    )
    .unwrap();
    let (kind, e) = fault(issue(&intruder, "www.example.test").await);
    assert_eq!(kind, CaFault::HsmPinRejected, "{e}");
    assert!(e.to_string().contains("another PIN"), "{e}");
    // Guessing by changing the PIN is no faster than the token's lockout: after five
    // other PINs within the hour, a new one is not even compared.
    for guess in 0..6 {
        let mut other_pin = config(&hsm, "root");
        other_pin.pin = format!("guess-{guess}");
        let intruder = LocalCa::with_token(
            root.cert_pem().as_bytes(),
            other_pin,
            LocalCaConfig::default(),
        )
        .unwrap();
        let (_, e) = fault(intruder.check().await);
        assert_eq!(
            e.to_string().contains("not compared"),
            guess >= 4,
            "guess {guess}: {e}"
        );
    }
    good.check().await.expect("the right PIN still signs");
}

#[tokio::test]
async fn a_module_reached_through_a_symlink_is_the_same_library() {
    // Two paths to one library must not make two contexts of it: the second would find
    // the token logged in by the first, and a reload through one would break the other.
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "Token Root");
    hsm.import(root.key_pem(), "root", &[1]);
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("libpkcs11.so");
    std::os::unix::fs::symlink(hsm.module(), &link).unwrap();
    let direct = LocalCa::with_token(
        root.cert_pem().as_bytes(),
        config(&hsm, "root"),
        LocalCaConfig::default(),
    )
    .unwrap();
    let mut through_link = config(&hsm, "root");
    through_link.module = link;
    let linked = LocalCa::with_token(
        root.cert_pem().as_bytes(),
        through_link,
        LocalCaConfig::default(),
    )
    .unwrap();
    direct.check().await.unwrap();
    linked
        .check()
        .await
        .expect("the same library, already logged in with this PIN");
    issue(&linked, "www.example.test").await.unwrap();
    issue(&direct, "www.example.test").await.unwrap();
}

#[tokio::test]
async fn the_token_may_be_named_by_its_slot() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP384, "Token Root");
    hsm.import(root.key_pem(), "root", &[1]);
    let config =
        TokenKeyConfig::new(hsm.module(), TokenRef::Slot(hsm.slot()), USER_PIN).key_label("root");
    let ca =
        LocalCa::with_token(root.cert_pem().as_bytes(), config, LocalCaConfig::default()).unwrap();
    issue(&ca, "www.example.test").await.unwrap();
}

#[tokio::test]
async fn a_missing_module_is_unavailable_until_it_is_installed() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "Token Root");
    hsm.import(root.key_pem(), "root", &[1]);
    hsm.remove_module();
    let ca = LocalCa::with_token(
        root.cert_pem().as_bytes(),
        config(&hsm, "root"),
        LocalCaConfig::default(),
    )
    .expect("the issuer builds without its token");
    let (kind, e) = fault(ca.check().await);
    assert_eq!(kind, CaFault::HsmUnavailable, "{e}");
    assert!(matches!(e, Error::Transient { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot be loaded"), "{e}");
    hsm.restore_module();
    ca.check().await.expect("recovered once the module is back");
    issue(&ca, "www.example.test").await.unwrap();
}

#[tokio::test]
async fn a_token_that_appears_later_is_found() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "Token Root");
    let late = format!("{}-late", hsm.label());
    let config = TokenKeyConfig::new(hsm.module(), TokenRef::Label(late.clone()), USER_PIN)
        .key_label("root")
        .reload_interval(Duration::ZERO);
    let ca =
        LocalCa::with_token(root.cert_pem().as_bytes(), config, LocalCaConfig::default()).unwrap();
    let (kind, e) = fault(ca.check().await);
    assert_eq!(kind, CaFault::HsmUnavailable, "{e}");
    assert!(e.to_string().contains("is not present"), "{e}");

    // The token comes (SoftHSM2 lists tokens when initialized: the module is reloaded).
    SoftHsm::init_token(&late);
    SoftHsm::import_into(&late, root.key_pem(), "root", &[1]);
    ca.check()
        .await
        .expect("found after the module was reloaded");
}

#[tokio::test]
async fn the_conformance_reject_scenario_holds_for_a_token_intermediate() {
    // An intermediate with pathLen 0 in the token may not issue a CA.
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP384, "Token Root");
    let intermediate = root.intermediate(KeyKind::EcdsaP256, "pathlen 0 CA");
    hsm.import(intermediate.key_pem(), "intermediate", &[1]);
    let chain = format!("{}{}", intermediate.cert_pem(), root.cert_pem());
    let ca = LocalCa::with_token(
        chain.as_bytes(),
        config(&hsm, "intermediate"),
        LocalCaConfig::default(),
    )
    .unwrap();
    let mut req = request("sub.example.test");
    req.is_ca = true;
    let e = ca.sign(&req).await.unwrap_err();
    assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
}
