//! Enrollment passwords, and the pending ids that carry them sealed.
//!
//! Every enrollment gets a fresh random password. EJBCA asks for the same password again
//! when an approved enrollment is finalized, possibly days later and after a controller
//! restart, and the pending id is the only thing the caller persists. So the pending id
//! of a held enrollment is `<request id>.<sealed password>`: the password encrypted with
//! AES-256-GCM under a key derived (HKDF-SHA256) from the issuer's own credentials, bound
//! to the request id and to the request's idempotency key (the CertificateRequest's uid),
//! so that an id copied onto another CertificateRequest does not open. The id lives in an annotation that more people can read than the
//! issuer's Secret, and whoever holds an end entity's username and password can enroll a
//! key of their own for it, so the password never appears there in clear.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};

use certwright_pki::Error;

/// Random bytes in each enrollment password (base64url: 32 characters).
const PASSWORD_BYTES: usize = 24;

/// Salt of the key derivation; changing it orphans every pending id in flight.
const KDF_SALT: &[u8] = b"certwright ejbca pending id v1";

/// The HKDF info naming what the key is for.
const KDF_INFO: &[u8] = b"enrollment password";

/// A fresh random enrollment password.
pub(super) fn new_password(rng: &SystemRandom) -> Result<String, Error> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    rng.fill(&mut bytes).map_err(|_| random_failed())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn random_failed() -> Error {
    Error::Transient {
        message: "the system random number generator failed".to_string(),
        source: None,
    }
}

/// The EJBCA approval request id at the start of a pending id, without opening the rest.
pub(super) fn request_id_of(pending_id: &str) -> Option<i64> {
    let (id, _) = pending_id.split_once('.')?;
    parse_request_id(id)
}

/// An EJBCA approval request id: a 32-bit integer, written in decimal.
pub(super) fn parse_request_id(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>()
        .ok()
        .filter(|n| i32::try_from(*n).is_ok())
}

/// The associated data of a sealed password: the approval request id, then the
/// idempotency key. The id's text holds no NUL, so the split between them is unambiguous.
fn associated_data(request_id: i64, idempotency_key: &str) -> Vec<u8> {
    let mut aad = request_id.to_string().into_bytes();
    aad.push(0);
    aad.extend_from_slice(idempotency_key.as_bytes());
    aad
}

/// Seals and opens enrollment passwords in pending ids.
pub(super) struct Sealer {
    key: LessSafeKey,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// A sealer keyed by the issuer's secret material (credentials and URLs), each part
    /// length-prefixed so that no two different sets of parts give the same input.
    pub(super) fn new(parts: &[&[u8]]) -> Result<Sealer, Error> {
        let mut ikm = Vec::new();
        for part in parts {
            ikm.extend_from_slice(&(part.len() as u64).to_be_bytes());
            ikm.extend_from_slice(part);
        }
        let prk = Salt::new(HKDF_SHA256, KDF_SALT).extract(&ikm);
        let okm = prk
            .expand(&[KDF_INFO], &AES_256_GCM)
            .map_err(|_| Error::misconfigured("cannot derive the pending-id key"))?;
        Ok(Sealer {
            key: LessSafeKey::new(UnboundKey::from(okm)),
        })
    }

