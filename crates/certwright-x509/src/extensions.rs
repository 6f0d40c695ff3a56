//! The X.509 extensions certwright inspects: subjectAltName, keyUsage, extendedKeyUsage and
//! basicConstraints.
//!
//! Used both for the extensions a CSR requests and for those a certificate carries.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use der::Decode;
use der::asn1::{BitString, ObjectIdentifier};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints as X509BasicConstraints, SubjectAltName};

use crate::Error;
use crate::name::DistinguishedName;

const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// The subject alternative names, by type, in the order they appear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    /// `dNSName` entries.
    pub dns: Vec<String>,
    /// `iPAddress` entries.
    pub ips: Vec<IpAddr>,
    /// `uniformResourceIdentifier` entries.
    pub uris: Vec<String>,
    /// `rfc822Name` (email) entries.
    pub emails: Vec<String>,
    /// Entries of any other type (otherName, directoryName, registeredID, ...), described as
    /// `"<type> <value>"`, so that policy can refuse names it cannot check.
    pub other: Vec<String>,
}

impl SubjectAltNames {
    /// Whether there are no names of any type.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty()
            && self.ips.is_empty()
            && self.uris.is_empty()
            && self.emails.is_empty()
            && self.other.is_empty()
    }
}

/// One keyUsage bit (RFC 5280 section 4.2.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyUsage {
    /// `digitalSignature` (bit 0).
    DigitalSignature,
    /// `contentCommitment`, formerly `nonRepudiation` (bit 1).
    ContentCommitment,
    /// `keyEncipherment` (bit 2).
    KeyEncipherment,
    /// `dataEncipherment` (bit 3).
    DataEncipherment,
    /// `keyAgreement` (bit 4).
    KeyAgreement,
    /// `keyCertSign` (bit 5).
    KeyCertSign,
    /// `cRLSign` (bit 6).
    CrlSign,
    /// `encipherOnly` (bit 7).
    EncipherOnly,
    /// `decipherOnly` (bit 8).
    DecipherOnly,
}

impl KeyUsage {
    /// Every key usage, in bit order.
    pub const ALL: [KeyUsage; 9] = [
        KeyUsage::DigitalSignature,
        KeyUsage::ContentCommitment,
        KeyUsage::KeyEncipherment,
        KeyUsage::DataEncipherment,
        KeyUsage::KeyAgreement,
        KeyUsage::KeyCertSign,
        KeyUsage::CrlSign,
        KeyUsage::EncipherOnly,
        KeyUsage::DecipherOnly,
    ];

    /// The bit number in the keyUsage BIT STRING.
    pub fn bit(self) -> usize {
        self as usize
    }

    /// The RFC 5280 name, e.g. `digitalSignature`.
    pub fn name(self) -> &'static str {
        match self {
            KeyUsage::DigitalSignature => "digitalSignature",
            KeyUsage::ContentCommitment => "contentCommitment",
            KeyUsage::KeyEncipherment => "keyEncipherment",
            KeyUsage::DataEncipherment => "dataEncipherment",
            KeyUsage::KeyAgreement => "keyAgreement",
            KeyUsage::KeyCertSign => "keyCertSign",
            KeyUsage::CrlSign => "cRLSign",
            KeyUsage::EncipherOnly => "encipherOnly",
            KeyUsage::DecipherOnly => "decipherOnly",
        }
    }
}

impl fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`KeyUsage`] bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KeyUsages(u16);

impl KeyUsages {
    /// The empty set.
    pub fn empty() -> Self {
        KeyUsages(0)
    }

    /// Whether `usage` is in the set.
    pub fn contains(self, usage: KeyUsage) -> bool {
        self.0 & (1 << usage.bit()) != 0
    }

    /// Adds `usage` to the set.
    pub fn insert(&mut self, usage: KeyUsage) {
        self.0 |= 1 << usage.bit();
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The usages in the set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = KeyUsage> {
        KeyUsage::ALL.into_iter().filter(move |u| self.contains(*u))
    }

    /// The usages in the set, in bit order, as a vector.
    pub fn to_vec(self) -> Vec<KeyUsage> {
        self.iter().collect()
    }

    fn from_bit_string(bits: &BitString) -> Self {
        let mut set = KeyUsages::empty();
        for usage in KeyUsage::ALL {
            if bits.get(usage.bit()) == Some(true) {
                set.insert(usage);
            }
        }
        set
    }
}

impl FromIterator<KeyUsage> for KeyUsages {
    fn from_iter<I: IntoIterator<Item = KeyUsage>>(iter: I) -> Self {
        let mut set = KeyUsages::empty();
        for usage in iter {
            set.insert(usage);
        }
        set
    }
}

impl fmt::Debug for KeyUsages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for KeyUsages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, usage) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(usage.name())?;
        }
        Ok(())
    }
}

