//! PEM armour: decoding with `rustls-pki-types`, encoding with `pem-rfc7468`.
//!
//! Decoding takes CSR blocks (including the legacy `NEW CERTIFICATE REQUEST` label) and
//! certificate blocks; encoding writes 64-column RFC 7468 text with `\n` line endings.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::Error;

pub(crate) const CSR_LABEL: &str = "CERTIFICATE REQUEST";
pub(crate) const CERTIFICATE_LABEL: &str = "CERTIFICATE";

const LEGACY_CSR_BEGIN: &[u8] = b"-----BEGIN NEW CERTIFICATE REQUEST-----";
const LEGACY_CSR_END: &[u8] = b"-----END NEW CERTIFICATE REQUEST-----";
const CSR_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE REQUEST-----";
const CSR_END: &[u8] = b"-----END CERTIFICATE REQUEST-----";

/// Decodes the one CSR block in `pem`. More than one block is an error: a policy must see
/// the same request the CA signs.
pub(crate) fn decode_csr(pem: &[u8]) -> Result<Vec<u8>, Error> {
    let normalised = replace(
        &replace(pem, LEGACY_CSR_BEGIN, CSR_BEGIN),
        LEGACY_CSR_END,
        CSR_END,
    );
    let mut blocks = CertificateSigningRequestDer::pem_slice_iter(&normalised);
    let first = match blocks.next() {
        None => {
            return Err(Error::NoPemBlock {
                context: "CSR".to_owned(),
                label: CSR_LABEL,
            });
        }
        Some(block) => block.map_err(|source| Error::Pem {
            context: "CSR".to_owned(),
            source,
        })?,
    };
    let extra = blocks.count();
    if extra > 0 {
        return Err(Error::malformed(
            "CSR",
            format!(
                "PEM holds {} certificate request blocks; exactly one is expected",
                extra + 1
            ),
        ));
    }
    Ok(first.as_ref().to_vec())
}

/// Decodes every `CERTIFICATE` block in `pem`, skipping blocks with other labels.
pub(crate) fn decode_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    CertificateDer::pem_slice_iter(pem)
        .map(|block| {
            block
                .map(|der| der.as_ref().to_vec())
                .map_err(|source| Error::Pem {
                    context: "certificate bundle".to_owned(),
                    source,
                })
        })
        .collect()
}

/// Encodes `der` as one PEM block with the given label (one of this module's labels).
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der)
        .expect("this module's labels are valid RFC 7468 labels")
}

/// Replaces every occurrence of `from` in `haystack` with `to`.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn encode_writes_rfc4648_base64() {
        for (input, expected) in [
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                encode(CERTIFICATE_LABEL, input.as_bytes()),
                format!("-----BEGIN CERTIFICATE-----\n{expected}\n-----END CERTIFICATE-----\n")
            );
        }
    }

    #[test]
    fn encode_wraps_at_64_columns_and_round_trips() {
        let der: Vec<u8> = (0..=255).collect();
        let pem = encode(CERTIFICATE_LABEL, &der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        assert_eq!(decode_certificates(pem.as_bytes()).unwrap(), vec![der]);
    }

    #[test]
    fn legacy_csr_label_is_accepted() {
        let pem = encode(CSR_LABEL, &[0x30, 0x00])
            .replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert_eq!(decode_csr(pem.as_bytes()).unwrap(), vec![0x30, 0x00]);
    }

    #[test]
    fn two_csr_blocks_are_rejected() {
        let one = encode(CSR_LABEL, &[0x30, 0x00]);
        let err = decode_csr(format!("{one}{one}").as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSR: PEM holds 2 certificate request blocks; exactly one is expected"
        );
    }

    #[test]
    fn missing_block_names_the_label() {
        let err = decode_csr(b"hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSR: no \"-----BEGIN CERTIFICATE REQUEST-----\" PEM block found"
        );
    }

    #[test]
    fn replace_handles_overlaps_and_edges() {
        assert_eq!(replace(b"aaa", b"aa", b"b"), b"ba");
        assert_eq!(replace(b"", b"a", b"b"), b"");
        assert_eq!(replace(b"xay", b"a", b""), b"xy");
    }
}
