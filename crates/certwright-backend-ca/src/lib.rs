//! The local CA backend, certwright's embedded default: signs with a CA key and chain
//! held in memory, as read from the `tls.crt` and `tls.key` of a kubernetes.io/tls Secret,
//! or with a key in a PKCS#11 token ([`pkcs11`](TokenKeyConfig), feature `pkcs11`).
//!
//! Each certificate is built here rather than copied from the CSR: the subject name and
//! public key are taken byte for byte from the verified CSR, the SANs are re-encoded from
//! the DNS, IP, URI and email names it asks for, and validity, basicConstraints and usages
//! come from the [`SignRequest`]. Other extensions the CSR requests are never copied. The
//! TBSCertificate is DER-encoded in this module and signed with `ring`.
//!
//! One file because it is one backend: the certificate encoding and the unit tests
//! (every usage, key type and chain rule; over half of the file) that pin it down.
#![deny(missing_docs)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certwright_x509::{Certificate, Chain, KeyAlgorithm, KeyUsage, SubjectAltNames};
use der::asn1::{BitString, Ia5String, ObjectIdentifier, OctetString};
use der::flagset::FlagSet;
use der::oid::AssociatedOid;
use der::{Decode, Encode};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self as ring_sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage as KeyUsageExtension,
    KeyUsages, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::spki::SubjectPublicKeyInfoRef;

use certwright_pki::{
    Backend, DEFAULT_DURATION, Error, Health, IssuedBundle, Outcome, Recovery, SignRequest,
};

#[cfg(feature = "pkcs11")]
mod pkcs11;
mod revocation;
mod rotation;
#[cfg(feature = "pkcs11")]
pub use pkcs11::{RELOAD_INTERVAL, RsaScheme, TokenKeyConfig, TokenRef};
pub use revocation::MAX_CRL_BYTES;
pub use rotation::RotatingCa;

/// How far notBefore is set back from the time of signing, so that a relying party whose
/// clock is slightly behind accepts a fresh certificate. The requested lifetime is
/// counted from the time of signing: notAfter is now plus the duration, so even a
/// duration shorter than the backdate gives a certificate valid for that long.
const BACKDATE: i64 = 60;

/// Length of the random serial numbers, in bytes (126 bits of randomness).
const SERIAL_BYTES: usize = 16;

/// The usages cert-manager requests when a Certificate names none.
const DEFAULT_USAGES: [&str; 2] = ["digital signature", "key encipherment"];

const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// AlgorithmIdentifier DER of each signature the local CA makes.
const SHA256_WITH_RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];
const ECDSA_WITH_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
const ECDSA_WITH_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
const ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

/// Settings of a [`LocalCa`] that do not come from its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCaConfig {
    /// Lifetime of certificates whose request names no duration. Default:
    /// [`DEFAULT_DURATION`], 90 days.
    pub default_duration: Duration,
}

impl Default for LocalCaConfig {
    fn default() -> Self {
        LocalCaConfig {
            default_duration: DEFAULT_DURATION,
        }
    }
}

/// A CA whose certificate, chain and private key certwright holds in memory.
///
/// Built once from a kubernetes.io/tls Secret with [`LocalCa::from_pem`], which refuses a
/// key that does not belong to the certificate, a certificate that is not a CA, and one
/// that is expired or not yet valid. Signing is local and synchronous (one RSA, ECDSA or
/// Ed25519 signature), so [`Backend::sign`] never returns [`Outcome::Pending`].
pub struct LocalCa {
    /// `tls.crt`: the CA certificate first, then its chain (possibly up to the root).
    certs: Vec<Certificate>,
    key: SigningKey,
    /// The keyIdentifier for the authorityKeyIdentifier of every certificate issued.
    authority_key_id: Vec<u8>,
    config: LocalCaConfig,
    rng: SystemRandom,
    /// The check of the CA certificate against its parent's CRL, when it names one and
    /// tls.crt holds the parent.
    revocation: Option<std::sync::Arc<revocation::Revocation>>,
}

