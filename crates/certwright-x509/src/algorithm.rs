//! Key and signature algorithms: which ones certwright accepts, and signature verification.
//!
//! Reads SubjectPublicKeyInfo and AlgorithmIdentifier structures into small enums and maps
//! each accepted (signature algorithm, key) pair onto one `ring` verification algorithm.

use std::fmt;

use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Encode, Sequence, Tag, Tagged};
use ring::signature::{self as ring_sig, UnparsedPublicKey, VerificationAlgorithm};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::Error;

/// Smallest RSA modulus accepted, in bits.
pub(crate) const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub(crate) const RSA_MAX_BITS: usize = 8192;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// Names for algorithm OIDs that are recognised but not accepted, so errors can say more
/// than a dotted number.
const KNOWN_UNSUPPORTED: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.2", "RSA PKCS#1 v1.5 with MD2"),
    ("1.2.840.113549.1.1.4", "RSA PKCS#1 v1.5 with MD5"),
    ("1.2.840.113549.1.1.5", "RSA PKCS#1 v1.5 with SHA-1"),
    ("1.2.840.113549.1.1.14", "RSA PKCS#1 v1.5 with SHA-224"),
    ("1.2.840.113549.1.1.10", "RSASSA-PSS-restricted key"),
    ("1.2.840.10040.4.1", "DSA"),
    ("1.2.840.10040.4.3", "DSA with SHA-1"),
    ("2.16.840.1.101.3.4.3.1", "DSA with SHA-224"),
    ("2.16.840.1.101.3.4.3.2", "DSA with SHA-256"),
    ("1.2.840.10045.4.1", "ECDSA with SHA-1"),
    ("1.2.840.10045.4.3.1", "ECDSA with SHA-224"),
    ("1.2.840.10045.4.3.4", "ECDSA with SHA-512"),
    ("1.3.132.0.35", "ECDSA P-521"),
    ("1.3.132.0.10", "ECDSA secp256k1"),
    ("1.3.101.110", "X25519"),
    ("1.3.101.111", "X448"),
    ("1.3.101.113", "Ed448"),
    ("1.3.14.3.2.26", "SHA-1"),
    ("2.16.840.1.101.3.4.2.4", "SHA-224"),
];

/// Describes an OID for an error message: `"Ed448 (1.3.101.113)"` or just the dotted form.
fn describe_oid(oid: &ObjectIdentifier) -> String {
    let dotted = oid.to_string();
    match KNOWN_UNSUPPORTED.iter().find(|(known, _)| *known == dotted) {
        Some((_, name)) => format!("{name} ({dotted})"),
        None => format!("OID {dotted}"),
    }
}

/// The type (and, for RSA, size) of a public key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// An RSA key (`rsaEncryption`).
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// An ECDSA key on NIST P-256.
    EcdsaP256,
    /// An ECDSA key on NIST P-384.
    EcdsaP384,
    /// An Ed25519 key.
    Ed25519,
    /// Any other key, as found in a certificate (never in an accepted CSR); holds a
    /// description such as `"ECDSA P-521 (1.3.132.0.35)"`.
    Other(String),
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyAlgorithm::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyAlgorithm::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyAlgorithm::Ed25519 => f.write_str("Ed25519"),
            KeyAlgorithm::Other(description) => f.write_str(description),
        }
    }
}

/// A signature algorithm that certwright can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSA PKCS#1 v1.5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSA PKCS#1 v1.5 with SHA-512.
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt.
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512 and a 64-byte salt.
    RsaPssSha512,
    /// ECDSA with SHA-256 (P-256 or P-384 key).
    EcdsaSha256,
    /// ECDSA with SHA-384 (P-256 or P-384 key).
    EcdsaSha384,
    /// Ed25519 (pure EdDSA).
    Ed25519,
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureAlgorithm::RsaPkcs1Sha256 => "RSA PKCS#1 v1.5 with SHA-256",
            SignatureAlgorithm::RsaPkcs1Sha384 => "RSA PKCS#1 v1.5 with SHA-384",
            SignatureAlgorithm::RsaPkcs1Sha512 => "RSA PKCS#1 v1.5 with SHA-512",
            SignatureAlgorithm::RsaPssSha256 => "RSASSA-PSS with SHA-256",
            SignatureAlgorithm::RsaPssSha384 => "RSASSA-PSS with SHA-384",
            SignatureAlgorithm::RsaPssSha512 => "RSASSA-PSS with SHA-512",
            SignatureAlgorithm::EcdsaSha256 => "ECDSA with SHA-256",
            SignatureAlgorithm::EcdsaSha384 => "ECDSA with SHA-384",
            SignatureAlgorithm::Ed25519 => "Ed25519",
        })
    }
}