/// One extendedKeyUsage purpose (RFC 5280 section 4.2.1.12).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExtendedKeyUsage {
    /// `id-kp-serverAuth` (1.3.6.1.5.5.7.3.1).
    ServerAuth,
    /// `id-kp-clientAuth` (1.3.6.1.5.5.7.3.2).
    ClientAuth,
    /// `id-kp-codeSigning` (1.3.6.1.5.5.7.3.3).
    CodeSigning,
    /// `id-kp-emailProtection` (1.3.6.1.5.5.7.3.4).
    EmailProtection,
    /// `id-kp-timeStamping` (1.3.6.1.5.5.7.3.8).
    TimeStamping,
    /// `id-kp-OCSPSigning` (1.3.6.1.5.5.7.3.9).
    OcspSigning,
    /// `anyExtendedKeyUsage` (2.5.29.37.0).
    Any,
    /// Any other purpose, as a dotted OID.
    Other(String),
}

impl ExtendedKeyUsage {
    fn from_oid(oid: &ObjectIdentifier) -> Self {
        match oid.to_string().as_str() {
            "1.3.6.1.5.5.7.3.1" => ExtendedKeyUsage::ServerAuth,
            "1.3.6.1.5.5.7.3.2" => ExtendedKeyUsage::ClientAuth,
            "1.3.6.1.5.5.7.3.3" => ExtendedKeyUsage::CodeSigning,
            "1.3.6.1.5.5.7.3.4" => ExtendedKeyUsage::EmailProtection,
            "1.3.6.1.5.5.7.3.8" => ExtendedKeyUsage::TimeStamping,
            "1.3.6.1.5.5.7.3.9" => ExtendedKeyUsage::OcspSigning,
            "2.5.29.37.0" => ExtendedKeyUsage::Any,
            other => ExtendedKeyUsage::Other(other.to_owned()),
        }
    }

    /// The dotted OID of the purpose.
    pub fn oid(&self) -> &str {
        match self {
            ExtendedKeyUsage::ServerAuth => "1.3.6.1.5.5.7.3.1",
            ExtendedKeyUsage::ClientAuth => "1.3.6.1.5.5.7.3.2",
            ExtendedKeyUsage::CodeSigning => "1.3.6.1.5.5.7.3.3",
            ExtendedKeyUsage::EmailProtection => "1.3.6.1.5.5.7.3.4",
            ExtendedKeyUsage::TimeStamping => "1.3.6.1.5.5.7.3.8",
            ExtendedKeyUsage::OcspSigning => "1.3.6.1.5.5.7.3.9",
            ExtendedKeyUsage::Any => "2.5.29.37.0",
            ExtendedKeyUsage::Other(oid) => oid,
        }
    }
}

impl fmt::Display for ExtendedKeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExtendedKeyUsage::ServerAuth => "serverAuth",
            ExtendedKeyUsage::ClientAuth => "clientAuth",
            ExtendedKeyUsage::CodeSigning => "codeSigning",
            ExtendedKeyUsage::EmailProtection => "emailProtection",
            ExtendedKeyUsage::TimeStamping => "timeStamping",
            ExtendedKeyUsage::OcspSigning => "OCSPSigning",
            ExtendedKeyUsage::Any => "anyExtendedKeyUsage",
            ExtendedKeyUsage::Other(oid) => oid,
        })
    }
}

/// The basicConstraints extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BasicConstraints {
    /// Whether the subject is a CA.
    pub ca: bool,
    /// The maximum number of intermediate CAs below this one, if constrained.
    pub path_len: Option<u8>,
}

/// The inspected extensions of a CSR or certificate.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inspected {
    pub(crate) sans: SubjectAltNames,
    pub(crate) key_usage: Option<KeyUsages>,
    pub(crate) extended_key_usages: Vec<ExtendedKeyUsage>,
    pub(crate) basic_constraints: Option<BasicConstraints>,
    /// The OIDs of every other extension, in order (not inspected, but present).
    pub(crate) other_extensions: Vec<String>,
}

impl Inspected {
    /// Reads the extensions certwright inspects; others are ignored. A repeated extension is
    /// an error (RFC 5280 section 4.2).
    pub(crate) fn from_extensions(extensions: &[Extension], context: &str) -> Result<Self, Error> {
        let mut seen = HashSet::new();
        let mut inspected = Inspected::default();
        for extension in extensions {
            if !seen.insert(extension.extn_id) {
                return Err(Error::malformed(
                    context,
                    format!("extension {} appears more than once", extension.extn_id),
                ));
            }
            let value = extension.extn_value.as_bytes();
            match extension.extn_id {
                SUBJECT_ALT_NAME => {
                    let context = format!("{context}: subjectAltName");
                    let names =
                        SubjectAltName::from_der(value).map_err(|e| Error::der(&context, e))?;
                    inspected.sans = subject_alt_names(&names.0, &context)?;
                }
                KEY_USAGE => {
                    let bits = BitString::from_der(value)
                        .map_err(|e| Error::der(format!("{context}: keyUsage"), e))?;
                    inspected.key_usage = Some(KeyUsages::from_bit_string(&bits));
                }
                EXTENDED_KEY_USAGE => {
                    let oids = Vec::<ObjectIdentifier>::from_der(value)
                        .map_err(|e| Error::der(format!("{context}: extendedKeyUsage"), e))?;
                    inspected.extended_key_usages =
                        oids.iter().map(ExtendedKeyUsage::from_oid).collect();
                }
                BASIC_CONSTRAINTS => {
                    let bc = X509BasicConstraints::from_der(value)
                        .map_err(|e| Error::der(format!("{context}: basicConstraints"), e))?;
                    inspected.basic_constraints = Some(BasicConstraints {
                        ca: bc.ca,
                        path_len: bc.path_len_constraint,
                    });
                }
                other => inspected.other_extensions.push(other.to_string()),
            }
        }
        Ok(inspected)
    }
}

