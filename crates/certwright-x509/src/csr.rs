//! PKCS#10 certificate signing requests: parsing, self-signature verification, inspection.
//!
//! A [`Csr`] only exists once its signature has been verified with its own key, its key and
//! signature algorithm are ones certwright accepts, and its requested extensions are readable.

use std::fmt;

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::request::CertReq;

use crate::algorithm::{self, ParsedKey, PublicKeyInfo, SignatureAlgorithm};
use crate::extensions::{
    BasicConstraints, ExtendedKeyUsage, Inspected, KeyUsages, SubjectAltNames,
};
use crate::name::DistinguishedName;
use crate::{Error, MAX_CSR_BYTES, der_util, pem};

const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

/// A parsed CSR whose self-signature has been verified. Two CSRs are equal when their DER
/// is.
#[derive(Clone)]
pub struct Csr {
    der: Vec<u8>,
    subject: DistinguishedName,
    key: PublicKeyInfo,
    signature_algorithm: SignatureAlgorithm,
    inspected: Inspected,
    other_attributes: Vec<String>,
}

impl Csr {
    /// Parses a CSR given as PEM or DER (told apart by the first byte: DER starts with a
    /// SEQUENCE tag), after checking the input is at most [`MAX_CSR_BYTES`].
    pub fn parse(input: &[u8]) -> Result<Csr, Error> {
        check_size(input)?;
        if input.first() == Some(&0x30) {
            Self::from_der(input)
        } else {
            Self::from_pem(input)
        }
    }

    /// Parses a PEM CSR (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST` block).
    pub fn from_pem(pem: &[u8]) -> Result<Csr, Error> {
        check_size(pem)?;
        let der = pem::decode_csr(pem)?;
        Self::from_der(&der)
    }

    /// Parses a DER CSR.
    pub fn from_der(der: &[u8]) -> Result<Csr, Error> {
        check_size(der)?;
        let request = CertReq::from_der(der).map_err(|e| Error::der("CSR", e))?;

        let key = ParsedKey::from_spki(&request.info.public_key, "CSR: public key")?;
        key.check_acceptable("CSR: public key")?;
        let signature_algorithm =
            algorithm::parse_signature_algorithm(&request.algorithm, "CSR: signature algorithm")?;
        let Some(signature) = request.signature.as_bytes() else {
            return Err(Error::malformed(
                "CSR: signature",
                "BIT STRING has unused bits",
            ));
        };
        let signed = der_util::first_element(der).map_err(|e| Error::der("CSR", e))?;
        key.verify(
            signature_algorithm,
            signed,
            signature,
            "CSR (self-signature)",
        )?;

        let subject = DistinguishedName::from_name(&request.info.subject, "CSR: subject")?;
        let extensions = requested_extensions(&request)?;
        let inspected = Inspected::from_extensions(&extensions, "CSR: extensionRequest")?;
        let other_attributes = request
            .info
            .attributes
            .iter()
            .filter(|a| a.oid != EXTENSION_REQUEST)
            .map(|a| a.oid.to_string())
            .collect();

        Ok(Csr {
            der: der.to_vec(),
            subject,
            key: key.info,
            signature_algorithm,
            inspected,
            other_attributes,
        })
    }

    /// The DER encoding, exactly as given (or as decoded from PEM).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CSR as a `CERTIFICATE REQUEST` PEM block.
    pub fn to_pem(&self) -> String {
        pem::encode(pem::CSR_LABEL, &self.der)
    }

    /// The requested subject.
    pub fn subject(&self) -> &DistinguishedName {
        &self.subject
    }

    /// The subject's common name, if any.
    pub fn common_name(&self) -> Option<&str> {
        self.subject.common_name()
    }

    /// The subject alternative names requested in the extensionRequest attribute.
    pub fn sans(&self) -> &SubjectAltNames {
        &self.inspected.sans
    }

    /// The subject's public key.
    pub fn public_key(&self) -> &PublicKeyInfo {
        &self.key
    }

    /// The algorithm of the CSR's self-signature.
    pub fn signature_algorithm(&self) -> SignatureAlgorithm {
        self.signature_algorithm
    }

    /// The requested keyUsage, if the CSR requests one.
    pub fn key_usage(&self) -> Option<KeyUsages> {
        self.inspected.key_usage
    }

    /// The requested extendedKeyUsage purposes (empty if none are requested).
    pub fn extended_key_usages(&self) -> &[ExtendedKeyUsage] {
        &self.inspected.extended_key_usages
    }

    /// The requested basicConstraints, if the CSR requests them.
    pub fn basic_constraints(&self) -> Option<BasicConstraints> {
        self.inspected.basic_constraints
    }

    /// The OIDs of the requested extensions certwright does not inspect (anything but
    /// subjectAltName, keyUsage, extendedKeyUsage and basicConstraints), in order: a
    /// CA may honour them, so policy can refuse what it cannot check.
    pub fn other_extensions(&self) -> &[String] {
        &self.inspected.other_extensions
    }

    /// The OIDs of the CSR's attributes other than extensionRequest (a
    /// challengePassword, Microsoft's enrollment name-value pairs, ...), in order.
    pub fn other_attributes(&self) -> &[String] {
        &self.other_attributes
    }
}

impl PartialEq for Csr {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Csr {}

impl fmt::Debug for Csr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csr")
            .field("subject", &self.subject)
            .field("key", &self.key.algorithm)
            .field("signature_algorithm", &self.signature_algorithm)
            .finish_non_exhaustive()
    }
}

fn check_size(input: &[u8]) -> Result<(), Error> {
    if input.len() > MAX_CSR_BYTES {
        return Err(Error::TooLarge {
            limit: MAX_CSR_BYTES,
            actual: input.len(),
        });
    }
    Ok(())
}

/// The extensions of the extensionRequest attribute (PKCS#9), or none if it is absent.
fn requested_extensions(request: &CertReq) -> Result<Vec<Extension>, Error> {
    let context = "CSR: extensionRequest";
    let mut found = None;
    for attribute in request.info.attributes.iter() {
        if attribute.oid != EXTENSION_REQUEST {
            continue;
        }
        if found.is_some() {
            return Err(Error::malformed(
                context,
                "attribute appears more than once",
            ));
        }
        let mut values = attribute.values.iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Error::malformed(
                context,
                format!(
                    "attribute must have exactly one value, found {}",
                    attribute.values.len()
                ),
            ));
        };
        let value_der = value.to_der().map_err(|e| Error::der(context, e))?;
        found = Some(Vec::<Extension>::from_der(&value_der).map_err(|e| Error::der(context, e))?);
    }
    Ok(found.unwrap_or_default())
}
