//! Certificate revocation lists (RFC 5280 section 5): parsed with their signature
//! checked against the CA that issued them, and asked whether a certificate is listed.
//! The CRL distribution points a certificate names are read by
//! [`Certificate::crl_urls`].

use der::Decode;
use x509_cert::crl::CertificateList;

use crate::certificate::{Certificate, quote};
use crate::error::Error;
use crate::name::DistinguishedName;

/// The largest CRL accepted, in bytes: the CRL of a parent CA (which lists revoked CAs,
/// and, when it also serves end entities, tens of thousands of them) fits; anything
/// bigger is refused rather than parsed.
pub const MAX_CRL_BYTES: usize = 1024 * 1024;

/// `id-ce-issuingDistributionPoint`.
const ISSUING_DISTRIBUTION_POINT: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("2.5.29.28");

/// A parsed CRL. Its signature is not checked until [`Crl::verify_signed_by`].
#[derive(Clone, Debug)]
pub struct Crl {
    der: Vec<u8>,
    issuer: DistinguishedName,
    this_update: jiff::Timestamp,
    next_update: Option<jiff::Timestamp>,
    /// Serial numbers (DER integer contents) and revocation times.
    revoked: Vec<(Vec<u8>, jiff::Timestamp)>,
    signature_algorithm: x509_cert::spki::AlgorithmIdentifierOwned,
    signature: Vec<u8>,
    /// Why this CRL cannot say whether a CA certificate is revoked, if it cannot.
    out_of_scope: Option<String>,
}