    /// `<request id>.<base64url(nonce, ciphertext, tag)>`.
    pub(super) fn seal(
        &self,
        rng: &SystemRandom,
        request_id: i64,
        idempotency_key: &str,
        password: &str,
    ) -> Result<String, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| random_failed())?;
        let aad = associated_data(request_id, idempotency_key);
        let mut sealed = password.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut sealed,
            )
            .map_err(|_| Error::misconfigured("cannot seal the enrollment password"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{request_id}.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// The request id and password sealed in `pending_id` for the request with
    /// `idempotency_key`.
    ///
    /// # Errors
    /// [`Error::Rejected`] when the id is not one this issuer wrote for this request
    /// (edited, copied from another request, written by another issuer or backend), or
    /// the credentials it was sealed under have changed:
    /// the enrollment cannot be finalized, and only a new request can get a certificate.
    pub(super) fn open(
        &self,
        pending_id: &str,
        idempotency_key: &str,
    ) -> Result<(i64, String), Error> {
        // The id comes from an editable annotation: quote a bounded prefix of it.
        let shown: String = pending_id.chars().take(64).collect();
        let malformed = || Error::Rejected {
            reason: format!(
                "pending id {shown:?} is not an EJBCA approval request id written by \
                 certwright (<request id>.<sealed enrollment password>), so it cannot be \
                 finalized"
            ),
        };
        let (id_text, sealed) = pending_id.split_once('.').ok_or_else(malformed)?;
        let request_id = parse_request_id(id_text).ok_or_else(malformed)?;
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| malformed())?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(malformed());
        }
        let ciphertext = bytes.split_off(NONCE_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes);
        let mut buffer = ciphertext;
        let aad = associated_data(request_id, idempotency_key);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut buffer,
            )
            .map_err(|_| Error::Rejected {
                reason: format!(
                    "cannot open the enrollment password sealed in the pending id of EJBCA \
                     approval request {request_id}: the id was edited, copied from another \
                     CertificateRequest, written by another issuer, or this issuer's \
                     credentials changed since the enrollment; \
                     EJBCA needs that password to finalize, so the request must be made \
                     again"
                ),
            })?;
        let password = String::from_utf8(plain.to_vec()).map_err(|_| malformed())?;
        Ok((request_id, password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secret: &[u8]) -> Sealer {
        Sealer::new(&[b"https://ejbca.example/ejbca/ejbca-rest-api", secret]).expect("sealer")
    }

    #[test]
    fn passwords_are_fresh_and_url_safe() {
        let rng = SystemRandom::new();
        let a = new_password(&rng).expect("password");
        let b = new_password(&rng).expect("password");
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn a_sealed_password_opens_with_the_same_credentials_only() {
        let rng = SystemRandom::new();
        let id = sealer(b"secret")
            .seal(&rng, 1001, "uid-1", "p4ssw0rd")
            .expect("sealed");
        assert!(id.starts_with("1001."), "{id}");
        assert!(!id.contains("p4ssw0rd"));
        assert!(id.len() <= 256);
        assert_eq!(request_id_of(&id), Some(1001));
        assert_eq!(
            sealer(b"secret").open(&id, "uid-1").expect("opens"),
            (1001, "p4ssw0rd".to_string())
        );
        let err = sealer(b"rotated")
            .open(&id, "uid-1")
            .expect_err("other key");
        assert_eq!(err.metric_label(), "rejected", "{err}");
        assert!(err.to_string().contains("credentials changed"), "{err}");

        // The ciphertext is bound to its request id.
        let moved = id.replacen("1001.", "1002.", 1);
        assert!(sealer(b"secret").open(&moved, "uid-1").is_err());

        // ...and to its CertificateRequest: copied onto another one, it does not open.
        let err = sealer(b"secret")
            .open(&id, "uid-2")
            .expect_err("other request");
        assert_eq!(err.metric_label(), "rejected", "{err}");
        assert!(err.to_string().contains("copied"), "{err}");
        assert!(sealer(b"secret").open(&id, "").is_err());

        let negative = sealer(b"secret").seal(&rng, -42, "", "pw").expect("sealed");
        assert_eq!(
            sealer(b"secret").open(&negative, "").expect("opens"),
            (-42, "pw".to_string())
        );
    }

    #[test]
    fn malformed_ids_are_rejected_without_quoting_much() {
        let s = sealer(b"secret");
        let long = format!("1.{}", "A".repeat(500));
        for id in [
            "",
            "1001",
            "abc.def",
            "1.",
            "1.!!",
            "99999999999.AAAA",
            long.as_str(),
        ] {
            match s.open(id, "uid-1") {
                Err(Error::Rejected { reason }) => assert!(reason.len() < 400, "{reason}"),
                other => panic!("{id:?}: expected Rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn request_ids_are_32_bit_decimals() {
        assert_eq!(parse_request_id("0"), Some(0));
        assert_eq!(parse_request_id("-2147483648"), Some(-2_147_483_648));
        assert_eq!(parse_request_id("2147483647"), Some(2_147_483_647));
        for bad in ["", "-", "2147483648", "1e3", " 1", "+1", "12345678901"] {
            assert_eq!(parse_request_id(bad), None, "{bad:?}");
        }
    }
}
