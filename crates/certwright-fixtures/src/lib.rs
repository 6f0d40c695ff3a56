//! CSR and CA fixtures for certwright's tests, made with rcgen and returned as bytes
//! (PEM/DER) and key PEM: [`CsrBuilder`] for CSRs of every key type and request field,
//! [`TestCa`] for roots, intermediates, leaves and CRLs.
//!
//! Nothing here returns certwright types and nothing here starts a server, so every
//! certwright crate (including `certwright-x509` and `certwright-api`, which dev-depend
//! on this one alone) can use it, and the backend conformance suite builds on it. The
//! heavier test support is elsewhere: the in-memory API server in `certwright-testkit`,
//! the PKI simulators in `certwright-simulators`. Every key here is public or made for
//! one test run: for tests only.

#![deny(missing_docs)]

/// rcgen, re-exported so tests can name its key usage, EKU and DN types without their own
/// dependency on it.
pub use rcgen;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use time::OffsetDateTime;

/// Start of the validity period of every certificate [`TestCa`] makes:
/// 2025-01-01T00:00:00Z, as Unix seconds.
pub const VALID_FROM_UNIX: i64 = 1_735_689_600;

/// End of the validity period of every certificate [`TestCa`] makes:
/// 2035-01-01T00:00:00Z, as Unix seconds.
pub const VALID_UNTIL_UNIX: i64 = 2_051_222_400;

const RSA_2048_PEM: &str = include_str!("../keys/rsa2048.pem");
const RSA_3072_PEM: &str = include_str!("../keys/rsa3072.pem");
const RSA_4096_PEM: &str = include_str!("../keys/rsa4096.pem");

/// Serial numbers for [`TestCa`] certificates: unique within a test process.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0x1000);

/// The kind of key a fixture is made with.
///
/// ECDSA and Ed25519 keys are generated afresh each time. `ring` cannot generate RSA keys,
/// so each RSA kind is one fixed PKCS#8 key committed under `keys/` (made with
/// `openssl genpkey`); every use of a kind gets the same RSA key. These keys are public
/// and for tests only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA 2048 bits, signing with PKCS#1 v1.5 SHA-256.
    Rsa2048,
    /// RSA 3072 bits, signing with PKCS#1 v1.5 SHA-256.
    Rsa3072,
    /// RSA 4096 bits, signing with PKCS#1 v1.5 SHA-256.
    Rsa4096,
    /// ECDSA P-256, signing with SHA-256.
    EcdsaP256,
    /// ECDSA P-384, signing with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// Every kind.
    pub const ALL: [KeyKind; 6] = [
        KeyKind::Rsa2048,
        KeyKind::Rsa3072,
        KeyKind::Rsa4096,
        KeyKind::EcdsaP256,
        KeyKind::EcdsaP384,
        KeyKind::Ed25519,
    ];

    /// The signature algorithm this kind signs with by default.
    pub fn default_signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::Rsa2048 | KeyKind::Rsa3072 | KeyKind::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// A key pair of this kind that signs with the default algorithm.
    ///
    /// # Panics
    /// If rcgen cannot generate or load the key (a broken test environment).
    pub fn key_pair(self) -> KeyPair {
        self.key_pair_with(self.default_signature_algorithm())
    }

    /// A key pair of this kind that signs with `algorithm`; for RSA kinds this may be
    /// [`rcgen::PKCS_RSA_SHA384`] or [`rcgen::PKCS_RSA_SHA512`].
    ///
    /// # Panics
    /// If `algorithm` does not fit the kind, or rcgen cannot generate or load the key.
    pub fn key_pair_with(self, algorithm: &'static SignatureAlgorithm) -> KeyPair {
        let rsa_pem = match self {
            KeyKind::Rsa2048 => RSA_2048_PEM,
            KeyKind::Rsa3072 => RSA_3072_PEM,
            KeyKind::Rsa4096 => RSA_4096_PEM,
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::Ed25519 => {
                return KeyPair::generate_for(algorithm)
                    .expect("rcgen generates ECDSA and Ed25519 keys");
            }
        };
        KeyPair::from_pkcs8_pem_and_sign_algo(rsa_pem, algorithm)
            .expect("the committed RSA fixture key loads with an RSA signature algorithm")
    }
}

