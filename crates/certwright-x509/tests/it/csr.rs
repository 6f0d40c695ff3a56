//! CSR parsing as a user of the crate sees it: accepted and refused algorithms (OpenSSL and
//! rcgen fixtures), tampering, size bounds and the values policy inspects.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::str::FromStr;

use certwright_fixtures::rcgen::{self, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use certwright_fixtures::{CsrBuilder, KeyKind};
use certwright_x509::{
    BasicConstraints, Csr, Error, ExtendedKeyUsage, KeyAlgorithm, KeyUsage, MAX_CSR_BYTES,
    SignatureAlgorithm, SubjectAltNames,
};
use der::{Decode, Encode};
use x509_cert::request::CertReq;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    Csr::from_pem(pem).unwrap().der().to_vec()
}

#[test]
fn openssl_csrs_with_supported_algorithms_parse_and_verify() {
    let cases = [
        (
            "rsa2048-sha256.csr.pem",
            KeyAlgorithm::Rsa { bits: 2048 },
            SignatureAlgorithm::RsaPkcs1Sha256,
            "app.example.com",
        ),
        (
            "rsa3072-sha512.csr.pem",
            KeyAlgorithm::Rsa { bits: 3072 },
            SignatureAlgorithm::RsaPkcs1Sha512,
            "rsa3072.example.com",
        ),
        (
            "rsa-pss-sha256.csr.pem",
            KeyAlgorithm::Rsa { bits: 2048 },
            SignatureAlgorithm::RsaPssSha256,
            "pss.example.com",
        ),
        (
            "rsa-pss-sha384.csr.pem",
            KeyAlgorithm::Rsa { bits: 2048 },
            SignatureAlgorithm::RsaPssSha384,
            "pss384.example.com",
        ),
        (
            "ecdsa-p384-sha384.csr.pem",
            KeyAlgorithm::EcdsaP384,
            SignatureAlgorithm::EcdsaSha384,
            "p384.example.com",
        ),
        (
            "ecdsa-p256-sha384.csr.pem",
            KeyAlgorithm::EcdsaP256,
            SignatureAlgorithm::EcdsaSha384,
            "p256.example.com",
        ),
        (
            "ed25519.csr.pem",
            KeyAlgorithm::Ed25519,
            SignatureAlgorithm::Ed25519,
            "ed25519.example.com",
        ),
    ];
    for (file, key, signature, cn) in cases {
        let pem = fixture(file);
        let csr = Csr::parse(&pem).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(csr.public_key().algorithm, key, "{file}");
        assert_eq!(csr.signature_algorithm(), signature, "{file}");
        assert_eq!(csr.common_name(), Some(cn), "{file}");

        // The same bytes as DER parse to the same CSR.
        let from_der = Csr::parse(csr.der()).unwrap();
        assert_eq!(from_der.der(), csr.der());
        assert_eq!(Csr::from_der(csr.der()).unwrap().subject(), csr.subject());
    }
}

#[test]
fn openssl_csrs_with_unsupported_algorithms_are_refused_by_name() {
    let cases = [
        ("ecdsa-p521-sha512.csr.pem", "ECDSA P-521 (1.3.132.0.35)"),
        ("ed448.csr.pem", "Ed448 (1.3.101.113)"),
        ("dsa2048-sha256.csr.pem", "DSA (1.2.840.10040.4.1)"),
        (
            "rsa2048-sha1.csr.pem",
            "RSA PKCS#1 v1.5 with SHA-1 (1.2.840.113549.1.1.5)",
        ),
        (
            "rsa-pss-salt20.csr.pem",
            "RSASSA-PSS with a salt length of 20 bytes (with SHA-256 it must be 32)",
        ),
        (
            "rsa-pss-mgf1-sha1.csr.pem",
            "RSASSA-PSS whose mask generation function is not MGF1 with SHA-256",
        ),
    ];
    for (file, named) in cases {
        let err = Csr::parse(&fixture(file)).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedAlgorithm { .. }),
            "{file}: {err:?}"
        );
        assert_eq!(err.metric_label(), "unsupported_algorithm");
        let message = err.to_string();
        assert!(message.contains(named), "{file}: {message}");
        assert!(message.starts_with("CSR: "), "{file}: {message}");
    }
}

