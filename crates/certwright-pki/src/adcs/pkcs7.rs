//! The little DER certsrv needs read: the certificates of a PKCS#7 SignedData (the CA
//! chain from `certnew.p7b`), and the signature algorithm of a certificate (which hash
//! the `tls-server-end-point` channel binding uses).

use sha2::Digest;

/// One DER element: its tag, its contents, and what follows it.
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    whole: &'a [u8],
    rest: &'a [u8],
}

fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some(Tlv {
        tag,
        contents: input.get(header..end)?,
        whole: input.get(..end)?,
        rest: input.get(end..)?,
    })
}

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

/// The DER certificates of a PKCS#7 ContentInfo holding SignedData, or why not.
pub(crate) fn signed_data_certificates(der: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    const BAD: &str = "not a PKCS#7 SignedData structure";
    let content_info = tlv(der).filter(|t| t.tag == 0x30).ok_or(BAD)?;
    let oid = tlv(content_info.contents)
        .filter(|t| t.tag == 0x06)
        .ok_or(BAD)?;
    if oid.contents != OID_SIGNED_DATA {
        return Err("a PKCS#7 structure that is not SignedData");
    }
    let explicit = tlv(oid.rest).filter(|t| t.tag == 0xa0).ok_or(BAD)?;
    let signed_data = tlv(explicit.contents)
        .filter(|t| t.tag == 0x30)
        .ok_or(BAD)?;
    // version, digestAlgorithms, encapContentInfo, then [0] IMPLICIT certificates.
    let version = tlv(signed_data.contents)
        .filter(|t| t.tag == 0x02)
        .ok_or(BAD)?;
    let digests = tlv(version.rest).filter(|t| t.tag == 0x31).ok_or(BAD)?;
    let encap = tlv(digests.rest).filter(|t| t.tag == 0x30).ok_or(BAD)?;
    let Some(certs) = tlv(encap.rest).filter(|t| t.tag == 0xa0) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut rest = certs.contents;
    while !rest.is_empty() {
        let cert = tlv(rest).ok_or(BAD)?;
        if cert.tag == 0x30 {
            out.push(cert.whole.to_vec());
        }
        rest = cert.rest;
    }
    Ok(out)
}

/// The hash of the certificate for RFC 5929 `tls-server-end-point`: the hash of its
/// signature algorithm, SHA-256 where that is MD5 or SHA-1 (or unknown).
pub(crate) fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    let algorithm = signature_hash(cert_der);
    match algorithm {
        Hash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

fn signature_hash(cert_der: &[u8]) -> Hash {
    let oid = tlv(cert_der)
        .and_then(|cert| tlv(cert.contents))
        .and_then(|tbs| tlv(tbs.rest))
        .and_then(|alg| tlv(alg.contents))
        .filter(|oid| oid.tag == 0x06)
        .map(|oid| oid.contents);
    match oid {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        Some([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c])
        | Some([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]) => Hash::Sha384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        Some([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d])
        | Some([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]) => Hash::Sha512,
        _ => Hash::Sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_without_panic() {
        for bad in [
            &b""[..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 0x06, 0x01, 0x00],
            &[0x30, 0x80],
        ] {
            assert!(signed_data_certificates(bad).is_err(), "{bad:?}");
            assert_eq!(tls_server_end_point(bad).len(), 32);
        }
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let ca = certwright_testkit::TestCa::root(certwright_testkit::KeyKind::EcdsaP384, "x");
        let der = &ca.cert().cert_der;
        assert_eq!(signature_hash(der), Hash::Sha384);
        let ca = certwright_testkit::TestCa::root(certwright_testkit::KeyKind::EcdsaP256, "x");
        assert_eq!(signature_hash(&ca.cert().cert_der), Hash::Sha256);
    }
}
