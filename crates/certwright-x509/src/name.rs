//! Distinguished names: their RFC 4514 string form and common name.
//!
//! Names are compared by their DER encoding, which is what chain ordering uses to match an
//! issuer to a subject.

use std::fmt::{self, Write as _};

use der::asn1::ObjectIdentifier;
use der::{Encode, Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::Name;

use crate::Error;

const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Short names for attribute types: the RFC 4514 table, then a few that are common in
/// certificates (the names OpenSSL prints).
const ATTRIBUTE_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "STREET"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.12", "title"),
    ("2.5.4.17", "postalCode"),
    ("2.5.4.42", "GN"),
    ("2.5.4.97", "organizationIdentifier"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
];

/// A subject or issuer name.
///
/// Displays in RFC 4514 form, most specific attribute first (`CN=leaf,O=Example,C=DE`);
/// equality is by DER encoding.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DistinguishedName {
    rfc4514: String,
    common_name: Option<String>,
    attributes: Vec<(String, Option<String>)>,
    der: Vec<u8>,
}

impl DistinguishedName {
    pub(crate) fn from_name(name: &Name, context: &str) -> Result<Self, Error> {
        let der = name
            .to_der()
            .map_err(|e| Error::der(format!("{context}: name"), e))?;
        let mut rfc4514 = String::new();
        // RFC 4514 section 2.1: the RDNSequence is written last element first.
        for (i, rdn) in name
            .iter_rdn()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .enumerate()
        {
            if i > 0 {
                rfc4514.push(',');
            }
            for (j, atv) in rdn.iter().enumerate() {
                if j > 0 {
                    rfc4514.push('+');
                }
                write_attribute(&mut rfc4514, atv);
            }
        }
        // Like Go's crypto/x509 (and so cert-manager), the last CN in the sequence wins.
        let common_name = name
            .iter()
            .filter(|atv| atv.oid == COMMON_NAME)
            .filter_map(attribute_string)
            .last();
        let attributes = name
            .iter()
            .map(|atv| {
                let dotted = atv.oid.to_string();
                let kind = ATTRIBUTE_NAMES
                    .iter()
                    .find(|(oid, _)| *oid == dotted)
                    .map_or(dotted.clone(), |(_, short)| (*short).to_string());
                (kind, attribute_string(atv))
            })
            .collect();
        Ok(DistinguishedName {
            rfc4514,
            common_name,
            attributes,
            der,
        })
    }

    /// The RFC 4514 string, e.g. `CN=app.example.com,O=Example Org,C=DE`.
    pub fn as_str(&self) -> &str {
        &self.rfc4514
    }

    /// The common name, if the name has one that is a string (the last one if several).
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// Every attribute in encoding order (least specific first): its short name (`CN`,
    /// `O`, `OU`, `C`, `L`, `ST`, `STREET`, `postalCode`, `serialNumber`, ...) or dotted
    /// OID when it has none, and its value when that is a string.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.attributes
            .iter()
            .map(|(kind, value)| (kind.as_str(), value.as_deref()))
    }

    /// The string values of every attribute of one kind (by short name), in order.
    pub fn values_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attributes
            .iter()
            .filter(move |(k, _)| k == kind)
            .filter_map(|(_, value)| value.as_deref())
    }

    /// The DER encoding of the name.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether the name has no attributes at all.
    pub fn is_empty(&self) -> bool {
        self.rfc4514.is_empty()
    }
}

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc4514)
    }
}

impl fmt::Debug for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.rfc4514)
    }
}

fn write_attribute(out: &mut String, atv: &AttributeTypeAndValue) {
    let dotted = atv.oid.to_string();
    let short = ATTRIBUTE_NAMES
        .iter()
        .find(|(oid, _)| *oid == dotted)
        .map(|(_, name)| *name);
    match (short, attribute_string(atv)) {
        (Some(short), Some(value)) => {
            out.push_str(short);
            out.push('=');
            escape_value(out, &value);
        }
        // RFC 4514 section 2.4: unknown types and non-string values use `oid=#hex(DER)`.
        _ => {
            out.push_str(&dotted);
            out.push_str("=#");
            match atv.value.to_der() {
                Ok(bytes) => {
                    for byte in bytes {
                        let _ = write!(out, "{byte:02x}");
                    }
                }
                Err(_) => out.push_str("??"),
            }
        }
    }
}

/// The value of an attribute as a string, if it is one of the directory string types.
fn attribute_string(atv: &AttributeTypeAndValue) -> Option<String> {
    let bytes = atv.value.value();
    match atv.value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::NumericString => String::from_utf8(bytes.to_vec()).ok(),
        // T.61 in practice carries Latin-1.
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// Escapes an attribute value as RFC 4514 section 2.4 requires.
fn escape_value(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\{:02x}", c as u32);
            }
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::str::FromStr;

    use super::*;

    fn dn(s: &str) -> DistinguishedName {
        DistinguishedName::from_name(&Name::from_str(s).unwrap(), "test").unwrap()
    }

    #[test]
    fn attributes_by_kind_in_order() {
        let name = dn("CN=app,OU=a,OU=b,O=Example,C=DE,2.5.4.12=#0c0474697465");
        let kinds: Vec<&str> = name.attributes().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["title", "C", "O", "OU", "OU", "CN"]);
        assert_eq!(name.values_of("OU").collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(name.values_of("title").collect::<Vec<_>>(), ["tite"]);
        assert_eq!(name.values_of("L").count(), 0);
    }

    #[test]
    fn formats_most_specific_first_and_finds_cn() {
        let name = dn("CN=app.example.com,OU=Platform,O=Example Org,C=DE");
        assert_eq!(
            name.as_str(),
            "CN=app.example.com,OU=Platform,O=Example Org,C=DE"
        );
        assert_eq!(name.common_name(), Some("app.example.com"));
        assert!(!name.is_empty());
    }

    #[test]
    fn escapes_special_characters() {
        let mut out = String::new();
        escape_value(&mut out, " a,b+c\"d\\e<f>g;h ");
        assert_eq!(out, "\\ a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h\\ ");
        let mut out = String::new();
        escape_value(&mut out, "#x\u{1}");
        assert_eq!(out, "\\#x\\01");
    }

    #[test]
    fn unknown_attribute_types_use_hex() {
        let name = dn("1.2.3.4=#0c0161");
        assert_eq!(name.as_str(), "1.2.3.4=#0c0161");
        assert_eq!(name.common_name(), None);
    }

    #[test]
    fn last_common_name_wins() {
        let name = dn("CN=second,CN=first");
        assert_eq!(name.common_name(), Some("second"));
    }

    #[test]
    fn empty_name() {
        let name = DistinguishedName::from_name(&Name::default(), "test").unwrap();
        assert!(name.is_empty());
        assert_eq!(name.to_string(), "");
    }
}
