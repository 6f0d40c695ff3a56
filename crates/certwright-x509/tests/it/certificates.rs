//! Certificates, PEM bundles and chain ordering, with rcgen CAs and an OpenSSL-made chain.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use certwright_fixtures::{KeyKind, TestCa, VALID_FROM_UNIX, VALID_UNTIL_UNIX};
use certwright_x509::{
    BasicConstraints, Certificate, Chain, Error, ExtendedKeyUsage, KeyAlgorithm, KeyUsage,
    certificates_to_pem, parse_pem_bundle,
};
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn one(pem: &[u8]) -> Certificate {
    let mut certs = parse_pem_bundle(pem).unwrap();
    assert_eq!(certs.len(), 1);
    certs.remove(0)
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

/// root -> intermediate -> leaf made by the testkit, as parsed certificates.
struct RcgenChain {
    root: Certificate,
    intermediate: Certificate,
    leaf: Certificate,
}

fn rcgen_chain() -> RcgenChain {
    let root = TestCa::root(KeyKind::EcdsaP384, "Test Root CA");
    let intermediate = root.intermediate(KeyKind::Rsa2048, "Test Intermediate CA");
    let leaf = intermediate.issue_leaf(KeyKind::EcdsaP256, "leaf.example.com");
    RcgenChain {
        root: Certificate::from_der(&root.cert().cert_der).unwrap(),
        intermediate: one(intermediate.cert_pem().as_bytes()),
        leaf: one(leaf.cert_pem.as_bytes()),
    }
}

#[test]
fn shuffled_chain_with_duplicate_is_ordered_and_deduplicated() {
    let c = rcgen_chain();
    let input = vec![
        c.intermediate.clone(),
        c.root.clone(),
        c.leaf.clone(),
        c.intermediate.clone(),
    ];
    let chain = Chain::order(input).unwrap();
    assert_eq!(
        chain.certificates(),
        &[c.leaf.clone(), c.intermediate.clone(), c.root.clone()]
    );
    assert_eq!(chain.leaf(), &c.leaf);
    let (certificate, ca) = chain.split();
    assert_eq!(certificate, vec![c.leaf.clone(), c.intermediate.clone()]);
    assert_eq!(ca, Some(c.root.clone()));
}

#[test]
fn every_order_of_the_openssl_chain_gives_the_same_chain() {
    let root = one(&fixture("chain-root.pem"));
    let intermediate = one(&fixture("chain-intermediate.pem"));
    let leaf = one(&fixture("chain-leaf.pem"));
    let expected = [leaf.clone(), intermediate.clone(), root.clone()];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let input: Vec<Certificate> = order.iter().map(|&i| expected[i].clone()).collect();
        let chain = Chain::order(input).unwrap();
        assert_eq!(chain.certificates(), &expected, "{order:?}");
    }
}

#[test]
fn chain_missing_its_intermediate_names_the_missing_issuer() {
    let c = rcgen_chain();
    let err = Chain::order(vec![c.root.clone(), c.leaf.clone()]).unwrap_err();
    assert!(matches!(err, Error::BrokenChain { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "certificate chain is broken: the certificates form 2 separate chains, starting at \
         \"CN=Test Root CA\", \"CN=leaf.example.com\"; issuer \"CN=Test Intermediate CA\" of \
         \"CN=leaf.example.com\" is not present"
    );
}

#[test]
fn unrelated_extra_certificate_is_reported() {
    let c = rcgen_chain();
    let stranger = TestCa::root(KeyKind::Ed25519, "Other Root")
        .issue_leaf(KeyKind::Ed25519, "stranger.example.org");
    let stranger = one(stranger.cert_pem.as_bytes());
    let err = Chain::order(vec![
        c.leaf.clone(),
        stranger,
        c.intermediate.clone(),
        c.root.clone(),
    ])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate chain is broken: the certificates form 2 separate chains, starting at \
         \"CN=leaf.example.com\", \"CN=stranger.example.org\"; issuer \"CN=Other Root\" of \
         \"CN=stranger.example.org\" is not present"
    );
}

#[test]
fn unrelated_extra_root_is_reported() {
    let c = rcgen_chain();
    let other_root = Certificate::from_der(
        &TestCa::root(KeyKind::EcdsaP256, "Other Root")
            .cert()
            .cert_der,
    )
    .unwrap();
    let err = Chain::order(vec![
        c.leaf.clone(),
        c.intermediate.clone(),
        c.root.clone(),
        other_root,
    ])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate chain is broken: the certificates form 2 separate chains, starting at \
         \"CN=leaf.example.com\", \"CN=Other Root\""
    );
}