#[test]
fn exact_messages_for_refused_algorithms() {
    let err = Csr::parse(&fixture("ecdsa-p521-sha512.csr.pem")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR: public key: unsupported algorithm: public key ECDSA P-521 (1.3.132.0.35)"
    );
    let err = Csr::parse(&fixture("rsa2048-sha1.csr.pem")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR: signature algorithm: unsupported algorithm: RSA PKCS#1 v1.5 with SHA-1 \
         (1.2.840.113549.1.1.5)"
    );
    let err = Csr::parse(&fixture("rsa-pss-salt20.csr.pem")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR: signature algorithm: RSASSA-PSS parameters: unsupported algorithm: RSASSA-PSS \
         with a salt length of 20 bytes (with SHA-256 it must be 32)"
    );
}

#[test]
fn rsa_1024_is_below_the_minimum() {
    let err = Csr::parse(&fixture("rsa1024-sha256.csr.pem")).unwrap_err();
    assert!(
        matches!(err, Error::RsaKeySize { bits: 1024, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "CSR: public key: RSA key of 1024 bits is below the 2048-bit minimum"
    );
}

#[test]
fn every_rcgen_key_kind_parses_and_verifies() {
    for kind in KeyKind::ALL {
        let generated = CsrBuilder::new(kind)
            .common_name("svc.example.com")
            .dns("svc.example.com")
            .build();
        let (key, signature) = match kind {
            KeyKind::Rsa2048 => (
                KeyAlgorithm::Rsa { bits: 2048 },
                SignatureAlgorithm::RsaPkcs1Sha256,
            ),
            KeyKind::Rsa3072 => (
                KeyAlgorithm::Rsa { bits: 3072 },
                SignatureAlgorithm::RsaPkcs1Sha256,
            ),
            KeyKind::Rsa4096 => (
                KeyAlgorithm::Rsa { bits: 4096 },
                SignatureAlgorithm::RsaPkcs1Sha256,
            ),
            KeyKind::EcdsaP256 => (KeyAlgorithm::EcdsaP256, SignatureAlgorithm::EcdsaSha256),
            KeyKind::EcdsaP384 => (KeyAlgorithm::EcdsaP384, SignatureAlgorithm::EcdsaSha384),
            KeyKind::Ed25519 => (KeyAlgorithm::Ed25519, SignatureAlgorithm::Ed25519),
        };
        for input in [generated.csr_pem.as_bytes(), &generated.csr_der] {
            let csr = Csr::parse(input).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(csr.public_key().algorithm, key, "{kind:?}");
            assert_eq!(csr.signature_algorithm(), signature, "{kind:?}");
            assert_eq!(csr.der(), generated.csr_der.as_slice());
            assert_eq!(csr.sans().dns, vec!["svc.example.com".to_owned()]);
        }
    }
}

#[test]
fn rcgen_rsa_with_sha384_and_sha512() {
    for (algorithm, expected) in [
        (&rcgen::PKCS_RSA_SHA384, SignatureAlgorithm::RsaPkcs1Sha384),
        (&rcgen::PKCS_RSA_SHA512, SignatureAlgorithm::RsaPkcs1Sha512),
    ] {
        let generated = CsrBuilder::new(KeyKind::Rsa2048)
            .signature_algorithm(algorithm)
            .common_name("rsa.example.com")
            .build();
        let csr = Csr::parse(&generated.csr_der).unwrap();
        assert_eq!(csr.signature_algorithm(), expected);
    }
}

#[test]
fn openssl_csr_inspection_gives_exact_values() {
    let csr = Csr::parse(&fixture("rsa2048-sha256.csr.pem")).unwrap();
    assert_eq!(
        csr.subject().as_str(),
        "CN=app.example.com,OU=Platform,O=Example Org,C=DE"
    );
    assert_eq!(csr.subject().to_string(), csr.subject().as_str());
    assert_eq!(csr.common_name(), Some("app.example.com"));
    assert_eq!(
        csr.sans(),
        &SubjectAltNames {
            dns: vec!["app.example.com".into(), "www.example.com".into()],
            ips: vec![
                IpAddr::from_str("10.0.0.1").unwrap(),
                IpAddr::from_str("2001:db8::1").unwrap(),
            ],
            uris: vec!["spiffe://example.com/ns/default/sa/app".into()],
            emails: vec!["ops@example.com".into()],
            other: vec![],
        }
    );
    assert_eq!(csr.public_key().algorithm, KeyAlgorithm::Rsa { bits: 2048 });
    assert_eq!(csr.public_key().algorithm.to_string(), "RSA 2048");
    assert_eq!(
        csr.key_usage().unwrap().to_vec(),
        vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]
    );
    assert_eq!(
        csr.extended_key_usages(),
        &[ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth]
    );
    assert_eq!(
        csr.basic_constraints(),
        Some(BasicConstraints {
            ca: false,
            path_len: None
        })
    );

    // The SPKI is the one in the request, byte for byte.
    let request = CertReq::from_der(csr.der()).unwrap();
    assert_eq!(
        csr.public_key().spki_der,
        request.info.public_key.to_der().unwrap()
    );
}

#[test]
fn rcgen_csr_inspection_gives_exact_values() {
    let generated = CsrBuilder::new(KeyKind::EcdsaP256)
        .subject(DnType::CountryName, "NL")
        .subject(DnType::OrganizationName, "Acme, Inc.")
        .subject(DnType::OrganizationalUnitName, "Payments")
        .common_name("pay.acme.test")
        .dns("pay.acme.test")
        .dns("*.pay.acme.test")
        .ip(IpAddr::from_str("192.0.2.10").unwrap())
        .ip(IpAddr::from_str("2001:db8::10").unwrap())
        .uri("spiffe://acme.test/payments")
        .email("payments@acme.test")
        .ca_path_len(2)
        .key_usages([KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign])
        .ext_key_usages([
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::CodeSigning,
            ExtendedKeyUsagePurpose::EmailProtection,
            ExtendedKeyUsagePurpose::TimeStamping,
            ExtendedKeyUsagePurpose::OcspSigning,
            ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 99999, 1]),
        ])
        .build();
    let csr = Csr::parse(generated.csr_pem.as_bytes()).unwrap();

    assert_eq!(
        csr.subject().as_str(),
        "CN=pay.acme.test,OU=Payments,O=Acme\\, Inc.,C=NL"
    );
    assert_eq!(csr.common_name(), Some("pay.acme.test"));
    assert_eq!(csr.sans().dns, vec!["pay.acme.test", "*.pay.acme.test"]);
    assert_eq!(
        csr.sans().ips,
        vec![
            IpAddr::from_str("192.0.2.10").unwrap(),
            IpAddr::from_str("2001:db8::10").unwrap()
        ]
    );
    assert_eq!(csr.sans().uris, vec!["spiffe://acme.test/payments"]);
    assert_eq!(csr.sans().emails, vec!["payments@acme.test"]);
    assert!(csr.sans().other.is_empty());
    assert_eq!(csr.public_key().algorithm, KeyAlgorithm::EcdsaP256);
    assert_eq!(
        csr.key_usage().unwrap().to_vec(),
        vec![KeyUsage::KeyCertSign, KeyUsage::CrlSign]
    );
    assert_eq!(
        csr.extended_key_usages(),
        &[
            ExtendedKeyUsage::ServerAuth,
            ExtendedKeyUsage::ClientAuth,
            ExtendedKeyUsage::CodeSigning,
            ExtendedKeyUsage::EmailProtection,
            ExtendedKeyUsage::TimeStamping,
            ExtendedKeyUsage::OcspSigning,
            ExtendedKeyUsage::Other("1.3.6.1.4.1.99999.1".into()),
        ]
    );
    assert_eq!(
        csr.basic_constraints(),
        Some(BasicConstraints {
            ca: true,
            path_len: Some(2)
        })
    );
}