/// A subject's public key: its algorithm and the DER of its SubjectPublicKeyInfo.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKeyInfo {
    /// The key type and size.
    pub algorithm: KeyAlgorithm,
    /// The whole `SubjectPublicKeyInfo`, DER encoded (as found in the CSR or certificate).
    pub spki_der: Vec<u8>,
}

/// A public key ready for verification: the public description plus the raw key bytes that
/// `ring` wants (the BIT STRING content of the SubjectPublicKeyInfo).
#[derive(Clone, Debug)]
pub(crate) struct ParsedKey {
    pub(crate) info: PublicKeyInfo,
    raw: Vec<u8>,
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017).
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// `RSASSA-PSS-params` (RFC 4055); every field has a DEFAULT, so all are optional here.
#[derive(Sequence)]
struct RsaPssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mask_gen: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    salt_length: Option<u32>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    trailer_field: Option<u32>,
}

impl ParsedKey {
    /// Reads a SubjectPublicKeyInfo. Keys of types certwright does not verify become
    /// [`KeyAlgorithm::Other`]; structurally broken keys of accepted types are errors.
    pub(crate) fn from_spki(
        spki: &SubjectPublicKeyInfoOwned,
        context: &str,
    ) -> Result<Self, Error> {
        let spki_der = spki
            .to_der()
            .map_err(|e| Error::der(format!("{context}: SubjectPublicKeyInfo"), e))?;
        let oid = spki.algorithm.oid;
        let params = spki.algorithm.parameters.as_ref();
        let Some(raw) = spki.subject_public_key.as_bytes() else {
            return Err(Error::malformed(
                context,
                "public key BIT STRING has unused bits",
            ));
        };
        let algorithm = if oid == RSA_ENCRYPTION {
            if params.is_some_and(|p| !p.is_null()) {
                return Err(Error::malformed(
                    context,
                    "rsaEncryption parameters must be NULL or absent",
                ));
            }
            let key = RsaPublicKey::from_der(raw)
                .map_err(|e| Error::der(format!("{context}: RSAPublicKey"), e))?;
            let bits = significant_bits(key.modulus.as_bytes());
            if bits == 0 || significant_bits(key.public_exponent.as_bytes()) == 0 {
                return Err(Error::malformed(context, "RSA modulus or exponent is zero"));
            }
            KeyAlgorithm::Rsa { bits }
        } else if oid == EC_PUBLIC_KEY {
            let curve = match params {
                Some(p) if p.tag() == Tag::ObjectIdentifier => p
                    .decode_as::<ObjectIdentifier>()
                    .map_err(|e| Error::der(format!("{context}: EC curve"), e))?,
                _ => {
                    return Ok(Self::other(
                        spki_der,
                        raw,
                        "EC key without a named curve".to_owned(),
                    ));
                }
            };
            let (algorithm, point_len) = if curve == SECP256R1 {
                (KeyAlgorithm::EcdsaP256, 65)
            } else if curve == SECP384R1 {
                (KeyAlgorithm::EcdsaP384, 97)
            } else {
                let description = match describe_oid(&curve) {
                    d if d.starts_with("OID ") => format!("EC key on curve {curve}"),
                    d => d,
                };
                return Ok(Self::other(spki_der, raw, description));
            };
            if raw.len() != point_len || raw.first() != Some(&0x04) {
                return Err(Error::malformed(
                    context,
                    format!(
                        "{algorithm} public key must be an uncompressed point of {point_len} bytes, \
                         found {} bytes",
                        raw.len()
                    ),
                ));
            }
            algorithm
        } else if oid == ED25519 {
            if params.is_some() {
                return Err(Error::malformed(
                    context,
                    "Ed25519 key parameters must be absent",
                ));
            }
            if raw.len() != 32 {
                return Err(Error::malformed(
                    context,
                    format!("Ed25519 public key must be 32 bytes, found {}", raw.len()),
                ));
            }
            KeyAlgorithm::Ed25519
        } else {
            return Ok(Self::other(spki_der, raw, describe_oid(&oid)));
        };
        Ok(ParsedKey {
            info: PublicKeyInfo {
                algorithm,
                spki_der,
            },
            raw: raw.to_vec(),
        })
    }

    fn other(spki_der: Vec<u8>, raw: &[u8], description: String) -> Self {
        ParsedKey {
            info: PublicKeyInfo {
                algorithm: KeyAlgorithm::Other(description),
                spki_der,
            },
            raw: raw.to_vec(),
        }
    }