/// The least time between two fetches of a CA's CRL: each health check fetches it, at
/// most this often.
const CRL_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("subject", self.ca().subject())
            .field("key", &self.key.kind())
            .field("chain", &self.certs.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Builds a local CA from the PEM contents of a kubernetes.io/tls Secret.
    ///
    /// `chain_pem` (`tls.crt`) holds the CA certificate first, optionally followed by its
    /// chain up to the root. `key_pem` (`tls.key`) holds the CA's private key as PKCS#8
    /// (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`), unencrypted.
    /// Supported keys: RSA 2048–4096 bits, ECDSA P-256 and P-384, Ed25519.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] naming the problem: unreadable PEM, a key that does not
    /// match the certificate, a certificate that is not a CA or is outside its validity
    /// period, a chain that does not link up, an unsupported key type.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        config: LocalCaConfig,
    ) -> Result<LocalCa, Error> {
        Self::from_pem_at(chain_pem, key_pem, config, unix_now()?)
    }

    fn from_pem_at(
        chain_pem: &[u8],
        key_pem: &[u8],
        config: LocalCaConfig,
        now: i64,
    ) -> Result<LocalCa, Error> {
        let (certs, kind, ca_public_key) = Self::read_chain(chain_pem, &config, now)?;
        let rng = SystemRandom::new();
        let key = SigningKey::from_pem(key_pem, kind, &ca_public_key, &rng)?;
        if key.public_key() != Some(ca_public_key.as_slice()) {
            return Err(key_mismatch(format!(
                "both hold {kind} keys, but different ones"
            )));
        }
        Ok(Self::assemble(certs, key, &ca_public_key, config, rng))
    }

    /// Builds a local CA whose key is in a PKCS#11 token, from the PEM of its
    /// certificate and chain (`tls.crt`).
    ///
    /// The token is not opened here: the first health check or signature opens it,
    /// finds the key and proves it belongs to the certificate, so that an issuer whose
    /// token is away at start reports `HSMUnavailable` and recovers when it is back.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] for the certificate, as [`LocalCa::from_pem`]; a key not
    /// named by label or id; an Ed25519 certificate (tokens sign ECDSA and RSA).
    #[cfg(feature = "pkcs11")]
    pub fn with_token(
        chain_pem: &[u8],
        token: TokenKeyConfig,
        config: LocalCaConfig,
    ) -> Result<LocalCa, Error> {
        let (certs, kind, ca_public_key) = Self::read_chain(chain_pem, &config, unix_now()?)?;
        let key = pkcs11::TokenKey::new(token, kind, ca_public_key.clone())?;
        Ok(Self::assemble(
            certs,
            SigningKey::Token(std::sync::Arc::new(key)),
            &ca_public_key,
            config,
            SystemRandom::new(),
        ))
    }

    fn assemble(
        certs: Vec<Certificate>,
        key: SigningKey,
        ca_public_key: &[u8],
        config: LocalCaConfig,
        rng: SystemRandom,
    ) -> LocalCa {
        let authority_key_id = certs
            .first()
            .and_then(|ca| subject_key_identifier(ca.der()))
            .unwrap_or_else(|| key_identifier(ca_public_key));
        LocalCa {
            certs,
            key,
            authority_key_id,
            config,
            rng,
            revocation: None,
        }
    }

    /// Reads and checks `tls.crt`: the certificates, the CA's key type and its public
    /// key.
    fn read_chain(
        chain_pem: &[u8],
        config: &LocalCaConfig,
        now: i64,
    ) -> Result<(Vec<Certificate>, KeyKind, Vec<u8>), Error> {
        if config.default_duration.as_secs() == 0 {
            return Err(Error::misconfigured(
                "the default duration of the local CA must be at least one second",
            ));
        }
        let certs = certwright_x509::parse_pem_bundle(chain_pem).map_err(|e| {
            fault(
                CaFault::CertificateInvalid,
                format!("tls.crt does not hold a readable PEM certificate bundle ({e})"),
            )
        })?;
        let Some(ca) = certs.first() else {
            return Err(fault(
                CaFault::CertificateInvalid,
                "tls.crt holds no certificate",
            ));
        };
        check_is_ca(ca)?;
        check_validity(&certs, now)?;
        check_chain(&certs)?;

        let kind = KeyKind::of_certificate(ca)?;
        let ca_public_key = subject_public_key(&ca.public_key().spki_der).ok_or_else(|| {
            fault(
                CaFault::CertificateInvalid,
                format!(
                    "tls.crt: the public key of the CA certificate {} cannot be read",
                    describe(ca)
                ),
            )
        })?;
        Ok((certs, kind, ca_public_key))
    }

    /// Checks at each health check (at most once a minute) whether the CA certificate
    /// was revoked by its parent: when it names an `http`/`https` CRL distribution point
    /// and tls.crt holds its parent (the CRL's signer), the CRL is fetched (within 10 s
    /// and 1 MiB, keeping to `egress`, at most two at once in the process), its signature
    /// verified with the parent's key, and a listing of the CA fails the check and every
    /// signature with [`CaFault::Revoked`], for good. A CRL that cannot be fetched or
    /// used does not (the health message says revocation was not checked): a CRL
    /// server's outage must not stop a CA nobody revoked.
    pub fn with_revocation_check(
        mut self,
        egress: Option<std::sync::Arc<certwright_pki::egress::EgressPolicy>>,
    ) -> LocalCa {
        // The certificate of tls.crt that issued the CA: its CRL's signer.
        let ca = self.ca();
        if let Some(parent) = self
            .certs
            .iter()
            .skip(1)
            .find(|c| c.subject().der() == ca.issuer().der() && ca.verify_signed_by(c).is_ok())
        {
            self.revocation = revocation::Revocation::new(ca, parent, egress);
        }
        self
    }

    /// The CA certificate that signs.
    pub fn certificate(&self) -> &Certificate {
        self.ca()
    }

    /// The CA certificate followed by its chain, as read from `tls.crt`.
    pub fn chain(&self) -> &[Certificate] {
        &self.certs
    }

    /// What relying parties trust this CA by: the last certificate of `tls.crt` (its
    /// root, when the chain reaches one; else the CA certificate itself or the top of
    /// its partial chain).
    pub fn trust_anchor(&self) -> &Certificate {
        self.certs.last().unwrap_or_else(|| self.ca())
    }

    fn ca(&self) -> &Certificate {
        // `from_pem_at` refuses an empty bundle.
        &self.certs[0]
    }

    /// The last second at which the CA and every certificate of its chain are valid.
    fn valid_until(&self) -> i64 {
        self.certs
            .iter()
            .map(|c| c.not_after().as_second())
            .min()
            .unwrap_or(i64::MIN)
    }

    async fn check_at(&self, now: i64) -> Result<Health, Error> {
        check_validity(&self.certs, now)?;
        #[cfg(feature = "pkcs11")]
        if let SigningKey::Token(token) = &self.key {
            token.probe().await?;
        }
        let until = self
            .certs
            .iter()
            .map(Certificate::not_after)
            .min()
            .unwrap_or_else(|| self.ca().not_after());
        Ok(Health {
            message: format!(
                "local CA {} valid until {until}; chain of {}",
                self.ca().subject(),
                self.certs.len()
            ),
        })
    }

    async fn sign_at(&self, request: &SignRequest, now: i64) -> Result<Outcome, Error> {
        check_validity(&self.certs, now)?;
        let ca = self.ca();
        let csr = &request.csr;

        let lifetime = request.duration.unwrap_or(self.config.default_duration);
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        if lifetime == 0 {
            return Err(rejected(
                "the requested duration is shorter than one second",
            ));
        }
        let not_before = now
            .saturating_sub(BACKDATE)
            .max(ca.not_before().as_second());
        // Cut short only by the CA's own validity; the engine reports a certificate
        // shorter than requested.
        let not_after = now.saturating_add(lifetime).min(self.valid_until());

        let usages = Usages::from_request(&request.usages, request.is_ca)?;
        let basic_constraints = BasicConstraints {
            ca: request.is_ca,
            path_len_constraint: if request.is_ca {
                let requested = csr.basic_constraints().and_then(|bc| bc.path_len);
                child_path_len(ca, requested)?
            } else {
                None
            },
        };
        let sans = general_names(csr.sans())?;
        let subject_is_empty = csr.subject().is_empty();
        if subject_is_empty && sans.is_empty() {
            return Err(rejected(
                "the CSR names neither a subject nor any subject alternative name",
            ));
        }
        let subject_public_key = subject_public_key(&csr.public_key().spki_der)
            .ok_or_else(|| rejected("the CSR's public key cannot be read"))?;

        let mut extensions = vec![extension(&basic_constraints, true)?];
        // RFC 5280 section 4.2.1.3: a keyUsage extension has at least one bit set, and
        // OpenSSL refuses a certificate whose keyUsage is empty. With only extended
        // usages requested (`server auth`), it is left out, as Go and cert-manager do.
        if !usages.key.is_empty() {
            extensions.push(extension(&KeyUsageExtension(usages.key), true)?);
        }
        if !usages.extended.is_empty() {
            extensions.push(extension(&ExtendedKeyUsage(usages.extended), false)?);
        }
        extensions.push(extension(
            &SubjectKeyIdentifier(octets(key_identifier(&subject_public_key))?),
            false,
        )?);
        extensions.push(extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(octets(self.authority_key_id.clone())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
            false,
        )?);
        if !sans.is_empty() {
            // RFC 5280 section 4.2.1.6: critical when the subject is empty.
            extensions.push(extension(&SubjectAltName(sans), subject_is_empty)?);
        }

        let serial = self.serial()?;
        let tbs = sequence(&[
            // [0] EXPLICIT version v3 (2)
            &[0xa0, 0x03, 0x02, 0x01, 0x02],
            &tlv(TAG_INTEGER, &serial),
            self.key.algorithm_identifier(),
            ca.subject().der(),
            &sequence(&[&time(not_before)?, &time(not_after)?]),
            csr.subject().der(),
            &csr.public_key().spki_der,
            &tlv(
                TAG_EXTENSIONS,
                &sequence(&extensions.iter().map(Vec::as_slice).collect::<Vec<_>>()),
            ),
        ]);
        let signature = self.key.sign(&tbs, &self.rng).await?;
        let mut signature_bits = Vec::with_capacity(signature.len() + 1);
        signature_bits.push(0); // no unused bits
        signature_bits.extend_from_slice(&signature);
        let der = sequence(&[
            &tbs,
            self.key.algorithm_identifier(),
            &tlv(TAG_BIT_STRING, &signature_bits),
        ]);

        let leaf = Certificate::from_der(&der).map_err(|e| Error::Misconfigured {
            message: "the local CA produced a certificate it cannot read back".to_owned(),
            source: Some(Box::new(e)),
        })?;
        leaf.verify_signed_by(ca)
            .map_err(|e| Error::Misconfigured {
                message: format!(
                    "a certificate signed with {} does not verify against {}",
                    self.key.describe(),
                    describe(ca)
                ),
                source: Some(Box::new(e)),
            })?;
        tracing::debug!(
            requester = %request.requester,
            serial = %leaf.serial_hex(),
            subject = %leaf.subject(),
            not_after = %leaf.not_after(),
            is_ca = request.is_ca,
            "local CA issued a certificate"
        );
        let mut certs = Vec::with_capacity(self.certs.len() + 1);
        certs.push(leaf);
        certs.extend(self.certs.iter().cloned());
        Ok(Outcome::Issued(IssuedBundle::from_certificates(certs)?))
    }

    /// A positive random serial of [`SERIAL_BYTES`] bytes: top bit clear (positive) and
    /// the next one set, so its DER INTEGER is always exactly that long.
    fn serial(&self) -> Result<[u8; SERIAL_BYTES], Error> {
        let mut serial = [0u8; SERIAL_BYTES];
        self.rng.fill(&mut serial).map_err(|_| Error::Transient {
            message: "the system random number generator failed".to_owned(),
            source: None,
        })?;
        serial[0] = (serial[0] & 0x7f) | 0x40;
        Ok(serial)
    }
}

#[async_trait::async_trait]
impl Backend for LocalCa {
    fn kind(&self) -> &'static str {
        "ca"
    }

    fn ca_expiry(&self) -> Option<std::time::SystemTime> {
        let seconds = u64::try_from(self.valid_until()).ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))
    }

    fn ca_certificates(&self) -> Option<certwright_pki::CaCertificates> {
        Some(certwright_pki::CaCertificates::new(
            self.ca().clone(),
            self.trust_anchor().clone(),
            vec![self.trust_anchor().clone()],
        ))
    }

    async fn sign(&self, request: &SignRequest) -> Result<Outcome, Error> {
        if let Some(refusal) = self.revocation.as_ref().and_then(|r| r.refusal()) {
            return Err(refusal);
        }
        self.sign_at(request, unix_now()?).await
    }

    /// The local CA signs at once and never holds a request, so a pending id (say, a
    /// stale annotation left by another issuer) fails that one request: it says nothing
    /// about this issuer's health.
    async fn poll(&self, pending_id: &str, _request: &SignRequest) -> Result<Outcome, Error> {
        // The id comes from an editable annotation: quote a bounded prefix of it.
        let shown: String = pending_id.chars().take(64).collect();
        Err(Error::Rejected {
            reason: format!(
                "the local CA never holds requests, so pending request {shown:?} cannot be \
                 polled"
            ),
        })
    }

    async fn check(&self) -> Result<Health, Error> {
        let mut health = self.check_at(unix_now()?).await?;
        if let Some(revocation) = &self.revocation {
            let said = revocation.check(CRL_REFRESH).await?;
            health.message = format!("{}; {said}", health.message);
        }
        Ok(health)
    }

    /// Nothing is kept outside this process: signing again makes a certificate no CA
    /// records, and the one a stopped process signed was never seen.
    async fn recover(
        &self,
        _request: &SignRequest,
        _submitted: SystemTime,
    ) -> Result<Recovery, Error> {
        Ok(Recovery::SubmitAgain)
    }
}

/// A poisoned lock's data is still used: a panic elsewhere must not stop the CA.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> Result<i64, Error> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| Error::misconfigured("the system clock is set before 1970"))
}