#[test]
fn same_name_but_wrong_key_is_explained() {
    let c = rcgen_chain();
    // Another root with the intermediate's name, but not the key that signed the leaf.
    let impostor = TestCa::root(KeyKind::EcdsaP256, "Test Intermediate CA");
    let impostor = Certificate::from_der(&impostor.cert().cert_der).unwrap();
    let err = Chain::order(vec![c.leaf.clone(), impostor]).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(
            "a certificate named \"CN=Test Intermediate CA\" is present but did not issue \
             \"CN=leaf.example.com\""
        ),
        "{message}"
    );
}

#[test]
fn chain_up_to_an_intermediate_has_no_root() {
    let c = rcgen_chain();
    let chain = Chain::order(vec![c.intermediate.clone(), c.leaf.clone()]).unwrap();
    assert_eq!(
        chain.certificates(),
        &[c.leaf.clone(), c.intermediate.clone()]
    );
    assert_eq!(
        chain.split(),
        (vec![c.leaf.clone(), c.intermediate.clone()], None)
    );

    let single = Chain::order(vec![c.leaf.clone()]).unwrap();
    assert_eq!(single.split(), (vec![c.leaf.clone()], None));
}

#[test]
fn a_lone_self_signed_certificate_is_its_own_root() {
    let c = rcgen_chain();
    let chain = Chain::order(vec![c.root.clone()]).unwrap();
    assert_eq!(chain.split(), (vec![c.root.clone()], Some(c.root.clone())));
}

#[test]
fn empty_and_oversized_inputs_are_refused() {
    assert!(matches!(Chain::order(vec![]), Err(Error::NoCertificates)));
    let c = rcgen_chain();
    let many: Vec<Certificate> = (0..33)
        .map(|i| {
            let leaf = TestCa::root(KeyKind::Ed25519, &format!("R{i}"));
            Certificate::from_der(&leaf.cert().cert_der).unwrap()
        })
        .chain([c.leaf])
        .collect();
    assert!(matches!(
        Chain::order(many),
        Err(Error::TooManyCertificates {
            limit: 32,
            actual: 34
        })
    ));
}