/// A CSR made by [`CsrBuilder`].
#[derive(Clone, Debug)]
pub struct GeneratedCsr {
    /// The CSR as a `CERTIFICATE REQUEST` PEM block.
    pub csr_pem: String,
    /// The CSR in DER.
    pub csr_der: Vec<u8>,
    /// The subject's private key as PKCS#8 PEM.
    pub key_pem: String,
}

/// Builds a CSR with the subject, SANs and extensions a test needs.
///
/// The subject is empty unless [`common_name`](Self::common_name) or
/// [`subject`](Self::subject) add to it; attributes appear in the order added.
#[derive(Clone, Debug)]
pub struct CsrBuilder {
    kind: KeyKind,
    algorithm: Option<&'static SignatureAlgorithm>,
    subject: Vec<(DnType, String)>,
    sans: Vec<SanType>,
    is_ca: IsCa,
    key_usages: Vec<KeyUsagePurpose>,
    ext_key_usages: Vec<ExtendedKeyUsagePurpose>,
}

impl CsrBuilder {
    /// A CSR for a new key of `kind`, with nothing requested yet.
    pub fn new(kind: KeyKind) -> Self {
        CsrBuilder {
            kind,
            algorithm: None,
            subject: Vec::new(),
            sans: Vec::new(),
            is_ca: IsCa::NoCa,
            key_usages: Vec::new(),
            ext_key_usages: Vec::new(),
        }
    }

    /// Signs with `algorithm` instead of the kind's default (see [`KeyKind::key_pair_with`]).
    pub fn signature_algorithm(mut self, algorithm: &'static SignatureAlgorithm) -> Self {
        self.algorithm = Some(algorithm);
        self
    }

    /// Adds a subject commonName.
    pub fn common_name(self, cn: &str) -> Self {
        self.subject(DnType::CommonName, cn)
    }

    /// Adds any subject attribute, e.g. `DnType::OrganizationName`.
    pub fn subject(mut self, attribute: DnType, value: &str) -> Self {
        self.subject.push((attribute, value.to_owned()));
        self
    }

    /// Requests a DNS SAN.
    ///
    /// # Panics
    /// If `name` is not IA5 (ASCII).
    pub fn dns(mut self, name: &str) -> Self {
        self.sans.push(SanType::DnsName(ia5(name)));
        self
    }