/// What is wrong with a local CA's certificate or key. It is the source of the
/// [`Error::Misconfigured`] the CA is refused with, so that a caller names the failure
/// ([`CaFault::of`]) where an operator looks, an issuer's Ready reason, rather than in
/// words only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaFault {
    /// The CA certificate, or a certificate of its chain, has expired.
    Expired,
    /// The CA certificate, or a certificate of its chain, is not valid yet.
    NotYetValid,
    /// The first certificate of tls.crt is not a CA (no basicConstraints cA: true, or a
    /// keyUsage without keyCertSign).
    NotACa,
    /// tls.crt cannot be used: not PEM certificates, empty, a public key that cannot be
    /// read, or certificates after the first that do not form its chain.
    CertificateInvalid,
    /// tls.key is not the key of the CA certificate.
    KeyMismatch,
    /// tls.key (or the certificate's key type) cannot be used: not PEM, encrypted, an
    /// unsupported algorithm or format; or a token key cannot sign as the certificate
    /// wants.
    KeyUnreadable,
    /// The PKCS#11 module cannot be loaded, the token is not present, or the token or
    /// its sessions fail. Transient: retried, and recovered from when the token is back.
    HsmUnavailable,
    /// The token refused the PIN (or it is locked). Not tried again until the PIN
    /// Secret changes.
    HsmPinRejected,
    /// The token holds no private key with the configured label and id (or several).
    HsmKeyNotFound,
    /// The CA certificate is listed on its parent's CRL.
    Revoked,
}

impl CaFault {
    /// The issuer Ready reason that names this fault.
    pub fn reason(self) -> &'static str {
        match self {
            CaFault::Expired => "CAExpired",
            CaFault::NotYetValid => "CANotYetValid",
            CaFault::NotACa => "CANotACA",
            CaFault::CertificateInvalid => "CACertificateInvalid",
            CaFault::KeyMismatch => "CAKeyMismatch",
            CaFault::KeyUnreadable => "CAKeyUnreadable",
            CaFault::HsmUnavailable => "HSMUnavailable",
            CaFault::HsmPinRejected => "HSMPinRejected",
            CaFault::HsmKeyNotFound => "HSMKeyNotFound",
            CaFault::Revoked => "CARevoked",
        }
    }

    /// The fault among `error`'s causes, if a local CA refused itself with one.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<CaFault> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(fault) = e.downcast_ref::<CaFault>() {
                return Some(*fault);
            }
            cause = e.source();
        }
        None
    }
}

impl fmt::Display for CaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaFault::Expired => "the CA certificate has expired",
            CaFault::NotYetValid => "the CA certificate is not valid yet",
            CaFault::NotACa => "the certificate is not a CA",
            CaFault::CertificateInvalid => "the CA certificate or its chain cannot be used",
            CaFault::KeyMismatch => "the key does not match the CA certificate",
            CaFault::KeyUnreadable => "the CA key cannot be used",
            CaFault::HsmUnavailable => "the HSM holding the CA key is unavailable",
            CaFault::HsmPinRejected => "the HSM refused the PIN",
            CaFault::HsmKeyNotFound => "the HSM holds no such CA key",
            CaFault::Revoked => "the CA certificate was revoked by its parent",
        })
    }
}

impl std::error::Error for CaFault {}

/// A refusal of the CA's own certificate or key, naming its fault.
fn fault(kind: CaFault, message: impl Into<String>) -> Error {
    Error::Misconfigured {
        message: message.into(),
        source: Some(Box::new(kind)),
    }
}

fn rejected(reason: impl Into<String>) -> Error {
    Error::Rejected {
        reason: reason.into(),
    }
}

fn key_mismatch(detail: impl fmt::Display) -> Error {
    fault(
        CaFault::KeyMismatch,
        format!("tls.key does not match the certificate in tls.crt: {detail}"),
    )
}

/// A certificate named for a message: its quoted subject.
fn describe(cert: &Certificate) -> String {
    format!("\"{}\"", cert.subject())
}

fn check_is_ca(ca: &Certificate) -> Result<(), Error> {
    if !ca.is_ca() {
        return Err(fault(
            CaFault::NotACa,
            format!(
                "the first certificate in tls.crt, {}, is not a CA certificate (its \
             basicConstraints do not say cA: true); tls.crt must start with the CA \
             certificate that tls.key belongs to",
                describe(ca)
            ),
        ));
    }
    if ca
        .key_usage()
        .is_some_and(|usages| !usages.contains(KeyUsage::KeyCertSign))
    {
        return Err(fault(
            CaFault::NotACa,
            format!(
                "the CA certificate {} in tls.crt may not sign certificates (its keyUsage \
             lacks keyCertSign)",
                describe(ca)
            ),
        ));
    }
    Ok(())
}

/// Every certificate of tls.crt must be valid at `now`: a chain with an expired link
/// issues certificates nobody accepts.
fn check_validity(certs: &[Certificate], now: i64) -> Result<(), Error> {
    for (i, cert) in certs.iter().enumerate() {
        let what = if i == 0 {
            format!("the CA certificate {} in tls.crt", describe(cert))
        } else {
            format!("the chain certificate {} in tls.crt", describe(cert))
        };
        if now < cert.not_before().as_second() {
            return Err(fault(
                CaFault::NotYetValid,
                format!("{what} is not valid before {}", cert.not_before()),
            ));
        }
        if now >= cert.not_after().as_second() {
            return Err(fault(
                CaFault::Expired,
                format!("{what} expired at {} (its notAfter)", cert.not_after()),
            ));
        }
    }
    Ok(())
}

/// The chain in tls.crt must link up from the CA certificate, which comes first.
fn check_chain(certs: &[Certificate]) -> Result<(), Error> {
    let chain = Chain::order(certs.to_vec()).map_err(|e| {
        tracing::debug!(error = %e, "tls.crt does not form one chain");
        fault(
            CaFault::CertificateInvalid,
            "tls.crt: the CA certificate and the certificates after it do not form one chain",
        )
    })?;
    let first = &certs[0];
    if chain.leaf() != first {
        return Err(fault(
            CaFault::CertificateInvalid,
            format!(
                "tls.crt must start with the CA certificate and continue towards the root, but \
             {} comes first and {} is the lowest certificate of the chain",
                describe(first),
                describe(chain.leaf())
            ),
        ));
    }
    Ok(())
}

/// The pathLenConstraint of a CA certificate issued by `ca`, or why `ca` cannot issue one.
fn child_path_len(ca: &Certificate, requested: Option<u8>) -> Result<Option<u8>, Error> {
    let limit = ca.basic_constraints().and_then(|bc| bc.path_len);
    match (limit, requested) {
        (Some(0), _) => Err(rejected(format!(
            "the local CA {} has a path length constraint of 0 and cannot issue CA \
             certificates",
            describe(ca)
        ))),
        (Some(n), Some(r)) => Ok(Some(r.min(n - 1))),
        (Some(n), None) => Ok(Some(n - 1)),
        (None, requested) => Ok(requested),
    }
}

// ---------------------------------------------------------------------------------------
// Usages

/// keyUsage bits and extendedKeyUsage purposes of a certificate to issue.
#[derive(Debug, PartialEq, Eq)]
struct Usages {
    key: FlagSet<KeyUsages>,
    extended: Vec<ObjectIdentifier>,
}

enum Usage {
    Key(KeyUsages),
    Extended(&'static str),
}

/// cert-manager's spelling of a usage (its `KeyUsage` API type) to the bit or purpose.
fn usage(name: &str) -> Option<Usage> {
    let usage = match name.trim().to_ascii_lowercase().as_str() {
        "signing" | "digital signature" => Usage::Key(KeyUsages::DigitalSignature),
        "content commitment" => Usage::Key(KeyUsages::NonRepudiation),
        "key encipherment" => Usage::Key(KeyUsages::KeyEncipherment),
        "data encipherment" => Usage::Key(KeyUsages::DataEncipherment),
        "key agreement" => Usage::Key(KeyUsages::KeyAgreement),
        "cert sign" => Usage::Key(KeyUsages::KeyCertSign),
        "crl sign" => Usage::Key(KeyUsages::CRLSign),
        "encipher only" => Usage::Key(KeyUsages::EncipherOnly),
        "decipher only" => Usage::Key(KeyUsages::DecipherOnly),
        "any" => Usage::Extended("2.5.29.37.0"),
        "server auth" => Usage::Extended("1.3.6.1.5.5.7.3.1"),
        "client auth" => Usage::Extended("1.3.6.1.5.5.7.3.2"),
        "code signing" => Usage::Extended("1.3.6.1.5.5.7.3.3"),
        "email protection" | "s/mime" => Usage::Extended("1.3.6.1.5.5.7.3.4"),
        "ipsec end system" => Usage::Extended("1.3.6.1.5.5.7.3.5"),
        "ipsec tunnel" => Usage::Extended("1.3.6.1.5.5.7.3.6"),
        "ipsec user" => Usage::Extended("1.3.6.1.5.5.7.3.7"),
        "timestamping" => Usage::Extended("1.3.6.1.5.5.7.3.8"),
        "ocsp signing" => Usage::Extended("1.3.6.1.5.5.7.3.9"),
        "microsoft sgc" => Usage::Extended("1.3.6.1.4.1.311.10.3.3"),
        "netscape sgc" => Usage::Extended("2.16.840.1.113730.4.1"),
        _ => return None,
    };
    Some(usage)
}

impl Usages {
    /// The usages of a certificate for `requested` (cert-manager's default when empty);
    /// a CA certificate also gets keyCertSign and cRLSign.
    fn from_request(requested: &[String], is_ca: bool) -> Result<Usages, Error> {
        let mut usages = Usages {
            key: FlagSet::default(),
            extended: Vec::new(),
        };
        let names: Vec<&str> = if requested.is_empty() {
            DEFAULT_USAGES.to_vec()
        } else {
            requested.iter().map(String::as_str).collect()
        };
        let mut unknown = Vec::new();
        for name in names {
            match usage(name) {
                Some(Usage::Key(bit)) => usages.key |= bit,
                Some(Usage::Extended(oid)) => {
                    let oid = ObjectIdentifier::new(oid).map_err(|e| {
                        rejected(format!("usage \"{name}\" has an invalid OID: {e}"))
                    })?;
                    if !usages.extended.contains(&oid) {
                        usages.extended.push(oid);
                    }
                }
                None => unknown.push(format!("\"{name}\"")),
            }
        }
        if !unknown.is_empty() {
            return Err(rejected(format!(
                "unknown usage {}; the local CA accepts cert-manager's usages (\"digital \
                 signature\", \"key encipherment\", \"server auth\", \"client auth\", ...)",
                unknown.join(", ")
            )));
        }
        if is_ca {
            usages.key |= KeyUsages::KeyCertSign;
            usages.key |= KeyUsages::CRLSign;
        }
        Ok(usages)
    }
}

// ---------------------------------------------------------------------------------------
// Names

/// The CSR's SANs as GeneralNames; only DNS, IP, URI and email names are issued.
fn general_names(sans: &SubjectAltNames) -> Result<Vec<GeneralName>, Error> {
    if !sans.other.is_empty() {
        return Err(rejected(format!(
            "the local CA issues only DNS, IP address, URI and email SANs; the CSR also \
             asks for {}",
            sans.other.join(", ")
        )));
    }
    let ia5 = |kind: &str, value: &str| {
        Ia5String::new(value)
            .map_err(|_| rejected(format!("the {kind} SAN \"{value}\" is not ASCII (IA5)")))
    };
    let mut names = Vec::new();
    for dns in &sans.dns {
        names.push(GeneralName::DnsName(ia5("DNS", dns)?));
    }
    for ip in &sans.ips {
        names.push(GeneralName::from(*ip));
    }
    for uri in &sans.uris {
        names.push(GeneralName::UniformResourceIdentifier(ia5("URI", uri)?));
    }
    for email in &sans.emails {
        names.push(GeneralName::Rfc822Name(ia5("email", email)?));
    }
    Ok(names)
}

// ---------------------------------------------------------------------------------------
// Keys

/// The kinds of CA key the local CA signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Rsa => "RSA",
            KeyKind::EcdsaP256 => "ECDSA P-256",
            KeyKind::EcdsaP384 => "ECDSA P-384",
            KeyKind::Ed25519 => "Ed25519",
        })
    }
}

