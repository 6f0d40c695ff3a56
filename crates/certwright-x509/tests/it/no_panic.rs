//! Property tests: no input, however broken, makes the parsers panic.
//!
//! Inputs are arbitrary bytes, arbitrary bytes in PEM armour, arbitrary text in PEM armour,
//! and valid CSRs and certificates with random bytes overwritten, inserted or cut off.

#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use base64::Engine as _;
use certwright_fixtures::{CsrBuilder, KeyKind, TestCa};
use certwright_x509::{Certificate, Chain, Csr, parse_pem_bundle};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Valid CSR DER of several kinds, made once.
fn valid_csrs() -> &'static [Vec<u8>] {
    static CSRS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CSRS.get_or_init(|| {
        let mut csrs: Vec<Vec<u8>> = [KeyKind::EcdsaP256, KeyKind::Ed25519, KeyKind::Rsa2048]
            .into_iter()
            .map(|kind| {
                CsrBuilder::new(kind)
                    .common_name("fuzz.example.com")
                    .dns("fuzz.example.com")
                    .ip("192.0.2.1".parse().unwrap())
                    .email("a@example.com")
                    .is_ca(false)
                    .build()
                    .csr_der
            })
            .collect();
        for name in ["rsa-pss-sha256.csr.pem", "rsa2048-sha256.csr.pem"] {
            csrs.push(Csr::parse(&fixture(name)).unwrap().der().to_vec());
        }
        csrs
    })
}

/// Valid certificate DER (root, intermediate, leaf), made once.
fn valid_certs() -> &'static [Vec<u8>] {
    static CERTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CERTS.get_or_init(|| {
        let root = TestCa::root(KeyKind::EcdsaP256, "Fuzz Root");
        let intermediate = root.intermediate(KeyKind::Ed25519, "Fuzz Intermediate");
        let leaf = intermediate.issue_leaf(KeyKind::EcdsaP384, "leaf.fuzz.example.com");
        vec![
            root.cert().cert_der.clone(),
            intermediate.cert().cert_der.clone(),
            leaf.cert_der,
        ]
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut der: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if der.is_empty() {
            break;
        }
        let len = der.len();
        match m {
            Mutation::Set(i, b) => der[i % len] = *b,
            Mutation::Insert(i, bytes) => {
                let at = i % (len + 1);
                der.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = i % len;
                let end = (at + n).min(len);
                der.drain(at..end);
            }
            Mutation::Truncate(i) => der.truncate(i % len),
        }
    }
    der
}

fn armour(label: &str, body: &str) -> Vec<u8> {
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n").into_bytes()
}

fn exercise(input: &[u8]) {
    let _ = Csr::parse(input);
    let _ = Csr::from_pem(input);
    let _ = Csr::from_der(input);
    let _ = Certificate::from_der(input);
    if let Ok(certs) = parse_pem_bundle(input) {
        let _ = Chain::order(certs);
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&input);
    }

    #[test]
    fn arbitrary_bytes_in_pem_armour_never_panic(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        label in prop_oneof![
            Just("CERTIFICATE REQUEST"),
            Just("NEW CERTIFICATE REQUEST"),
            Just("CERTIFICATE"),
        ],
    ) {
        let body = base64::engine::general_purpose::STANDARD.encode(&input);
        exercise(&armour(label, &body));
    }

    #[test]
    fn arbitrary_text_in_pem_armour_never_panics(
        body in "[A-Za-z0-9+/=\\- \r\n]{0,600}",
        label in prop_oneof![Just("CERTIFICATE REQUEST"), Just("CERTIFICATE"), Just("")],
    ) {
        exercise(&armour(label, &body));
    }

    #[test]
    fn mutated_csrs_never_panic(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let csrs = valid_csrs();
        let der = mutate(csrs[which % csrs.len()].clone(), &mutations);
        let _ = Csr::parse(&der);
        let pem = armour(
            "CERTIFICATE REQUEST",
            &base64::engine::general_purpose::STANDARD.encode(&der),
        );
        let _ = Csr::parse(&pem);
    }

    #[test]
    fn mutated_certificates_never_panic(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let certs = valid_certs();
        let der = mutate(certs[which % certs.len()].clone(), &mutations);
        if let Ok(cert) = Certificate::from_der(&der) {
            let originals: Vec<Certificate> =
                certs.iter().map(|d| Certificate::from_der(d).unwrap()).collect();
            for original in &originals {
                let _ = cert.verify_signed_by(original);
                let _ = original.verify_signed_by(&cert);
            }
            let mut all = originals;
            all.push(cert);
            let _ = Chain::order(all);
        }
    }
}