#[test]
fn csr_without_extension_request_has_no_requests() {
    let generated = CsrBuilder::new(KeyKind::Ed25519).build();
    let csr = Csr::parse(&generated.csr_der).unwrap();
    assert!(csr.subject().is_empty());
    assert_eq!(csr.common_name(), None);
    assert!(csr.sans().is_empty());
    assert_eq!(csr.key_usage(), None);
    assert!(csr.extended_key_usages().is_empty());
    assert_eq!(csr.basic_constraints(), None);
}

/// Decodes `der`, lets `change` alter it, and re-encodes.
fn altered(der: &[u8], change: impl FnOnce(&mut CertReq)) -> Vec<u8> {
    let mut request = CertReq::from_der(der).unwrap();
    change(&mut request);
    request.to_der().unwrap()
}

#[test]
fn altered_signature_is_a_bad_signature() {
    let inputs = [
        CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("a")
            .build()
            .csr_der,
        CsrBuilder::new(KeyKind::Ed25519)
            .common_name("a")
            .build()
            .csr_der,
        CsrBuilder::new(KeyKind::Rsa2048)
            .common_name("a")
            .build()
            .csr_der,
        pem_to_der(&fixture("rsa-pss-sha256.csr.pem")),
    ];
    for der in inputs {
        let tampered = altered(&der, |request| {
            let mut bytes = request.signature.raw_bytes().to_vec();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            request.signature = der::asn1::BitString::from_bytes(&bytes).unwrap();
        });
        let err = Csr::parse(&tampered).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "CSR (self-signature): signature does not verify"
        );
        assert_eq!(err.metric_label(), "bad_signature");
    }
}