impl KeyKind {
    const ALL: [KeyKind; 4] = [
        KeyKind::Rsa,
        KeyKind::EcdsaP256,
        KeyKind::EcdsaP384,
        KeyKind::Ed25519,
    ];

    fn of_certificate(ca: &Certificate) -> Result<KeyKind, Error> {
        match &ca.public_key().algorithm {
            KeyAlgorithm::Rsa { bits } if (2048..=4096).contains(bits) => Ok(KeyKind::Rsa),
            KeyAlgorithm::EcdsaP256 => Ok(KeyKind::EcdsaP256),
            KeyAlgorithm::EcdsaP384 => Ok(KeyKind::EcdsaP384),
            KeyAlgorithm::Ed25519 => Ok(KeyKind::Ed25519),
            other => Err(fault(
                CaFault::KeyUnreadable,
                format!(
                    "the CA certificate {} has an unsupported key ({other}); the local CA \
                 signs with RSA 2048–4096, ECDSA P-256 or P-384, or Ed25519 keys",
                    describe(ca)
                ),
            )),
        }
    }

    fn ecdsa_signing(self) -> Option<&'static ring_sig::EcdsaSigningAlgorithm> {
        match self {
            KeyKind::EcdsaP256 => Some(&ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING),
            KeyKind::EcdsaP384 => Some(&ring_sig::ECDSA_P384_SHA384_ASN1_SIGNING),
            KeyKind::Rsa | KeyKind::Ed25519 => None,
        }
    }
}

/// The CA's private key, loaded into `ring`.
enum SigningKey {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair, KeyKind),
    Ed25519(Ed25519KeyPair),
    /// A key in a PKCS#11 token.
    #[cfg(feature = "pkcs11")]
    Token(std::sync::Arc<pkcs11::TokenKey>),
}

/// SEC1 `ECPrivateKey` (RFC 5915), the content of an `EC PRIVATE KEY` PEM block.
#[derive(der::Sequence)]
struct EcPrivateKey {
    version: u8,
    private_key: OctetString,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    parameters: Option<ObjectIdentifier>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    public_key: Option<BitString>,
}

const KEY_FORMATS: &str = "\"PRIVATE KEY\" (PKCS#8), \"EC PRIVATE KEY\" (SEC1) or \"RSA \
                           PRIVATE KEY\" (PKCS#1), unencrypted";

impl SigningKey {
    /// Loads tls.key, expecting a key of `kind` whose public key is `ca_public_key`.
    /// Messages describe the key's format and type, never its content.
    fn from_pem(
        pem: &[u8],
        kind: KeyKind,
        ca_public_key: &[u8],
        rng: &SystemRandom,
    ) -> Result<SigningKey, Error> {
        if contains(pem, b"ENCRYPTED PRIVATE KEY") || contains(pem, b"Proc-Type: 4,ENCRYPTED") {
            return Err(fault(
                CaFault::KeyUnreadable,
                format!("tls.key is encrypted; store the CA key as {KEY_FORMATS}"),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            let problem = match e {
                rustls_pki_types::pem::Error::NoItemsFound => "holds no private key PEM block",
                _ => "is not valid PEM",
            };
            fault(
                CaFault::KeyUnreadable,
                format!("tls.key {problem}; expected {KEY_FORMATS}"),
            )
        })?;
        match key {
            PrivateKeyDer::Pkcs8(key) => Self::from_pkcs8(key.secret_pkcs8_der(), kind, rng),
            PrivateKeyDer::Pkcs1(key) => {
                if kind != KeyKind::Rsa {
                    return Err(key_mismatch(format!(
                        "tls.key holds an RSA key (RSA PRIVATE KEY) and the certificate an \
                         {kind} key"
                    )));
                }
                RsaKeyPair::from_der(key.secret_pkcs1_der())
                    .map(SigningKey::Rsa)
                    .map_err(|e| unusable_key("RSA PRIVATE KEY (PKCS#1)", kind, e))
            }
            PrivateKeyDer::Sec1(key) => {
                Self::from_sec1(key.secret_sec1_der(), kind, ca_public_key, rng)
            }
            _ => Err(fault(
                CaFault::KeyUnreadable,
                format!(
                    "tls.key holds a private key format the local CA cannot read; use {KEY_FORMATS}"
                ),
            )),
        }
    }

    fn from_pkcs8(der: &[u8], kind: KeyKind, rng: &SystemRandom) -> Result<SigningKey, Error> {
        let attempt = |kind: KeyKind| -> Result<SigningKey, ring::error::KeyRejected> {
            match kind.ecdsa_signing() {
                Some(algorithm) => EcdsaKeyPair::from_pkcs8(algorithm, der, rng)
                    .map(|pair| SigningKey::Ecdsa(pair, kind)),
                None if kind == KeyKind::Rsa => RsaKeyPair::from_pkcs8(der).map(SigningKey::Rsa),
                None => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(SigningKey::Ed25519),
            }
        };
        attempt(kind).map_err(|rejected| {
            // Say what kind of key tls.key does hold, if it is one we know.
            match KeyKind::ALL
                .into_iter()
                .filter(|other| *other != kind)
                .find(|other| attempt(*other).is_ok())
            {
                Some(other) => key_mismatch(format!(
                    "tls.key holds an {other} key and the certificate an {kind} key"
                )),
                None => unusable_key("PRIVATE KEY (PKCS#8)", kind, rejected),
            }
        })
    }

    fn from_sec1(
        der: &[u8],
        kind: KeyKind,
        ca_public_key: &[u8],
        rng: &SystemRandom,
    ) -> Result<SigningKey, Error> {
        let unreadable = || {
            fault(
                CaFault::KeyUnreadable,
                format!(
                    "tls.key: the EC PRIVATE KEY block is not a SEC1 ECPrivateKey; use {KEY_FORMATS}"
                ),
            )
        };
        let key = EcPrivateKey::from_der(der).map_err(|_| unreadable())?;
        if key.version != 1 {
            return Err(unreadable());
        }
        let private = key.private_key.as_bytes();
        let key_kind = match key.parameters {
            Some(curve) if curve == SECP256R1 => KeyKind::EcdsaP256,
            Some(curve) if curve == SECP384R1 => KeyKind::EcdsaP384,
            Some(curve) => {
                return Err(fault(
                    CaFault::KeyUnreadable,
                    format!(
                        "tls.key is an EC key on curve {curve}; the local CA supports P-256 and P-384"
                    ),
                ));
            }
            None => match private.len() {
                32 => KeyKind::EcdsaP256,
                48 => KeyKind::EcdsaP384,
                _ => return Err(unreadable()),
            },
        };
        if key_kind != kind {
            return Err(key_mismatch(format!(
                "tls.key holds an {key_kind} key and the certificate an {kind} key"
            )));
        }
        let Some(algorithm) = kind.ecdsa_signing() else {
            return Err(unreadable());
        };
        // The public point is optional in SEC1; without it, take the certificate's and let
        // ring check that the private key belongs to it.
        let (public, from_certificate) = match key.public_key.as_ref().and_then(BitString::as_bytes)
        {
            Some(public) => (public, false),
            None => (ca_public_key, true),
        };
        EcdsaKeyPair::from_private_key_and_public_key(algorithm, private, public, rng)
            .map(|pair| SigningKey::Ecdsa(pair, kind))
            .map_err(|e| {
                if from_certificate && e.to_string() == "InconsistentComponents" {
                    key_mismatch(format!(
                        "the {kind} private key does not belong to the certificate"
                    ))
                } else {
                    unusable_key("EC PRIVATE KEY (SEC1)", kind, e)
                }
            })
    }

    fn kind(&self) -> KeyKind {
        match self {
            SigningKey::Rsa(_) => KeyKind::Rsa,
            SigningKey::Ecdsa(_, kind) => *kind,
            SigningKey::Ed25519(_) => KeyKind::Ed25519,
            #[cfg(feature = "pkcs11")]
            SigningKey::Token(token) => token.kind(),
        }
    }

    /// The public key as it appears in a SubjectPublicKeyInfo's BIT STRING; `None` for a
    /// token key, which proves itself by signing instead.
    fn public_key(&self) -> Option<&[u8]> {
        match self {
            SigningKey::Rsa(pair) => Some(pair.public().as_ref()),
            SigningKey::Ecdsa(pair, _) => Some(pair.public_key().as_ref()),
            SigningKey::Ed25519(pair) => Some(pair.public_key().as_ref()),
            #[cfg(feature = "pkcs11")]
            SigningKey::Token(_) => None,
        }
    }

    fn algorithm_identifier(&self) -> &'static [u8] {
        match self {
            SigningKey::Rsa(_) => SHA256_WITH_RSA,
            SigningKey::Ecdsa(_, KeyKind::EcdsaP384) => ECDSA_WITH_SHA384,
            SigningKey::Ecdsa(..) => ECDSA_WITH_SHA256,
            SigningKey::Ed25519(_) => ED25519,
            #[cfg(feature = "pkcs11")]
            SigningKey::Token(token) => token.algorithm_identifier(),
        }
    }