    /// Checks that the key is one certwright accepts for signing (CSR keys, issuer keys).
    pub(crate) fn check_acceptable(&self, context: &str) -> Result<(), Error> {
        match &self.info.algorithm {
            KeyAlgorithm::Rsa { bits } if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(bits) => {
                Err(Error::RsaKeySize {
                    context: context.to_owned(),
                    bits: *bits,
                })
            }
            KeyAlgorithm::Other(description) => Err(Error::unsupported(
                context,
                format!("public key {description}"),
            )),
            _ => Ok(()),
        }
    }

    /// Verifies `signature` over `message` with this key under `algorithm`.
    ///
    /// `context` names what is being verified for the error message.
    pub(crate) fn verify(
        &self,
        algorithm: SignatureAlgorithm,
        message: &[u8],
        signature: &[u8],
        context: &str,
    ) -> Result<(), Error> {
        self.check_acceptable(&format!("{context}: signing key"))?;
        let verifier =
            ring_algorithm(algorithm, &self.info.algorithm).ok_or_else(|| Error::KeyMismatch {
                context: context.to_owned(),
                key: self.info.algorithm.clone(),
                signature: algorithm,
            })?;
        UnparsedPublicKey::new(verifier, &self.raw)
            .verify(message, signature)
            .map_err(|_| Error::BadSignature {
                context: context.to_owned(),
            })
    }
}

/// The `ring` algorithm for a (signature algorithm, key type) pair, or `None` if the pair
/// does not belong together.
fn ring_algorithm(
    signature: SignatureAlgorithm,
    key: &KeyAlgorithm,
) -> Option<&'static dyn VerificationAlgorithm> {
    use KeyAlgorithm as K;
    use SignatureAlgorithm as S;
    Some(match (signature, key) {
        (S::RsaPkcs1Sha256, K::Rsa { .. }) => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        (S::RsaPkcs1Sha384, K::Rsa { .. }) => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        (S::RsaPkcs1Sha512, K::Rsa { .. }) => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        (S::RsaPssSha256, K::Rsa { .. }) => &ring_sig::RSA_PSS_2048_8192_SHA256,
        (S::RsaPssSha384, K::Rsa { .. }) => &ring_sig::RSA_PSS_2048_8192_SHA384,
        (S::RsaPssSha512, K::Rsa { .. }) => &ring_sig::RSA_PSS_2048_8192_SHA512,
        (S::EcdsaSha256, K::EcdsaP256) => &ring_sig::ECDSA_P256_SHA256_ASN1,
        (S::EcdsaSha384, K::EcdsaP256) => &ring_sig::ECDSA_P256_SHA384_ASN1,
        (S::EcdsaSha256, K::EcdsaP384) => &ring_sig::ECDSA_P384_SHA256_ASN1,
        (S::EcdsaSha384, K::EcdsaP384) => &ring_sig::ECDSA_P384_SHA384_ASN1,
        (S::Ed25519, K::Ed25519) => &ring_sig::ED25519,
        _ => return None,
    })
}

/// Reads a signature AlgorithmIdentifier, accepting only the algorithms `ring` verifies and
/// only with the parameters the standards prescribe.
pub(crate) fn parse_signature_algorithm(
    id: &AlgorithmIdentifierOwned,
    context: &str,
) -> Result<SignatureAlgorithm, Error> {
    let params = id.parameters.as_ref();
    let pkcs1 = |algorithm| {
        if params.is_some_and(|p| !p.is_null()) {
            Err(Error::malformed(
                context,
                format!("{algorithm} parameters must be NULL or absent"),
            ))
        } else {
            Ok(algorithm)
        }
    };
    let absent = |algorithm| {
        if params.is_some() {
            Err(Error::malformed(
                context,
                format!("{algorithm} parameters must be absent"),
            ))
        } else {
            Ok(algorithm)
        }
    };
    match id.oid {
        SHA256_WITH_RSA => pkcs1(SignatureAlgorithm::RsaPkcs1Sha256),
        SHA384_WITH_RSA => pkcs1(SignatureAlgorithm::RsaPkcs1Sha384),
        SHA512_WITH_RSA => pkcs1(SignatureAlgorithm::RsaPkcs1Sha512),
        ECDSA_WITH_SHA256 => absent(SignatureAlgorithm::EcdsaSha256),
        ECDSA_WITH_SHA384 => absent(SignatureAlgorithm::EcdsaSha384),
        ED25519 => absent(SignatureAlgorithm::Ed25519),
        RSASSA_PSS => parse_pss_params(params, context),
        other => Err(Error::unsupported(
            context,
            match describe_oid(&other) {
                d if d.starts_with("OID ") => format!("signature algorithm {other}"),
                d => d,
            },
        )),
    }
}

