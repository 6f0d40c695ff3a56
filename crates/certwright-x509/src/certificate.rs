//! X.509 certificates: parsing, inspection, PEM bundles and signature checks between them.
//!
//! Certificates come back from CAs; unlike CSRs they may carry keys certwright cannot verify
//! with (those parse, and only fail when used to verify a signature).

use std::fmt;

use der::Decode;
use sha2::{Digest, Sha256};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;

use crate::algorithm::{self, ParsedKey, PublicKeyInfo};
use crate::extensions::{
    BasicConstraints, ExtendedKeyUsage, Inspected, KeyUsages, SubjectAltNames,
};
use crate::name::DistinguishedName;
use crate::{Error, MAX_BUNDLE_BYTES, der_util, pem};

/// A parsed X.509 certificate. Two certificates are equal when their DER is.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    subject: DistinguishedName,
    issuer: DistinguishedName,
    serial: Vec<u8>,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
    key: ParsedKey,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: Vec<u8>,
    inspected: Inspected,
}

impl Certificate {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Certificate, Error> {
        let cert =
            x509_cert::Certificate::from_der(der).map_err(|e| Error::der("certificate", e))?;
        let tbs = cert.tbs_certificate();
        if tbs.signature() != cert.signature_algorithm() {
            return Err(Error::malformed(
                "certificate",
                "signature algorithm in tbsCertificate differs from the outer one",
            ));
        }
        let Some(signature) = cert.signature().as_bytes() else {
            return Err(Error::malformed(
                "certificate: signature",
                "BIT STRING has unused bits",
            ));
        };
        let subject = DistinguishedName::from_name(tbs.subject(), "certificate: subject")?;
        let issuer = DistinguishedName::from_name(tbs.issuer(), "certificate: issuer")?;
        let context = format!("certificate {}", quote(&subject));
        let key = ParsedKey::from_spki(
            tbs.subject_public_key_info(),
            &format!("{context}: public key"),
        )?;
        let inspected = Inspected::from_extensions(
            tbs.extensions().map_or(&[][..], |e| e.as_slice()),
            &format!("{context}: extensions"),
        )?;
        let validity = tbs.validity();
        Ok(Certificate {
            der: der.to_vec(),
            serial: tbs.serial_number().as_bytes().to_vec(),
            not_before: timestamp(&validity.not_before, &context, "notBefore")?,
            not_after: timestamp(&validity.not_after, &context, "notAfter")?,
            subject,
            issuer,
            key,
            signature_algorithm: cert.signature_algorithm().clone(),
            signature: signature.to_vec(),
            inspected,
        })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The serial number's DER integer contents.
    pub(crate) fn serial_bytes(&self) -> &[u8] {
        &self.serial
    }

    /// Verifies that this certificate's key made `signature`, with `algorithm`, over
    /// the first element of `der`: the to-be-signed part of a signed structure (a
    /// certificate, a CRL).
    pub(crate) fn verify_signed_structure(
        &self,
        der: &[u8],
        algorithm: &AlgorithmIdentifierOwned,
        signature: &[u8],
        context: &str,
    ) -> Result<(), Error> {
        let algorithm = algorithm::parse_signature_algorithm(
            algorithm,
            &format!("{context}: signature algorithm"),
        )?;
        let signed = der_util::first_element(der).map_err(|e| Error::der(context, e))?;
        self.key.verify(algorithm, signed, signature, context)
    }

    /// The `http` and `https` URLs of the CRL distribution points this certificate names
    /// (RFC 5280 section 4.2.1.13), in order; empty when it names none.
    pub fn crl_urls(&self) -> Vec<String> {
        use der::oid::AssociatedOid;
        use x509_cert::ext::pkix::CrlDistributionPoints;
        use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
        let Ok(cert) = x509_cert::Certificate::from_der(&self.der) else {
            return Vec::new();
        };
        let mut urls = Vec::new();
        for ext in cert.tbs_certificate().extensions().into_iter().flatten() {
            if ext.extn_id != CrlDistributionPoints::OID {
                continue;
            }
            let Ok(points) = CrlDistributionPoints::from_der(ext.extn_value.as_bytes()) else {
                continue;
            };
            for point in points.0 {
                if let Some(DistributionPointName::FullName(names)) = point.distribution_point {
                    for name in names {
                        if let GeneralName::UniformResourceIdentifier(uri) = name {
                            let uri = uri.as_str();
                            if uri.starts_with("http://") || uri.starts_with("https://") {
                                urls.push(uri.to_string());
                            }
                        }
                    }
                }
            }
        }
        urls
    }

    /// The certificate as a `CERTIFICATE` PEM block.
    pub fn to_pem(&self) -> String {
        pem::encode(pem::CERTIFICATE_LABEL, &self.der)
    }

    /// The subject name.
    pub fn subject(&self) -> &DistinguishedName {
        &self.subject
    }