    /// Where the key is, for messages.
    fn describe(&self) -> String {
        match self {
            #[cfg(feature = "pkcs11")]
            SigningKey::Token(token) => format!("the {}", token.describe()),
            _ => "tls.key".to_owned(),
        }
    }

    async fn sign(&self, message: &[u8], rng: &SystemRandom) -> Result<Vec<u8>, Error> {
        let failed = |_| Error::Transient {
            message: "signing with the CA key failed".to_owned(),
            source: None,
        };
        match self {
            SigningKey::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&ring_sig::RSA_PKCS1_SHA256, rng, message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
            SigningKey::Ecdsa(pair, _) => pair
                .sign(rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(failed),
            SigningKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            #[cfg(feature = "pkcs11")]
            SigningKey::Token(token) => token.sign(message).await,
        }
    }
}

fn unusable_key(format: &str, kind: KeyKind, rejected: ring::error::KeyRejected) -> Error {
    let hint = match kind {
        KeyKind::Rsa => "; RSA keys must have 2048 to 4096 bits",
        _ => "",
    };
    fault(
        CaFault::KeyUnreadable,
        format!("tls.key: the {format} block is not a usable {kind} key (ring: {rejected}){hint}"),
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// DER

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_SEQUENCE: u8 = 0x30;
/// `[3] EXPLICIT`, the extensions of a TBSCertificate.
const TAG_EXTENSIONS: u8 = 0xa3;

/// One DER element: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let length = content.len().to_be_bytes();
            let skip = length.iter().take_while(|b| **b == 0).count();
            let significant = &length[skip..];
            // At most size_of::<usize>() bytes, so the count fits in the low 7 bits.
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(content);
    out
}

fn sequence(elements: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &elements.concat())
}

/// A validity time: UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
fn time(unix_seconds: i64) -> Result<Vec<u8>, Error> {
    let seconds = u64::try_from(unix_seconds)
        .map_err(|_| rejected("the validity period would start before 1970"))?;
    let date = der::DateTime::from_unix_duration(Duration::from_secs(seconds))
        .map_err(|e| rejected(format!("the validity period cannot be encoded: {e}")))?;
    x509_cert::time::Time::from(date)
        .to_der()
        .map_err(|e| rejected(format!("the validity period cannot be encoded: {e}")))
}

fn octets(bytes: Vec<u8>) -> Result<OctetString, Error> {
    OctetString::new(bytes).map_err(|e| rejected(format!("cannot encode a key identifier: {e}")))
}

/// An extension whose value is `value` encoded.
fn extension<T: Encode + AssociatedOid>(value: &T, critical: bool) -> Result<Vec<u8>, Error> {
    let encode_failed =
        |e: der::Error| rejected(format!("cannot encode extension {}: {e}", T::OID));
    let inner = value.to_der().map_err(encode_failed)?;
    Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(inner).map_err(encode_failed)?,
    }
    .to_der()
    .map_err(encode_failed)
}

/// The subjectPublicKey BIT STRING content of a SubjectPublicKeyInfo.
fn subject_public_key(spki_der: &[u8]) -> Option<Vec<u8>> {
    let spki = SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    spki.subject_public_key.as_bytes().map(<[u8]>::to_vec)
}

/// A key identifier by RFC 7093 section 2 method 1: the leftmost 160 bits of the SHA-256
/// of the subjectPublicKey bits.
fn key_identifier(subject_public_key: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, subject_public_key);
    digest.as_ref()[..20].to_vec()
}