impl Crl {
    /// Parses a CRL as DER, or as an `X509 CRL` PEM block (as CAs publish either).
    pub fn parse(bytes: &[u8]) -> Result<Crl, Error> {
        if bytes.len() > MAX_CRL_BYTES {
            return Err(Error::malformed(
                "CRL",
                format!(
                    "{} bytes, more than the {MAX_CRL_BYTES} accepted",
                    bytes.len()
                ),
            ));
        }
        let pem_block = if bytes.starts_with(b"-----BEGIN")
            || contains(bytes, b"-----BEGIN X509 CRL-----")
        {
            use rustls_pki_types::pem::PemObject;
            let block = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(bytes)
                .map_err(|e| Error::malformed("CRL", format!("not a PEM X509 CRL: {e}")))?;
            Some(block.as_ref().to_vec())
        } else {
            None
        };
        let der = pem_block.as_deref().unwrap_or(bytes);
        let list: CertificateList =
            CertificateList::from_der(der).map_err(|e| Error::der("CRL", e))?;
        let tbs = &list.tbs_cert_list;
        if tbs.signature != list.signature_algorithm {
            return Err(Error::malformed(
                "CRL",
                "signature algorithm in tbsCertList differs from the outer one",
            ));
        }
        let Some(signature) = list.signature.as_bytes() else {
            return Err(Error::malformed(
                "CRL: signature",
                "BIT STRING has unused bits",
            ));
        };
        let issuer = DistinguishedName::from_name(&tbs.issuer, "CRL: issuer")?;
        let time = |t: &x509_cert::time::Time, field: &str| {
            i64::try_from(t.to_unix_duration().as_secs())
                .ok()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .ok_or_else(|| {
                    Error::malformed(format!("CRL: {field}"), format!("{t} is out of range"))
                })
        };
        // RFC 5280 sections 5.2 and 5.3: a critical extension that is not applied makes
        // the CRL unusable; an issuing distribution point may leave CA certificates out.
        let mut out_of_scope = None;
        for ext in tbs.crl_extensions.iter().flatten() {
            if ext.extn_id == ISSUING_DISTRIBUTION_POINT {
                use x509_cert::ext::pkix::crl::IssuingDistributionPoint;
                match IssuingDistributionPoint::from_der(ext.extn_value.as_bytes()) {
                    Ok(idp)
                        if idp.only_contains_user_certs
                            || idp.only_contains_attribute_certs
                            || idp.only_some_reasons.is_some()
                            || idp.indirect_crl =>
                    {
                        out_of_scope = Some(
                            "its issuing distribution point leaves CA certificates out (end \
                             entities or attribute certificates only, some reasons only, or \
                             an indirect CRL)"
                                .to_string(),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        out_of_scope = Some(format!(
                            "its issuing distribution point cannot be read ({e})"
                        ));
                    }
                }
            } else if ext.critical {
                out_of_scope = Some(format!(
                    "it has the critical extension {} (a delta CRL is 2.5.29.27), which is not \
                     applied",
                    ext.extn_id
                ));
            }
        }
        let mut revoked = Vec::new();
        for entry in tbs.revoked_certificates.iter().flatten() {
            if let Some(ext) = entry
                .crl_entry_extensions
                .iter()
                .flatten()
                .find(|e| e.critical)
            {
                out_of_scope = Some(format!(
                    "an entry has the critical extension {} (an indirect CRL's certificate \
                     issuer is 2.5.29.29), which is not applied",
                    ext.extn_id
                ));
            }
            revoked.push((
                entry.serial_number.as_bytes().to_vec(),
                time(&entry.revocation_date, "revocationDate")?,
            ));
        }
        Ok(Crl {
            der: der.to_vec(),
            issuer,
            this_update: time(&tbs.this_update, "thisUpdate")?,
            next_update: tbs
                .next_update
                .as_ref()
                .map(|t| time(t, "nextUpdate"))
                .transpose()?,
            revoked,
            signature_algorithm: list.signature_algorithm.clone(),
            signature: signature.to_vec(),
            out_of_scope,
        })
    }

    /// Whether this CRL can say that a CA certificate is revoked: no critical extension
    /// certwright does not apply, no issuing distribution point that leaves CA
    /// certificates out.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming what puts CA certificates out of its scope.
    pub fn check_applies_to_ca_certificates(&self) -> Result<(), Error> {
        match &self.out_of_scope {
            None => Ok(()),
            Some(why) => Err(Error::malformed(
                "CRL",
                format!("it cannot say whether a CA certificate is revoked: {why}"),
            )),
        }
    }

    /// The CRL's issuer.
    pub fn issuer(&self) -> &DistinguishedName {
        &self.issuer
    }

    /// When the CRL was issued.
    pub fn this_update(&self) -> jiff::Timestamp {
        self.this_update
    }

    /// When the next CRL is due, if the CRL says.
    pub fn next_update(&self) -> Option<jiff::Timestamp> {
        self.next_update
    }

    /// Verifies the CRL's signature with `issuer`'s public key, and that `issuer` is the
    /// CRL's issuer by name.
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<(), Error> {
        let context = format!(
            "CRL of {} signed by {}",
            quote(&self.issuer),
            quote(issuer.subject())
        );
        if issuer.subject().der() != self.issuer.der() {
            return Err(Error::malformed(
                &context,
                "the CRL's issuer is not that certificate's subject",
            ));
        }
        issuer.verify_signed_structure(
            &self.der,
            &self.signature_algorithm,
            &self.signature,
            &context,
        )
    }

    /// When `cert` was revoked, if this CRL lists it: same issuer, same serial number.
    /// Meaningful only once [`Crl::verify_signed_by`] has passed.
    pub fn revocation_of(&self, cert: &Certificate) -> Option<jiff::Timestamp> {
        if cert.issuer().der() != self.issuer.der() {
            return None;
        }
        self.revoked
            .iter()
            .find(|(serial, _)| serial.as_slice() == cert.serial_bytes())
            .map(|(_, at)| *at)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use certwright_fixtures::{KeyKind, TestCa};

    use super::*;

    fn cert(pem: &str) -> Certificate {
        crate::parse_pem_bundle(pem.as_bytes()).unwrap().remove(0)
    }

    #[test]
    fn a_crl_lists_what_its_issuer_revoked_and_verifies_with_its_key() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let url = "http://pki.corp.example/root.crl";
        let revoked = root.intermediate_with_crl(KeyKind::EcdsaP256, "Issuing A", url);
        let kept = root.intermediate_with_crl(KeyKind::EcdsaP256, "Issuing B", url);
        let der = root.crl(&[&revoked.cert().serial_hex]);
        let crl = Crl::parse(&der).unwrap();
        let root_cert = cert(root.cert_pem());
        crl.verify_signed_by(&root_cert).unwrap();
        assert_eq!(crl.issuer().as_str(), "CN=Corp Root");
        assert!(crl.next_update().is_some_and(|n| n > crl.this_update()));
        assert!(crl.revocation_of(&cert(revoked.cert_pem())).is_some());
        assert!(crl.revocation_of(&cert(kept.cert_pem())).is_none());
        assert_eq!(cert(revoked.cert_pem()).crl_urls(), vec![url.to_string()]);
        assert!(root_cert.crl_urls().is_empty());
        // The same CRL as PEM.
        let pem = crate::pem::encode("X509 CRL", &der);
        assert!(
            Crl::parse(pem.as_bytes())
                .unwrap()
                .revocation_of(&cert(revoked.cert_pem()))
                .is_some()
        );
    }

    #[test]
    fn a_crl_signed_by_another_key_or_naming_another_issuer_is_refused() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let other = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let crl = Crl::parse(&other.crl(&[])).unwrap();
        // Same name, another key: the signature does not verify.
        assert!(crl.verify_signed_by(&cert(root.cert_pem())).is_err());
        let stranger = TestCa::root(KeyKind::EcdsaP256, "Stranger");
        let err = crl
            .verify_signed_by(&cert(stranger.cert_pem()))
            .unwrap_err();
        assert!(
            err.to_string().contains("not that certificate's subject"),
            "{err}"
        );
    }

    #[test]
    fn a_crl_for_end_entities_only_says_nothing_of_a_ca() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let url = "http://pki.corp.example/root.crl";
        let revoked = root.intermediate_with_crl(KeyKind::EcdsaP256, "Issuing A", url);
        let full = Crl::parse(&root.crl(&[&revoked.cert().serial_hex])).unwrap();
        full.check_applies_to_ca_certificates().unwrap();
        let users = Crl::parse(&root.crl_for_end_entities(&[&revoked.cert().serial_hex])).unwrap();
        users.verify_signed_by(&cert(root.cert_pem())).unwrap();
        let err = users.check_applies_to_ca_certificates().unwrap_err();
        assert!(
            err.to_string().contains("leaves CA certificates out"),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_oversized_input_is_an_error_not_a_panic() {
        assert!(Crl::parse(b"not a crl").is_err());
        assert!(Crl::parse(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").is_err());
        assert!(Crl::parse(&vec![0u8; MAX_CRL_BYTES + 1]).is_err());
    }
}