    /// Requests an IP address SAN.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.sans.push(SanType::IpAddress(ip));
        self
    }

    /// Requests a URI SAN.
    ///
    /// # Panics
    /// If `uri` is not IA5 (ASCII).
    pub fn uri(mut self, uri: &str) -> Self {
        self.sans.push(SanType::URI(ia5(uri)));
        self
    }

    /// Requests an email (rfc822Name) SAN.
    ///
    /// # Panics
    /// If `email` is not IA5 (ASCII).
    pub fn email(mut self, email: &str) -> Self {
        self.sans.push(SanType::Rfc822Name(ia5(email)));
        self
    }

    /// Requests basicConstraints `cA: true` (no path length) or `cA: false`.
    pub fn is_ca(mut self, ca: bool) -> Self {
        self.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        self
    }

    /// Requests basicConstraints `cA: true` with a path length constraint.
    pub fn ca_path_len(mut self, path_len: u8) -> Self {
        self.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        self
    }

    /// Requests keyUsage bits.
    pub fn key_usages(mut self, usages: impl IntoIterator<Item = KeyUsagePurpose>) -> Self {
        self.key_usages.extend(usages);
        self
    }

    /// Requests extendedKeyUsage purposes.
    pub fn ext_key_usages(
        mut self,
        usages: impl IntoIterator<Item = ExtendedKeyUsagePurpose>,
    ) -> Self {
        self.ext_key_usages.extend(usages);
        self
    }

    /// Generates the key and signs the CSR.
    ///
    /// # Panics
    /// If rcgen refuses the request (a bug in the test).
    pub fn build(self) -> GeneratedCsr {
        let key = match self.algorithm {
            Some(algorithm) => self.kind.key_pair_with(algorithm),
            None => self.kind.key_pair(),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&self.subject);
        params.subject_alt_names = self.sans;
        params.is_ca = self.is_ca;
        params.key_usages = self.key_usages;
        params.extended_key_usages = self.ext_key_usages;
        let csr = params
            .serialize_request(&key)
            .expect("rcgen serialises the CSR");
        GeneratedCsr {
            csr_pem: csr.pem().expect("rcgen PEM-encodes the CSR"),
            csr_der: csr.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A certificate made by [`TestCa`], with its subject's key.
#[derive(Clone, Debug)]
pub struct GeneratedCert {
    /// The certificate as a `CERTIFICATE` PEM block.
    pub cert_pem: String,
    /// The certificate in DER.
    pub cert_der: Vec<u8>,
    /// The subject's private key as PKCS#8 PEM.
    pub key_pem: String,
    /// The serial number as lowercase hex without leading zeros.
    pub serial_hex: String,
}

/// A test CA: a certificate and key that can issue intermediates, leaves, and certificates
/// for CSRs. Every certificate is valid from [`VALID_FROM_UNIX`] to [`VALID_UNTIL_UNIX`].
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    cert: GeneratedCert,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("subject", &self.params.distinguished_name)
            .field("serial_hex", &self.cert.serial_hex)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// The CA rcgen just made from `params` and `key`.
    fn made(
        cert: rcgen::Certificate,
        params: CertificateParams,
        key: KeyPair,
        serial_hex: String,
    ) -> TestCa {
        TestCa {
            cert: GeneratedCert {
                cert_pem: cert.pem(),
                cert_der: cert.der().to_vec(),
                key_pem: key.serialize_pem(),
                serial_hex,
            },
            params,
            key,
        }
    }

    /// A self-signed root CA with subject `CN=<common_name>`.
    ///
    /// # Panics
    /// If rcgen fails to sign (a broken test environment).
    pub fn root(kind: KeyKind, common_name: &str) -> TestCa {
        let key = kind.key_pair();
        let (params, serial_hex) = ca_params(common_name, None);
        let cert = params.self_signed(&key).expect("rcgen self-signs the root");
        TestCa::made(cert, params, key, serial_hex)
    }

    /// A self-signed root CA valid only from `not_before` to `not_after` (Unix seconds):
    /// an expired CA, one not valid yet, one about to expire.
    ///
    /// # Panics
    /// If rcgen fails to sign, or a time is out of range.
    pub fn root_valid(kind: KeyKind, common_name: &str, not_before: i64, not_after: i64) -> TestCa {
        let key = kind.key_pair();
        let (mut params, serial_hex) = ca_params(common_name, None);
        params.not_before =
            OffsetDateTime::from_unix_timestamp(not_before).expect("not_before is a valid time");
        params.not_after =
            OffsetDateTime::from_unix_timestamp(not_after).expect("not_after is a valid time");
        let cert = params.self_signed(&key).expect("rcgen self-signs the root");
        TestCa::made(cert, params, key, serial_hex)
    }

    /// An intermediate CA with subject `CN=<common_name>`, issued by this CA, with a path
    /// length constraint of 0.
    ///
    /// # Panics
    /// If rcgen fails to sign (a broken test environment).
    pub fn intermediate(&self, kind: KeyKind, common_name: &str) -> TestCa {
        self.intermediate_with_subject(kind, &[(DnType::CommonName, common_name)])
    }

    /// An intermediate CA with subject `CN=<common_name>`, issued by this CA, whose CRL
    /// distribution point is `crl_url` (where this CA's [`TestCa::crl`] is served).
    ///
    /// # Panics
    /// If rcgen fails to sign (a broken test environment).
    pub fn intermediate_with_crl(&self, kind: KeyKind, common_name: &str, crl_url: &str) -> TestCa {
        let key = kind.key_pair();
        let (mut params, serial_hex) = ca_params(common_name, Some(0));
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![crl_url.to_owned()],
        }];
        let cert = params
            .signed_by(&key, &self.issuer())
            .expect("rcgen signs the intermediate");
        TestCa {
            cert: GeneratedCert {
                cert_pem: cert.pem(),
                cert_der: cert.der().to_vec(),
                key_pem: key.serialize_pem(),
                serial_hex,
            },
            params,
            key,
        }
    }

    /// This CA's CRL (DER), valid from an hour ago for a day, listing the certificates
    /// with these serial numbers (lowercase hex, as [`GeneratedCert::serial_hex`]) as
    /// revoked an hour ago.
    ///
    /// # Panics
    /// If a serial is not hex or rcgen fails to sign.
    pub fn crl(&self, revoked_serials_hex: &[&str]) -> Vec<u8> {
        self.crl_scoped(revoked_serials_hex, None)
    }

    /// As [`TestCa::crl`], but out of date: issued two days ago, its next update due a
    /// day ago.
    ///
    /// # Panics
    /// If a serial is not hex or rcgen fails to sign.
    pub fn crl_out_of_date(&self, revoked_serials_hex: &[&str]) -> Vec<u8> {
        self.crl_made(revoked_serials_hex, None, time::Duration::days(2))
    }

    /// As [`TestCa::crl`], with an issuing distribution point that says the CRL covers
    /// end-entity certificates only.
    ///
    /// # Panics
    /// If a serial is not hex or rcgen fails to sign.
    pub fn crl_for_end_entities(&self, revoked_serials_hex: &[&str]) -> Vec<u8> {
        self.crl_scoped(revoked_serials_hex, Some(rcgen::CrlScope::UserCertsOnly))
    }

    fn crl_scoped(&self, revoked_serials_hex: &[&str], scope: Option<rcgen::CrlScope>) -> Vec<u8> {
        self.crl_made(revoked_serials_hex, scope, time::Duration::ZERO)
    }

    /// A CRL made `ago` before now.
    fn crl_made(
        &self,
        revoked_serials_hex: &[&str],
        scope: Option<rcgen::CrlScope>,
        ago: time::Duration,
    ) -> Vec<u8> {
        let now = OffsetDateTime::now_utc() - ago;
        let hour = time::Duration::hours(1);
        let revoked_certs = revoked_serials_hex
            .iter()
            .map(|hex| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&decode_hex(hex)),
                revocation_time: now - hour,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - hour,
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: scope.map(|scope| rcgen::CrlIssuingDistributionPoint {
                distribution_point: rcgen::CrlDistributionPoint {
                    uris: vec!["http://pki.example.test/crl".to_owned()],
                },
                scope: Some(scope),
            }),
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer())
            .expect("rcgen signs the CRL")
            .der()
            .to_vec()
    }

    /// An intermediate CA with this subject (attributes in order), issued by this CA,
    /// with a path length constraint of 0.
    ///
    /// # Panics
    /// If rcgen fails to sign (a broken test environment).
    pub fn intermediate_with_subject(&self, kind: KeyKind, subject: &[(DnType, &str)]) -> TestCa {
        let key = kind.key_pair();
        let (mut params, serial_hex) = ca_params("", Some(0));
        params.distinguished_name = distinguished_name(
            &subject
                .iter()
                .map(|(t, v)| (t.clone(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        );
        let cert = params
            .signed_by(&key, &self.issuer())
            .expect("rcgen signs the intermediate");
        TestCa::made(cert, params, key, serial_hex)
    }

    /// A leaf (end-entity) certificate for `dns_name`: subject `CN=<dns_name>`, that name
    /// as its only SAN, `cA: false`, keyUsage digitalSignature + keyEncipherment,
    /// extendedKeyUsage serverAuth + clientAuth.
    ///
    /// # Panics
    /// If `dns_name` is not ASCII or rcgen fails to sign.
    pub fn issue_leaf(&self, kind: KeyKind, dns_name: &str) -> GeneratedCert {
        let key = kind.key_pair();
        let (serial, serial_hex) = next_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name =
            distinguished_name(&[(DnType::CommonName, dns_name.to_owned())]);
        params.subject_alt_names = vec![SanType::DnsName(ia5(dns_name))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(&key, &self.issuer())
            .expect("rcgen signs the leaf");
        GeneratedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            serial_hex,
        }
    }

    /// Issues a certificate for a PEM CSR, copying its subject, SANs and requested
    /// extensions (rcgen verifies the CSR's signature first). Returns the certificate PEM.
    ///
    /// # Errors
    /// If rcgen cannot parse or verify the CSR, or does not support something it requests.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String, rcgen::Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        set_validity(&mut csr.params);
        csr.params.serial_number = Some(next_serial().0);
        csr.params.use_authority_key_identifier_extension = true;
        Ok(csr.signed_by(&self.issuer())?.pem())
    }

    /// This CA's certificate (and key).
    pub fn cert(&self) -> &GeneratedCert {
        &self.cert
    }

    /// This CA's certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert.cert_pem
    }

    /// This CA's private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.cert.key_pem
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn ca_params(common_name: &str, path_len: Option<u8>) -> (CertificateParams, String) {
    let (serial, serial_hex) = next_serial();
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&[(DnType::CommonName, common_name.to_owned())]);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.use_authority_key_identifier_extension = path_len.is_some();
    params.serial_number = Some(serial);
    set_validity(&mut params);
    (params, serial_hex)
}