fn subject_alt_names(names: &[GeneralName], context: &str) -> Result<SubjectAltNames, Error> {
    let mut sans = SubjectAltNames::default();
    for name in names {
        match name {
            GeneralName::DnsName(dns) => sans.dns.push(dns.to_string()),
            GeneralName::Rfc822Name(email) => sans.emails.push(email.to_string()),
            GeneralName::UniformResourceIdentifier(uri) => sans.uris.push(uri.to_string()),
            GeneralName::IpAddress(octets) => {
                let bytes = octets.as_bytes();
                let ip = if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
                    IpAddr::V4(Ipv4Addr::from(v4))
                } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
                    IpAddr::V6(Ipv6Addr::from(v6))
                } else {
                    return Err(Error::malformed(
                        context,
                        format!("iPAddress of {} bytes (must be 4 or 16)", bytes.len()),
                    ));
                };
                sans.ips.push(ip);
            }
            GeneralName::OtherName(other) => {
                sans.other.push(format!("otherName {}", other.type_id));
            }
            GeneralName::DirectoryName(name) => {
                let dn = DistinguishedName::from_name(name, context)?;
                sans.other.push(format!("directoryName {dn}"));
            }
            GeneralName::RegisteredId(oid) => sans.other.push(format!("registeredID {oid}")),
            GeneralName::EdiPartyName(_) => sans.other.push("ediPartyName".to_owned()),
        }
    }
    Ok(sans)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn key_usages_set_operations() {
        let set: KeyUsages = [KeyUsage::KeyEncipherment, KeyUsage::DigitalSignature]
            .into_iter()
            .collect();
        assert!(set.contains(KeyUsage::DigitalSignature));
        assert!(!set.contains(KeyUsage::KeyCertSign));
        assert_eq!(
            set.to_vec(),
            vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]
        );
        assert_eq!(set.to_string(), "digitalSignature, keyEncipherment");
        assert!(KeyUsages::empty().is_empty());
    }

    #[test]
    fn key_usage_bits_are_read_most_significant_first() {
        // Bit 0 is the most significant bit: keyCertSign (5) and cRLSign (6) are 0b0000_0110.
        let bits = BitString::new(1, [0b0000_0110]).unwrap();
        assert_eq!(
            KeyUsages::from_bit_string(&bits).to_vec(),
            vec![KeyUsage::KeyCertSign, KeyUsage::CrlSign]
        );
        // decipherOnly is bit 8, in the second byte.
        let bits = BitString::new(7, [0x80, 0x80]).unwrap();
        assert_eq!(
            KeyUsages::from_bit_string(&bits).to_vec(),
            vec![KeyUsage::DigitalSignature, KeyUsage::DecipherOnly]
        );
    }

    #[test]
    fn eku_round_trips_oids() {
        for eku in [
            ExtendedKeyUsage::ServerAuth,
            ExtendedKeyUsage::ClientAuth,
            ExtendedKeyUsage::CodeSigning,
            ExtendedKeyUsage::EmailProtection,
            ExtendedKeyUsage::TimeStamping,
            ExtendedKeyUsage::OcspSigning,
            ExtendedKeyUsage::Any,
            ExtendedKeyUsage::Other("1.2.3.4".to_owned()),
        ] {
            let oid = ObjectIdentifier::new(eku.oid()).unwrap();
            assert_eq!(ExtendedKeyUsage::from_oid(&oid), eku);
        }
    }

    #[test]
    fn repeated_extension_is_rejected() {
        let ext = Extension {
            extn_id: BASIC_CONSTRAINTS,
            critical: true,
            extn_value: der::asn1::OctetString::new(vec![0x30, 0x00]).unwrap(),
        };
        let err =
            Inspected::from_extensions(&[ext.clone(), ext], "CSR: extensionRequest").unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSR: extensionRequest: extension 2.5.29.19 appears more than once"
        );
    }

    #[test]
    fn bad_ip_length_names_the_field() {
        let names = vec![GeneralName::IpAddress(
            der::asn1::OctetString::new(vec![1, 2, 3]).unwrap(),
        )];
        let err = subject_alt_names(&names, "CSR: extensionRequest: subjectAltName").unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSR: extensionRequest: subjectAltName: iPAddress of 3 bytes (must be 4 or 16)"
        );
    }
}