/// The subjectKeyIdentifier of a DER certificate, if it has one.
fn subject_key_identifier(cert_der: &[u8]) -> Option<Vec<u8>> {
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let extensions = cert.tbs_certificate().extensions()?;
    let ski = extensions
        .iter()
        .find(|e| e.extn_id == SubjectKeyIdentifier::OID)?;
    let ski = SubjectKeyIdentifier::from_der(ski.extn_value.as_bytes()).ok()?;
    Some(ski.0.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use certwright_simulators::rcgen::{self, DnType};
    use certwright_simulators::{
        CsrBuilder, KeyKind as TestKey, TestCa, VALID_FROM_UNIX, VALID_UNTIL_UNIX,
    };
    use certwright_x509::{Csr, ExtendedKeyUsage, KeyUsages as X509KeyUsages};
    use x509_cert::spki::AlgorithmIdentifierOwned;

    use super::*;

    const DAY: u64 = 24 * 60 * 60;

    fn local_ca(ca: &TestCa) -> LocalCa {
        LocalCa::from_pem(
            ca.cert_pem().as_bytes(),
            ca.key_pem().as_bytes(),
            LocalCaConfig::default(),
        )
        .unwrap()
    }

    fn misconfigured(chain_pem: &str, key_pem: &str) -> String {
        match LocalCa::from_pem(
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            LocalCaConfig::default(),
        ) {
            Err(Error::Misconfigured { message, .. }) => message,
            Err(other) => panic!("expected Misconfigured, got {other}"),
            Ok(ca) => panic!("expected Misconfigured, got {ca:?}"),
        }
    }

    fn full_csr(kind: TestKey) -> Csr {
        let generated = CsrBuilder::new(kind)
            .common_name("app.example.com")
            .subject(DnType::OrganizationName, "Example Org")
            .subject(DnType::OrganizationalUnitName, "Platform")
            .subject(DnType::CountryName, "DE")
            .dns("app.example.com")
            .dns("www.example.com")
            .ip("10.0.0.1".parse().unwrap())
            .ip("2001:db8::1".parse().unwrap())
            .uri("spiffe://cluster.local/ns/default/sa/app")
            .email("ops@example.com")
            .build();
        Csr::parse(generated.csr_pem.as_bytes()).unwrap()
    }

    fn simple_csr(builder: CsrBuilder) -> Csr {
        Csr::parse(builder.build().csr_pem.as_bytes()).unwrap()
    }

    fn now() -> i64 {
        unix_now().unwrap()
    }

    async fn issue(ca: &LocalCa, request: &SignRequest) -> IssuedBundle {
        match ca.sign(request).await {
            Ok(Outcome::Issued(bundle)) => bundle,
            Ok(other) => panic!("expected Issued, got {other:?}"),
            Err(e) => panic!("signing failed: {e}"),
        }
    }

    async fn rejection(ca: &LocalCa, request: &SignRequest) -> String {
        match ca.sign(request).await {
            Err(Error::Rejected { reason }) => reason,
            Err(other) => panic!("expected Rejected, got {other}"),
            Ok(outcome) => panic!("expected Rejected, got {outcome:?}"),
        }
    }

    fn leaf(bundle: &IssuedBundle) -> &Certificate {
        bundle.leaf().expect("the bundle has a leaf")
    }

    fn lifetime(cert: &Certificate) -> i64 {
        cert.not_after().as_second() - cert.not_before().as_second()
    }

    fn ski(cert: &Certificate) -> Option<Vec<u8>> {
        subject_key_identifier(cert.der())
    }

    fn aki(cert: &Certificate) -> Option<Vec<u8>> {
        let parsed = x509_cert::Certificate::from_der(cert.der()).unwrap();
        let extensions = parsed.tbs_certificate().extensions()?;
        let ext = extensions
            .iter()
            .find(|e| e.extn_id == AuthorityKeyIdentifier::OID)?;
        let aki = AuthorityKeyIdentifier::from_der(ext.extn_value.as_bytes()).unwrap();
        aki.key_identifier.map(|id| id.as_bytes().to_vec())
    }

    fn key_usages(cert: &Certificate) -> Vec<KeyUsage> {
        cert.key_usage()
            .map(X509KeyUsages::to_vec)
            .unwrap_or_default()
    }

    /// A self-signed P-256 CA made directly with rcgen, for what TestCa does not offer.
    fn custom_ca(
        path_len: Option<u8>,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Custom CA");
        params.is_ca = rcgen::IsCa::Ca(match path_len {
            Some(n) => rcgen::BasicConstraints::Constrained(n),
            None => rcgen::BasicConstraints::Unconstrained,
        });
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// PKCS#8 `PrivateKeyInfo` v1 without attributes, to unwrap fixture keys.
    #[derive(der::Sequence)]
    struct Pkcs8 {
        version: u8,
        algorithm: AlgorithmIdentifierOwned,
        private_key: OctetString,
    }

    /// The inner key of a PKCS#8 PEM key: RSAPrivateKey (PKCS#1) or ECPrivateKey (SEC1).
    fn inner_key(pkcs8_pem: &str) -> Vec<u8> {
        let (label, der) = der::pem::decode_vec(pkcs8_pem.as_bytes()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        let pkcs8 = Pkcs8::from_der(&der).unwrap();
        assert_eq!(pkcs8.version, 0);
        pkcs8.private_key.as_bytes().to_vec()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap()
    }

    #[tokio::test]
    async fn issues_for_every_ca_and_leaf_key_kind() {
        for ca_kind in [
            TestKey::Rsa2048,
            TestKey::EcdsaP256,
            TestKey::EcdsaP384,
            TestKey::Ed25519,
        ] {
            let root = TestCa::root(ca_kind, "Corp Root CA");
            let ca = local_ca(&root);
            let ca_cert = Certificate::from_der(&root.cert().cert_der).unwrap();
            for leaf_kind in [TestKey::Rsa2048, TestKey::EcdsaP256] {
                let context = format!("CA {ca_kind:?}, leaf {leaf_kind:?}");
                let csr = full_csr(leaf_kind);
                let mut request = SignRequest::new(csr.clone(), "uid-1");
                request.duration = Some(Duration::from_secs(DAY));
                request.usages = [
                    "server auth",
                    "client auth",
                    "digital signature",
                    "key encipherment",
                ]
                .map(String::from)
                .to_vec();
                let before = now();
                let first = issue(&ca, &request).await;
                let second = issue(&ca, &request).await;

                assert_eq!(first.chain.len(), 1, "{context}");
                assert_eq!(first.ca.as_ref(), Some(&ca_cert), "{context}");
                let cert = leaf(&first);
                cert.verify_signed_by(&ca_cert)
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                assert_eq!(cert.subject(), csr.subject(), "{context}");
                assert_eq!(cert.subject().der(), csr.subject().der(), "{context}");
                assert_eq!(cert.issuer(), ca_cert.subject(), "{context}");
                assert_eq!(cert.sans(), csr.sans(), "{context}");
                assert_eq!(cert.public_key(), csr.public_key(), "{context}");

                // The duration counts from the signing, after the backdated notBefore.
                assert_eq!(lifetime(cert), DAY as i64 + BACKDATE, "{context}");
                let not_before = cert.not_before().as_second();
                assert!(
                    (before - BACKDATE - 2..=now()).contains(&not_before),
                    "{context}: notBefore {not_before} vs now {before}"
                );

                // 16 random bytes, top bit clear and the next set: 127 bits.
                assert_eq!(cert.serial_hex().len(), 2 * SERIAL_BYTES, "{context}");
                assert_ne!(cert.serial_hex(), leaf(&second).serial_hex(), "{context}");

                let subject_key_id = ski(cert).expect("leaf has a subjectKeyIdentifier");
                assert_eq!(subject_key_id.len(), 20, "{context}");
                assert_eq!(aki(cert), ski(&ca_cert), "{context}");
                assert!(ski(&ca_cert).is_some(), "{context}");

                assert!(!cert.is_ca(), "{context}");
                assert_eq!(
                    key_usages(cert),
                    vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
                    "{context}"
                );
                assert_eq!(
                    cert.extended_key_usages(),
                    &[ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth],
                    "{context}"
                );
            }
        }
    }

    #[tokio::test]
    async fn default_usages_and_default_duration() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let request = SignRequest::new(full_csr(TestKey::EcdsaP256), "uid-1");
        let bundle = issue(&ca, &request).await;
        let cert = leaf(&bundle);
        assert_eq!(lifetime(cert), (90 * DAY) as i64 + BACKDATE);
        assert_eq!(
            key_usages(cert),
            vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]
        );
        assert!(cert.extended_key_usages().is_empty());
        assert_eq!(cert.basic_constraints().map(|bc| bc.ca), Some(false));
    }

    #[tokio::test]
    async fn configured_default_duration_is_used() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let config = LocalCaConfig {
            default_duration: Duration::from_secs(7 * DAY),
        };
        let ca = LocalCa::from_pem(
            root.cert_pem().as_bytes(),
            root.key_pem().as_bytes(),
            config,
        )
        .unwrap();
        let bundle = issue(&ca, &SignRequest::new(full_csr(TestKey::EcdsaP256), "uid")).await;
        assert_eq!(lifetime(leaf(&bundle)), (7 * DAY) as i64 + BACKDATE);
    }

    #[tokio::test]
    async fn a_duration_shorter_than_the_backdate_counts_from_now() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let mut request = SignRequest::new(full_csr(TestKey::EcdsaP256), "uid");
        request.duration = Some(Duration::from_secs(30));
        let before = now();
        let bundle = issue(&ca, &request).await;
        let not_after = leaf(&bundle).not_after().as_second();
        // Valid for the 30 s asked for, from now; not expired on arrival.
        assert!(
            (before + 30..=now() + 30).contains(&not_after),
            "notAfter {not_after}, signed at {before}"
        );
    }

    #[test]
    fn every_cert_manager_usage_is_understood() {
        let key = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
            Usages::from_request(&names, false).unwrap()
        };
        let cases: &[(&str, KeyUsages)] = &[
            ("signing", KeyUsages::DigitalSignature),
            ("digital signature", KeyUsages::DigitalSignature),
            ("content commitment", KeyUsages::NonRepudiation),
            ("key encipherment", KeyUsages::KeyEncipherment),
            ("key agreement", KeyUsages::KeyAgreement),
            ("data encipherment", KeyUsages::DataEncipherment),
            ("cert sign", KeyUsages::KeyCertSign),
            ("crl sign", KeyUsages::CRLSign),
            ("encipher only", KeyUsages::EncipherOnly),
            ("decipher only", KeyUsages::DecipherOnly),
        ];
        for (name, bit) in cases {
            let usages = key(&[name]);
            assert_eq!(usages.key, FlagSet::from(*bit), "{name}");
            assert!(usages.extended.is_empty(), "{name}");
        }
        let purposes: &[(&str, &str)] = &[
            ("any", "2.5.29.37.0"),
            ("server auth", "1.3.6.1.5.5.7.3.1"),
            ("client auth", "1.3.6.1.5.5.7.3.2"),
            ("code signing", "1.3.6.1.5.5.7.3.3"),
            ("email protection", "1.3.6.1.5.5.7.3.4"),
            ("s/mime", "1.3.6.1.5.5.7.3.4"),
            ("ipsec end system", "1.3.6.1.5.5.7.3.5"),
            ("ipsec tunnel", "1.3.6.1.5.5.7.3.6"),
            ("ipsec user", "1.3.6.1.5.5.7.3.7"),
            ("timestamping", "1.3.6.1.5.5.7.3.8"),
            ("ocsp signing", "1.3.6.1.5.5.7.3.9"),
            ("microsoft sgc", "1.3.6.1.4.1.311.10.3.3"),
            ("netscape sgc", "2.16.840.1.113730.4.1"),
        ];
        for (name, oid) in purposes {
            let usages = key(&[name]);
            assert!(usages.key.is_empty(), "{name}");
            assert_eq!(
                usages.extended,
                vec![ObjectIdentifier::new(oid).unwrap()],
                "{name}"
            );
        }
        // Duplicates collapse; "s/mime" and "email protection" are one purpose.
        assert_eq!(key(&["s/mime", "email protection"]).extended.len(), 1);

        let ca = Usages::from_request(&[], true).unwrap();
        assert_eq!(
            ca.key,
            KeyUsages::DigitalSignature
                | KeyUsages::KeyEncipherment
                | KeyUsages::KeyCertSign
                | KeyUsages::CRLSign
        );

        match Usages::from_request(
            &["server auth".to_owned(), "teleportation".to_owned()],
            false,
        ) {
            Err(Error::Rejected { reason }) => {
                assert!(reason.contains("\"teleportation\""), "{reason}")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn duration_beyond_the_ca_is_clamped_to_its_not_after() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let mut request = SignRequest::new(full_csr(TestKey::EcdsaP256), "uid-1");
        request.duration = Some(Duration::from_secs(20 * 365 * DAY));
        let bundle = issue(&ca, &request).await;
        assert_eq!(leaf(&bundle).not_after().as_second(), VALID_UNTIL_UNIX);
        assert_eq!(leaf(&bundle).not_after(), ca.certificate().not_after());

        // A duration too large for any clock still clamps.
        request.duration = Some(Duration::MAX);
        let bundle = issue(&ca, &request).await;
        assert_eq!(leaf(&bundle).not_after().as_second(), VALID_UNTIL_UNIX);
    }

    #[tokio::test]
    async fn is_ca_issues_a_ca_certificate_with_the_right_path_length() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let sub_ca_csr = || CsrBuilder::new(TestKey::EcdsaP256).common_name("Team CA");

        // Unconstrained issuer: the CSR's own request, or none.
        let mut request = SignRequest::new(simple_csr(sub_ca_csr()), "uid-1");
        request.is_ca = true;
        let bundle = issue(&ca, &request).await;
        let cert = leaf(&bundle);
        assert!(cert.is_ca());
        assert_eq!(cert.basic_constraints().and_then(|bc| bc.path_len), None);
        assert_eq!(
            key_usages(cert),
            vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyEncipherment,
                KeyUsage::KeyCertSign,
                KeyUsage::CrlSign
            ]
        );
        cert.verify_signed_by(ca.certificate()).unwrap();

        request.csr = simple_csr(sub_ca_csr().ca_path_len(3));
        let bundle = issue(&ca, &request).await;
        assert_eq!(
            leaf(&bundle).basic_constraints().and_then(|bc| bc.path_len),
            Some(3)
        );

        // Issuer with pathLen 2: the child gets at most 1.
        let (cert_pem, key_pem) = custom_ca(Some(2), (2025, 1, 1), (2035, 1, 1));
        let constrained = LocalCa::from_pem(
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            LocalCaConfig::default(),
        )
        .unwrap();
        for (requested, expected) in [(None, Some(1)), (Some(5), Some(1)), (Some(0), Some(0))] {
            let builder = match requested {
                Some(n) => sub_ca_csr().ca_path_len(n),
                None => sub_ca_csr(),
            };
            request.csr = simple_csr(builder);
            let bundle = issue(&constrained, &request).await;
            let cert = leaf(&bundle);
            assert!(cert.is_ca());
            assert_eq!(
                cert.basic_constraints().and_then(|bc| bc.path_len),
                expected,
                "requested {requested:?}"
            );
        }

        // Issuer with pathLen 0 (TestCa intermediates): no CA certificates at all.
        let intermediate = root.intermediate(TestKey::EcdsaP256, "Corp Issuing CA");
        let chain = format!("{}{}", intermediate.cert_pem(), root.cert_pem());
        let issuing = LocalCa::from_pem(
            chain.as_bytes(),
            intermediate.key_pem().as_bytes(),
            LocalCaConfig::default(),
        )
        .unwrap();
        request.csr = simple_csr(sub_ca_csr());
        let reason = rejection(&issuing, &request).await;
        assert!(reason.contains("path length constraint of 0"), "{reason}");
        assert!(reason.contains("CN=Corp Issuing CA"), "{reason}");
        // ... while leaves are still fine.
        request.is_ca = false;
        issue(&issuing, &request).await;
    }

    #[tokio::test]
    async fn csr_extensions_are_not_copied() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let csr = simple_csr(
            CsrBuilder::new(TestKey::EcdsaP256)
                .common_name("sneaky")
                .is_ca(true)
                .key_usages([rcgen::KeyUsagePurpose::KeyCertSign])
                .ext_key_usages([rcgen::ExtendedKeyUsagePurpose::CodeSigning]),
        );
        assert_eq!(csr.basic_constraints().map(|bc| bc.ca), Some(true));
        let mut request = SignRequest::new(csr, "uid-1");
        request.usages = vec!["server auth".to_owned()];
        let bundle = issue(&ca, &request).await;
        let cert = leaf(&bundle);
        assert!(!cert.is_ca());
        assert_eq!(key_usages(cert), Vec::<KeyUsage>::new());
        assert_eq!(cert.extended_key_usages(), &[ExtendedKeyUsage::ServerAuth]);
    }

    #[tokio::test]
    async fn two_level_ca_returns_the_intermediate_in_the_chain_and_the_root_as_ca() {
        let root = TestCa::root(TestKey::Rsa2048, "Corp Root CA");
        let intermediate = root.intermediate(TestKey::EcdsaP384, "Corp Issuing CA");
        let chain = format!("{}{}", intermediate.cert_pem(), root.cert_pem());
        let ca = LocalCa::from_pem(
            chain.as_bytes(),
            intermediate.key_pem().as_bytes(),
            LocalCaConfig::default(),
        )
        .unwrap();
        let root_cert = Certificate::from_der(&root.cert().cert_der).unwrap();
        let intermediate_cert = Certificate::from_der(&intermediate.cert().cert_der).unwrap();

        let bundle = issue(&ca, &SignRequest::new(full_csr(TestKey::Rsa2048), "uid-1")).await;
        assert_eq!(bundle.chain.len(), 2);
        assert_eq!(bundle.chain[1], intermediate_cert);
        assert_eq!(bundle.ca, Some(root_cert));
        let cert = leaf(&bundle);
        cert.verify_signed_by(&intermediate_cert).unwrap();
        assert_eq!(cert.issuer(), intermediate_cert.subject());
        assert_eq!(aki(cert), ski(&intermediate_cert));
        assert!(aki(cert).is_some());

        let health = ca.check().await.unwrap();
        assert_eq!(
            health.message,
            "local CA CN=Corp Issuing CA valid until 2035-01-01T00:00:00Z; chain of 2"
        );
    }

    #[tokio::test]
    async fn intermediate_without_its_root_gives_no_ca() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let intermediate = root.intermediate(TestKey::EcdsaP256, "Corp Issuing CA");
        let ca = local_ca(&intermediate);
        let bundle = issue(
            &ca,
            &SignRequest::new(full_csr(TestKey::EcdsaP256), "uid-1"),
        )
        .await;
        assert_eq!(bundle.chain.len(), 2);
        assert_eq!(bundle.ca, None);
    }

    #[tokio::test]
    async fn check_names_the_ca_and_poll_has_nothing_to_do() {
        let root = TestCa::root(TestKey::Ed25519, "Corp Root CA");
        let ca = local_ca(&root);
        assert_eq!(ca.kind(), "ca");
        assert_eq!(
            ca.check().await.unwrap().message,
            "local CA CN=Corp Root CA valid until 2035-01-01T00:00:00Z; chain of 1"
        );
        let request = SignRequest::new(full_csr(TestKey::EcdsaP256), "uid-1");
        match ca.poll("42", &request).await {
            Err(Error::Rejected { reason }) => {
                assert!(reason.contains("never holds requests"), "{reason}");
                assert!(reason.contains("\"42\""), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_ca_that_expires_while_running_stops_signing() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let after_expiry = VALID_UNTIL_UNIX + 1;
        let request = SignRequest::new(full_csr(TestKey::EcdsaP256), "uid-1");
        for result in [
            ca.sign_at(&request, after_expiry).await.map(|_| ()),
            ca.check_at(after_expiry).await.map(|_| ()),
        ] {
            match result {
                Err(Error::Misconfigured { message, .. }) => {
                    assert!(
                        message.contains("expired at 2035-01-01T00:00:00Z"),
                        "{message}"
                    );
                }
                other => panic!("expected Misconfigured, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn each_refusal_of_the_ca_itself_names_its_fault() {
        let fault_of = |chain: &str, key: &str| match LocalCa::from_pem(
            chain.as_bytes(),
            key.as_bytes(),
            LocalCaConfig::default(),
        ) {
            Err(e) => CaFault::of(&e),
            Ok(ca) => panic!("expected a refusal, got {ca:?}"),
        };
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let other = TestCa::root(TestKey::EcdsaP256, "Other CA");
        let leaf = root.issue_leaf(TestKey::EcdsaP256, "app.example.com");
        assert_eq!(
            fault_of(root.cert_pem(), other.key_pem()),
            Some(CaFault::KeyMismatch)
        );
        assert_eq!(
            fault_of(&leaf.cert_pem, &leaf.key_pem),
            Some(CaFault::NotACa)
        );
        for key in [
            "not a key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        ] {
            assert_eq!(
                fault_of(root.cert_pem(), key),
                Some(CaFault::KeyUnreadable),
                "{key}"
            );
        }
        let ca = local_ca(&root);
        for (at, expected) in [
            (VALID_UNTIL_UNIX + 1, CaFault::Expired),
            (VALID_FROM_UNIX - 1, CaFault::NotYetValid),
        ] {
            let e = ca.check_at(at).await.unwrap_err();
            assert_eq!(CaFault::of(&e), Some(expected), "{e}");
        }
        // Other errors name no fault.
        assert_eq!(CaFault::of(&Error::misconfigured("x")), None);
    }

    #[test]
    fn key_of_another_ca_is_refused() {
        let a = TestCa::root(TestKey::EcdsaP256, "CA A");
        let b = TestCa::root(TestKey::EcdsaP256, "CA B");
        let message = misconfigured(a.cert_pem(), b.key_pem());
        assert!(
            message.starts_with("tls.key does not match the certificate in tls.crt"),
            "{message}"
        );

        let c = TestCa::root(TestKey::Ed25519, "CA C");
        let message = misconfigured(a.cert_pem(), c.key_pem());
        assert!(
            message.starts_with("tls.key does not match the certificate in tls.crt"),
            "{message}"
        );
        assert!(
            message.contains("Ed25519") && message.contains("ECDSA P-256"),
            "{message}"
        );

        let rsa = TestCa::root(TestKey::Rsa2048, "CA RSA");
        let rsa_other = TestCa::root(TestKey::Rsa3072, "CA RSA 2");
        let message = misconfigured(rsa.cert_pem(), rsa_other.key_pem());
        assert!(
            message.starts_with("tls.key does not match the certificate in tls.crt"),
            "{message}"
        );
    }

    #[test]
    fn a_certificate_that_is_not_a_ca_is_refused() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let leaf = root.issue_leaf(TestKey::EcdsaP256, "app.example.com");
        let message = misconfigured(&leaf.cert_pem, &leaf.key_pem);
        assert!(message.contains("is not a CA certificate"), "{message}");
        assert!(message.contains("CN=app.example.com"), "{message}");
    }

    #[test]
    fn a_ca_whose_key_usage_forbids_cert_sign_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let message = misconfigured(&cert.pem(), &key.serialize_pem());
        assert!(message.contains("lacks keyCertSign"), "{message}");
    }

    #[test]
    fn an_expired_or_future_ca_is_refused() {
        let (cert_pem, key_pem) = custom_ca(None, (2020, 1, 1), (2021, 1, 1));
        let message = misconfigured(&cert_pem, &key_pem);
        assert!(
            message.contains("expired at 2021-01-01T00:00:00Z"),
            "{message}"
        );

        let (cert_pem, key_pem) = custom_ca(None, (2099, 1, 1), (2100, 1, 1));
        let message = misconfigured(&cert_pem, &key_pem);
        assert!(
            message.contains("not valid before 2099-01-01T00:00:00Z"),
            "{message}"
        );
    }

    #[test]
    fn garbage_is_refused_with_the_file_named() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        match LocalCa::from_pem(
            b"not a certificate",
            root.key_pem().as_bytes(),
            LocalCaConfig::default(),
        ) {
            Err(e @ Error::Misconfigured { .. }) => {
                assert!(e.to_string().contains("tls.crt "), "{e}");
                assert!(
                    e.to_string()
                        .contains("(PEM bundle contains no certificate)"),
                    "{e}"
                );
                assert_eq!(CaFault::of(&e), Some(CaFault::CertificateInvalid));
            }
            other => panic!("expected Misconfigured, got {other:?}"),
        }
        let message = misconfigured(root.cert_pem(), "not a key");
        assert!(
            message.starts_with("tls.key holds no private key"),
            "{message}"
        );
        let message = misconfigured(
            root.cert_pem(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        assert!(
            message.starts_with("tls.key: the PRIVATE KEY (PKCS#8) block"),
            "{message}"
        );
        let message = misconfigured(
            root.cert_pem(),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(message.starts_with("tls.key is encrypted"), "{message}");
        // The key itself never shows up in a message.
        let other = TestCa::root(TestKey::EcdsaP256, "Other");
        let message = misconfigured(root.cert_pem(), other.key_pem());
        let key_body: String = other.key_pem().lines().nth(1).unwrap().to_owned();
        assert!(!message.contains(&key_body));
    }

    #[test]
    fn a_chain_in_the_wrong_order_is_refused() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let intermediate = root.intermediate(TestKey::EcdsaP256, "Corp Issuing CA");
        let reversed = format!("{}{}", root.cert_pem(), intermediate.cert_pem());
        let message = misconfigured(&reversed, root.key_pem());
        assert!(
            message.contains("must start with the CA certificate"),
            "{message}"
        );

        let stranger = TestCa::root(TestKey::EcdsaP256, "Stranger CA");
        let unrelated = format!("{}{}", intermediate.cert_pem(), stranger.cert_pem());
        let message = misconfigured(&unrelated, intermediate.key_pem());
        assert!(message.contains("do not form one chain"), "{message}");
    }

    #[tokio::test]
    async fn sec1_and_pkcs1_keys_are_accepted() {
        for kind in [TestKey::EcdsaP256, TestKey::EcdsaP384] {
            let root = TestCa::root(kind, "EC CA");
            let sec1 = inner_key(root.key_pem());
            let sec1_pem = pem("EC PRIVATE KEY", &sec1);
            let ca = LocalCa::from_pem(
                root.cert_pem().as_bytes(),
                sec1_pem.as_bytes(),
                LocalCaConfig::default(),
            )
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            issue(&ca, &SignRequest::new(full_csr(TestKey::EcdsaP256), "uid")).await;

            // Without the optional public key, but with the curve named.
            let parsed = EcPrivateKey::from_der(&sec1).unwrap();
            let curve = if kind == TestKey::EcdsaP256 {
                SECP256R1
            } else {
                SECP384R1
            };
            let minimal = EcPrivateKey {
                version: 1,
                private_key: parsed.private_key.clone(),
                parameters: Some(curve),
                public_key: None,
            };
            let minimal_pem = pem("EC PRIVATE KEY", &minimal.to_der().unwrap());
            let ca = LocalCa::from_pem(
                root.cert_pem().as_bytes(),
                minimal_pem.as_bytes(),
                LocalCaConfig::default(),
            )
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            issue(&ca, &SignRequest::new(full_csr(TestKey::EcdsaP256), "uid")).await;

            // Someone else's private key without a public key still does not match.
            let other = TestCa::root(kind, "Other");
            let other_private = EcPrivateKey::from_der(&inner_key(other.key_pem())).unwrap();
            let foreign = EcPrivateKey {
                version: 1,
                private_key: other_private.private_key,
                parameters: None,
                public_key: None,
            };
            let message = misconfigured(
                root.cert_pem(),
                &pem("EC PRIVATE KEY", &foreign.to_der().unwrap()),
            );
            assert!(
                message.starts_with("tls.key does not match the certificate in tls.crt"),
                "{message}"
            );
        }

        let root = TestCa::root(TestKey::Rsa2048, "RSA CA");
        let pkcs1_pem = pem("RSA PRIVATE KEY", &inner_key(root.key_pem()));
        let ca = LocalCa::from_pem(
            root.cert_pem().as_bytes(),
            pkcs1_pem.as_bytes(),
            LocalCaConfig::default(),
        )
        .unwrap();
        issue(&ca, &SignRequest::new(full_csr(TestKey::EcdsaP256), "uid")).await;

        // A PKCS#1 key for an EC certificate is a mismatch.
        let ec_root = TestCa::root(TestKey::EcdsaP256, "EC CA");
        let message = misconfigured(ec_root.cert_pem(), &pkcs1_pem);
        assert!(
            message.starts_with("tls.key does not match the certificate in tls.crt"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn requests_the_ca_cannot_honour_are_rejected() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);

        let nameless = SignRequest::new(simple_csr(CsrBuilder::new(TestKey::EcdsaP256)), "uid");
        let reason = rejection(&ca, &nameless).await;
        assert!(
            reason.contains("neither a subject nor any subject alternative name"),
            "{reason}"
        );

        let mut unknown = SignRequest::new(full_csr(TestKey::EcdsaP256), "uid");
        unknown.usages = vec![
            "digital signature".to_owned(),
            "world domination".to_owned(),
        ];
        let reason = rejection(&ca, &unknown).await;
        assert!(reason.contains("\"world domination\""), "{reason}");
    }

    #[tokio::test]
    async fn sans_only_certificate_marks_the_san_extension_critical() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let csr = simple_csr(CsrBuilder::new(TestKey::EcdsaP256).dns("only.example.com"));
        let bundle = issue(&ca, &SignRequest::new(csr, "uid")).await;
        let cert = leaf(&bundle);
        assert!(cert.subject().is_empty());
        assert_eq!(cert.sans().dns, vec!["only.example.com".to_owned()]);
        let parsed = x509_cert::Certificate::from_der(cert.der()).unwrap();
        let san = parsed
            .tbs_certificate()
            .extensions()
            .unwrap()
            .iter()
            .find(|e| e.extn_id == SubjectAltName::OID)
            .unwrap();
        assert!(san.critical);
    }

    #[tokio::test]
    async fn only_extended_usages_give_no_empty_key_usage_extension() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let mut request = SignRequest::new(full_csr(TestKey::EcdsaP256), "uid");
        request.usages = vec!["server auth".to_owned(), "client auth".to_owned()];
        let bundle = issue(&ca, &request).await;
        let cert = leaf(&bundle);
        // An empty keyUsage BIT STRING (03 01 00) makes OpenSSL reject the certificate.
        let parsed = x509_cert::Certificate::from_der(cert.der()).unwrap();
        let extensions = parsed.tbs_certificate().extensions().unwrap();
        assert!(
            !extensions
                .iter()
                .any(|e| e.extn_id == KeyUsageExtension::OID),
            "no keyUsage extension without key usages"
        );
        assert!(cert.key_usage().is_none());
        assert_eq!(
            cert.extended_key_usages(),
            &[ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth]
        );
    }

    #[test]
    fn debug_shows_the_ca_but_not_the_key() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let ca = local_ca(&root);
        let debug = format!("{ca:?}");
        assert!(debug.contains("CN=Corp Root CA"), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn der_lengths_use_the_long_form_from_128_bytes() {
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(tlv(0x04, &[0; 127])[..2], [0x04, 127]);
        assert_eq!(tlv(0x04, &[0; 128])[..3], [0x04, 0x81, 128]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn path_length_of_a_child_ca() {
        let root = TestCa::root(TestKey::EcdsaP256, "Corp Root CA");
        let unconstrained = Certificate::from_der(&root.cert().cert_der).unwrap();
        assert_eq!(child_path_len(&unconstrained, None).unwrap(), None);
        assert_eq!(child_path_len(&unconstrained, Some(4)).unwrap(), Some(4));
    }
}