    /// The issuer name.
    pub fn issuer(&self) -> &DistinguishedName {
        &self.issuer
    }

    /// The serial number as lowercase hex without separators or sign padding
    /// (e.g. `"1a2b"`).
    pub fn serial_hex(&self) -> String {
        let mut bytes = self.serial.as_slice();
        while let [0, rest @ ..] = bytes {
            if rest.is_empty() {
                break;
            }
            bytes = rest;
        }
        hex(bytes)
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> jiff::Timestamp {
        self.not_before
    }

    /// End of the validity period.
    pub fn not_after(&self) -> jiff::Timestamp {
        self.not_after
    }

    /// SHA-256 of the DER encoding.
    pub fn fingerprint_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// SHA-256 of the DER encoding as lowercase hex without separators.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint_sha256())
    }

    /// The subject alternative names (empty if the extension is absent).
    pub fn sans(&self) -> &SubjectAltNames {
        &self.inspected.sans
    }

    /// Whether basicConstraints says the subject is a CA.
    pub fn is_ca(&self) -> bool {
        self.inspected.basic_constraints.is_some_and(|bc| bc.ca)
    }

    /// The basicConstraints extension, if present.
    pub fn basic_constraints(&self) -> Option<BasicConstraints> {
        self.inspected.basic_constraints
    }

    /// The keyUsage extension, if present.
    pub fn key_usage(&self) -> Option<KeyUsages> {
        self.inspected.key_usage
    }

    /// The extendedKeyUsage purposes (empty if the extension is absent).
    pub fn extended_key_usages(&self) -> &[ExtendedKeyUsage] {
        &self.inspected.extended_key_usages
    }

    /// The subject's public key.
    pub fn public_key(&self) -> &PublicKeyInfo {
        &self.key.info
    }

    /// Whether subject and issuer are the same name (as for a root or a self-signed
    /// certificate).
    pub fn is_self_issued(&self) -> bool {
        self.subject == self.issuer
    }

    /// Verifies this certificate's signature with `issuer`'s public key. Names are not
    /// compared; see [`Chain::order`](crate::Chain::order) for that.
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<(), Error> {
        let context = format!(
            "certificate {} signed by {}",
            quote(&self.subject),
            quote(&issuer.subject)
        );
        issuer.verify_signed_structure(
            &self.der,
            &self.signature_algorithm,
            &self.signature,
            &context,
        )
    }

    /// A short human description: the quoted subject, or the serial if the subject is empty.
    pub(crate) fn describe(&self) -> String {
        if self.subject.is_empty() {
            format!("<empty subject, serial {}>", self.serial_hex())
        } else {
            quote(&self.subject)
        }
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("serial", &self.serial_hex())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Parses every `CERTIFICATE` block of a PEM bundle, in order. Blocks with other labels
/// (keys, CRLs) are skipped; a bundle without any certificate is an error.
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<Certificate>, Error> {
    if pem.len() > MAX_BUNDLE_BYTES {
        return Err(Error::TooLarge {
            limit: MAX_BUNDLE_BYTES,
            actual: pem.len(),
        });
    }
    let blocks = pem::decode_certificates(pem)?;
    if blocks.is_empty() {
        return Err(Error::NoCertificates);
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, der)| {
            Certificate::from_der(der).map_err(|e| match e {
                Error::Der { context, source } => Error::Der {
                    context: format!("certificate bundle: block {}: {context}", i + 1),
                    source,
                },
                Error::Malformed { context, reason } => Error::Malformed {
                    context: format!("certificate bundle: block {}: {context}", i + 1),
                    reason,
                },
                other => other,
            })
        })
        .collect()
}

/// Concatenates the PEM encodings of `certs`, in order.
pub fn certificates_to_pem(certs: &[Certificate]) -> String {
    certs.iter().map(Certificate::to_pem).collect()
}

fn timestamp(time: &Time, context: &str, field: &str) -> Result<jiff::Timestamp, Error> {
    let seconds = i64::try_from(time.to_unix_duration().as_secs()).ok();
    seconds
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .ok_or_else(|| {
            Error::malformed(
                format!("{context}: {field}"),
                format!("{time} is out of range"),
            )
        })
}

pub(crate) fn quote(name: &DistinguishedName) -> String {
    format!("\"{name}\"")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_without_separators() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn empty_bundle_is_rejected() {
        assert!(matches!(
            parse_pem_bundle(b"no pem here"),
            Err(Error::NoCertificates)
        ));
    }

    #[test]
    fn oversized_bundle_is_rejected_before_parsing() {
        let input = vec![b'x'; MAX_BUNDLE_BYTES + 1];
        assert!(matches!(
            parse_pem_bundle(&input),
            Err(Error::TooLarge { limit: MAX_BUNDLE_BYTES, actual }) if actual == MAX_BUNDLE_BYTES + 1
        ));
    }
}