fn set_validity(params: &mut CertificateParams) {
    params.not_before = OffsetDateTime::from_unix_timestamp(VALID_FROM_UNIX)
        .expect("VALID_FROM_UNIX is a valid time");
    params.not_after = OffsetDateTime::from_unix_timestamp(VALID_UNTIL_UNIX)
        .expect("VALID_UNTIL_UNIX is a valid time");
}

fn next_serial() -> (SerialNumber, String) {
    let value = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
    let bytes: Vec<u8> = value
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    (SerialNumber::from_slice(&bytes), format!("{value:x}"))
}

fn distinguished_name(attributes: &[(DnType, String)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (attribute, value) in attributes {
        dn.push(attribute.clone(), value.as_str());
    }
    dn
}

fn ia5(value: &str) -> rcgen::string::Ia5String {
    value.try_into().expect("SAN values in fixtures are ASCII")
}

/// The bytes of a hex string (an even number of hex digits).
fn decode_hex(hex: &str) -> Vec<u8> {
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).expect("a hex serial"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rcgen::CertificateSigningRequestParams;

    use super::*;

    #[test]
    fn every_key_kind_makes_a_csr_rcgen_verifies() {
        for kind in KeyKind::ALL {
            let csr = CsrBuilder::new(kind)
                .common_name("kit.example.com")
                .dns("kit.example.com")
                .build();
            assert!(
                csr.csr_pem
                    .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
            );
            assert!(csr.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let parsed = CertificateSigningRequestParams::from_pem(&csr.csr_pem).unwrap();
            assert_eq!(
                parsed.params.subject_alt_names,
                vec![SanType::DnsName(ia5("kit.example.com"))]
            );
        }
    }

    #[test]
    fn rsa_kinds_sign_with_other_hashes() {
        let key = KeyKind::Rsa3072.key_pair_with(&rcgen::PKCS_RSA_SHA512);
        assert_eq!(key.algorithm(), &rcgen::PKCS_RSA_SHA512);
    }

    #[test]
    fn ca_issues_leaves_and_csrs_with_distinct_serials() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Kit Root");
        let intermediate = root.intermediate(KeyKind::Ed25519, "Kit Intermediate");
        let leaf = intermediate.issue_leaf(KeyKind::EcdsaP384, "leaf.kit.example.com");
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(leaf.serial_hex, intermediate.cert().serial_hex);
        assert_ne!(root.cert().serial_hex, intermediate.cert().serial_hex);
        assert_eq!(root.cert_pem(), root.cert().cert_pem);
        assert!(root.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));

        let csr = CsrBuilder::new(KeyKind::Rsa2048)
            .common_name("csr.kit")
            .build();
        let signed = intermediate.sign_csr(&csr.csr_pem).unwrap();
        assert!(signed.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(intermediate.sign_csr("not a csr").is_err());
    }
}