/// Accepts RSASSA-PSS only in the form `ring` verifies: SHA-256/384/512, MGF1 with the same
/// hash, a salt as long as the hash, and the standard trailer.
fn parse_pss_params(
    params: Option<&der::asn1::Any>,
    context: &str,
) -> Result<SignatureAlgorithm, Error> {
    let pss_context = format!("{context}: RSASSA-PSS parameters");
    let Some(params) = params else {
        return Err(Error::unsupported(
            &pss_context,
            "RSASSA-PSS with default parameters (SHA-1)",
        ));
    };
    let params: RsaPssParams = params
        .decode_as()
        .map_err(|e| Error::der(pss_context.clone(), e))?;
    let hash = match &params.hash {
        None => {
            return Err(Error::unsupported(
                &pss_context,
                "RSASSA-PSS with SHA-1 (the default hash)",
            ));
        }
        Some(hash) => hash,
    };
    let (algorithm, hash_name, hash_len) = match hash_algorithm(hash) {
        Some(SHA256) => (SignatureAlgorithm::RsaPssSha256, "SHA-256", 32),
        Some(SHA384) => (SignatureAlgorithm::RsaPssSha384, "SHA-384", 48),
        Some(SHA512) => (SignatureAlgorithm::RsaPssSha512, "SHA-512", 64),
        _ => {
            return Err(Error::unsupported(
                &pss_context,
                format!("RSASSA-PSS hash {}", describe_oid(&hash.oid)),
            ));
        }
    };
    let mgf_hash = match &params.mask_gen {
        Some(mask_gen) if mask_gen.oid == MGF1 => mask_gen
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<AlgorithmIdentifierOwned>().ok())
            .and_then(|inner| hash_algorithm(&inner)),
        Some(_) | None => None,
    };
    if mgf_hash != Some(hash.oid) {
        return Err(Error::unsupported(
            &pss_context,
            format!("RSASSA-PSS whose mask generation function is not MGF1 with {hash_name}"),
        ));
    }
    let salt_length = params.salt_length.unwrap_or(20);
    if usize::try_from(salt_length).ok() != Some(hash_len) {
        return Err(Error::unsupported(
            &pss_context,
            format!(
                "RSASSA-PSS with a salt length of {salt_length} bytes (with {hash_name} it \
                 must be {hash_len})"
            ),
        ));
    }
    if params.trailer_field.unwrap_or(1) != 1 {
        return Err(Error::unsupported(
            &pss_context,
            "RSASSA-PSS with a trailer field other than 1",
        ));
    }
    Ok(algorithm)
}

/// The OID of a hash AlgorithmIdentifier whose parameters are NULL or absent.
fn hash_algorithm(id: &AlgorithmIdentifierOwned) -> Option<ObjectIdentifier> {
    match &id.parameters {
        Some(p) if !p.is_null() => None,
        _ => Some(id.oid),
    }
}

/// The number of significant bits in a big-endian unsigned integer.
fn significant_bits(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    while let [0, tail @ ..] = rest {
        rest = tail;
    }
    match rest.first() {
        None => 0,
        Some(first) => rest.len() * 8 - first.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_bits_ignores_leading_zeros() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0, 0x80, 0]), 16);
        assert_eq!(significant_bits(&[0x01]), 1);
        assert_eq!(significant_bits(&[0x7f, 0xff]), 15);
    }

    #[test]
    fn display_names() {
        assert_eq!(KeyAlgorithm::Rsa { bits: 2048 }.to_string(), "RSA 2048");
        assert_eq!(KeyAlgorithm::EcdsaP256.to_string(), "ECDSA P-256");
        assert_eq!(KeyAlgorithm::EcdsaP384.to_string(), "ECDSA P-384");
        assert_eq!(KeyAlgorithm::Ed25519.to_string(), "Ed25519");
        assert_eq!(
            SignatureAlgorithm::RsaPssSha384.to_string(),
            "RSASSA-PSS with SHA-384"
        );
    }

    #[test]
    fn unknown_oids_are_described() {
        assert_eq!(
            describe_oid(&ObjectIdentifier::new_unwrap("1.3.101.113")),
            "Ed448 (1.3.101.113)"
        );
        assert_eq!(
            describe_oid(&ObjectIdentifier::new_unwrap("1.2.3.4")),
            "OID 1.2.3.4"
        );
    }

    #[test]
    fn mismatched_pairs_have_no_ring_algorithm() {
        assert!(
            ring_algorithm(
                SignatureAlgorithm::EcdsaSha256,
                &KeyAlgorithm::Rsa { bits: 2048 }
            )
            .is_none()
        );
        assert!(ring_algorithm(SignatureAlgorithm::Ed25519, &KeyAlgorithm::EcdsaP256).is_none());
        assert!(
            ring_algorithm(
                SignatureAlgorithm::RsaPssSha256,
                &KeyAlgorithm::Rsa { bits: 4096 }
            )
            .is_some()
        );
    }
}