#[test]
fn altered_subject_is_a_bad_signature() {
    let der = CsrBuilder::new(KeyKind::EcdsaP384)
        .common_name("honest.example.com")
        .build()
        .csr_der;
    let tampered = altered(&der, |request| {
        request.info.subject = x509_cert::name::Name::from_str("CN=evil.example.com").unwrap();
    });
    assert!(matches!(
        Csr::parse(&tampered),
        Err(Error::BadSignature { .. })
    ));
}

#[test]
fn rsa_key_with_ecdsa_signature_algorithm_is_a_mismatch() {
    let der = pem_to_der(&fixture("rsa2048-sha256.csr.pem"));
    let tampered = altered(&der, |request| {
        request.algorithm = x509_cert::spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        };
    });
    let err = Csr::parse(&tampered).unwrap_err();
    assert!(
        matches!(
            err,
            Error::KeyMismatch {
                key: KeyAlgorithm::Rsa { bits: 2048 },
                signature: SignatureAlgorithm::EcdsaSha256,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "CSR (self-signature): signature algorithm ECDSA with SHA-256 does not match the \
         RSA 2048 key"
    );
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    // Valid-looking PEM followed by padding: the size check must come first.
    let mut input = fixture("ed25519.csr.pem");
    input.resize(MAX_CSR_BYTES + 1, b'\n');
    let err = Csr::parse(&input).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: MAX_CSR_BYTES, actual } if actual == MAX_CSR_BYTES + 1),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "input of 65537 bytes exceeds the limit of 65536 bytes"
    );

    let mut der = vec![0x30];
    der.resize(MAX_CSR_BYTES + 1, 0);
    assert!(matches!(Csr::parse(&der), Err(Error::TooLarge { .. })));
    assert!(matches!(Csr::from_der(&der), Err(Error::TooLarge { .. })));
    assert!(matches!(Csr::from_pem(&input), Err(Error::TooLarge { .. })));

    // Exactly at the bound is still parsed.
    input.truncate(MAX_CSR_BYTES);
    assert!(Csr::parse(&input).is_ok());
}

#[test]
fn legacy_pem_label_and_surrounding_text_are_accepted() {
    let pem = String::from_utf8(fixture("ed25519.csr.pem")).unwrap();
    let legacy = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
    let with_text = format!("Certificate request for ed25519.example.com\n{legacy}\ntrailer\n");
    let csr = Csr::parse(with_text.as_bytes()).unwrap();
    assert_eq!(csr.common_name(), Some("ed25519.example.com"));
    assert_eq!(csr.to_pem(), pem);
}

#[test]
fn garbage_is_refused_with_the_cause() {
    let err = Csr::parse(b"not a CSR").unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR: no \"-----BEGIN CERTIFICATE REQUEST-----\" PEM block found"
    );
    let err = Csr::parse(&[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap_err();
    assert!(matches!(err, Error::Der { .. }), "{err:?}");
    assert!(err.to_string().starts_with("CSR: invalid DER: "), "{err}");
    let err = Csr::parse(
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap_err();
    assert!(matches!(err, Error::Pem { .. }), "{err:?}");
    assert!(err.to_string().starts_with("CSR: invalid PEM: "), "{err}");
    let err = Csr::parse(b"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR: invalid PEM: a BEGIN line has no matching END line"
    );
}

#[test]
fn debug_output_is_short() {
    let csr = Csr::parse(&fixture("rsa2048-sha256.csr.pem")).unwrap();
    let debug = format!("{csr:?}");
    assert_eq!(
        debug,
        "Csr { subject: \"CN=app.example.com,OU=Platform,O=Example Org,C=DE\", \
         key: Rsa { bits: 2048 }, signature_algorithm: RsaPkcs1Sha256, .. }"
    );
}