#[test]
fn openssl_chain_fields_are_read_exactly() {
    let root_pem = fixture("chain-root.pem");
    let intermediate_pem = fixture("chain-intermediate.pem");
    let leaf_pem = fixture("chain-leaf.pem");
    let root = one(&root_pem);
    let intermediate = one(&intermediate_pem);
    let leaf = one(&leaf_pem);

    assert_eq!(
        root.subject().as_str(),
        "CN=Certwright Test Root,O=Certwright Test"
    );
    assert_eq!(root.issuer(), root.subject());
    assert!(root.is_self_issued());
    assert!(root.is_ca());
    assert_eq!(root.serial_hex(), "0a01");
    assert_eq!(root.not_before(), ts("2026-11-27T18:57:49Z"));
    assert_eq!(root.not_after(), ts("2046-11-22T18:57:49Z"));
    assert_eq!(root.public_key().algorithm, KeyAlgorithm::EcdsaP384);
    assert_eq!(
        root.key_usage().unwrap().to_vec(),
        vec![KeyUsage::KeyCertSign, KeyUsage::CrlSign]
    );
    assert_eq!(
        root.fingerprint_hex(),
        "b9c9ed2fd82c619071ee735012c28c7db1828a04903bc6b0a7bcb3103f0dab73"
    );

    assert_eq!(
        intermediate.issuer().as_str(),
        "CN=Certwright Test Root,O=Certwright Test"
    );
    assert_eq!(intermediate.serial_hex(), "0b02");
    assert_eq!(intermediate.not_before(), ts("2026-11-27T18:57:50Z"));
    assert_eq!(intermediate.not_after(), ts("2036-11-24T18:57:50Z"));
    assert_eq!(
        intermediate.basic_constraints(),
        Some(BasicConstraints {
            ca: true,
            path_len: Some(0)
        })
    );
    assert_eq!(
        intermediate.public_key().algorithm,
        KeyAlgorithm::Rsa { bits: 2048 }
    );
    assert!(!intermediate.is_self_issued());

    assert_eq!(leaf.subject().as_str(), "CN=leaf.example.com");
    assert_eq!(leaf.subject().common_name(), Some("leaf.example.com"));
    assert_eq!(leaf.serial_hex(), "c003");
    assert_eq!(leaf.not_before(), ts("2026-11-27T18:57:50Z"));
    assert_eq!(leaf.not_after(), ts("2029-03-01T18:57:50Z"));
    assert!(!leaf.is_ca());
    assert_eq!(leaf.sans().dns, vec!["leaf.example.com"]);
    assert_eq!(
        leaf.sans().ips,
        vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(leaf.extended_key_usages(), &[ExtendedKeyUsage::ServerAuth]);
    assert_eq!(
        leaf.fingerprint_hex(),
        "c2a895ce3ad8cd9d0dc0c096a07be7de7d90d76d580fd927aa595da035df98ca"
    );

    for cert in [&root, &intermediate, &leaf] {
        let digest: [u8; 32] = Sha256::digest(cert.der()).into();
        assert_eq!(cert.fingerprint_sha256(), digest);
    }

    // Signatures across key types: ECDSA P-384 signs RSA, RSA signs ECDSA P-256.
    root.verify_signed_by(&root).unwrap();
    intermediate.verify_signed_by(&root).unwrap();
    leaf.verify_signed_by(&intermediate).unwrap();
    let err = leaf.verify_signed_by(&root).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
    let err = intermediate.verify_signed_by(&intermediate).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn rcgen_chain_fields_match_what_the_testkit_set() {
    let root = TestCa::root(KeyKind::EcdsaP256, "Fields Root");
    let leaf = root.issue_leaf(KeyKind::Ed25519, "fields.example.com");
    let cert = Certificate::from_der(&leaf.cert_der).unwrap();
    assert_eq!(cert.serial_hex(), leaf.serial_hex);
    assert_eq!(
        cert.not_before(),
        jiff::Timestamp::from_second(VALID_FROM_UNIX).unwrap()
    );
    assert_eq!(
        cert.not_after(),
        jiff::Timestamp::from_second(VALID_UNTIL_UNIX).unwrap()
    );
    assert_eq!(
        cert.fingerprint_sha256(),
        <[u8; 32]>::from(Sha256::digest(&leaf.cert_der))
    );
    assert_eq!(cert.issuer().as_str(), "CN=Fields Root");
    assert_eq!(cert.public_key().algorithm, KeyAlgorithm::Ed25519);
    assert_eq!(
        cert.key_usage().unwrap().to_vec(),
        vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]
    );
    assert_eq!(
        cert.extended_key_usages(),
        &[ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth]
    );
    assert_eq!(
        cert.basic_constraints(),
        Some(BasicConstraints {
            ca: false,
            path_len: None
        })
    );
}

#[test]
fn bundle_round_trips_and_skips_other_blocks() {
    let c = rcgen_chain();
    let certs = vec![c.leaf.clone(), c.intermediate.clone(), c.root.clone()];
    let pem = certificates_to_pem(&certs);
    let with_key = format!("{pem}-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n");
    assert_eq!(parse_pem_bundle(with_key.as_bytes()).unwrap(), certs);
    assert_eq!(
        c.leaf.to_pem().as_bytes(),
        &pem.as_bytes()[..c.leaf.to_pem().len()]
    );
}

#[test]
fn bundle_errors_name_the_block() {
    let c = rcgen_chain();
    let pem = format!(
        "{}-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        c.root.to_pem(),
        // The first 30 bytes of the leaf's DER: valid base64, truncated DER.
        c.leaf
            .to_pem()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
            .get(..40)
            .unwrap()
    );
    let err = parse_pem_bundle(pem.as_bytes()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("certificate bundle: block 2: certificate: invalid DER"),
        "{err}"
    );
}

#[test]
fn debug_output_is_short() {
    let leaf = one(&fixture("chain-leaf.pem"));
    assert_eq!(
        format!("{leaf:?}"),
        "Certificate { subject: \"CN=leaf.example.com\", issuer: \"CN=Certwright Test \
         Intermediate,O=Certwright Test\", serial: \"c003\", not_after: \
         2029-03-01T18:57:50Z, .. }"
    );
}

#[test]
fn certificate_for_a_csr_chains_to_its_ca() {
    let root = TestCa::root(KeyKind::Rsa3072, "CSR Root");
    let csr = certwright_fixtures::CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("api.example.com")
        .dns("api.example.com")
        .build();
    let issued = root.sign_csr(&csr.csr_pem).unwrap();
    let bundle = format!("{}{}", root.cert_pem(), issued);
    let chain = Chain::order(parse_pem_bundle(bundle.as_bytes()).unwrap()).unwrap();
    let leaf = chain.leaf();
    assert_eq!(leaf.subject().common_name(), Some("api.example.com"));
    assert_eq!(leaf.sans().dns, vec!["api.example.com"]);
    assert_eq!(leaf.issuer().as_str(), "CN=CSR Root");
    let parsed_csr = certwright_x509::Csr::parse(csr.csr_pem.as_bytes()).unwrap();
    assert_eq!(leaf.public_key(), parsed_csr.public_key());
    let (certificate, ca) = chain.split();
    assert_eq!(certificate.len(), 1);
    assert_eq!(ca.unwrap().subject().as_str(), "CN=CSR Root");
}
