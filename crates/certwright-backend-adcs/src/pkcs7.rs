//! The little DER certsrv needs read: the certificates of a PKCS#7 SignedData (the CA
//! chain from `certnew.p7b`), certificates however a certsrv wraps them, and the signature
//! algorithm of a certificate (which hash the `tls-server-end-point` channel binding uses).

use base64::Engine as _;
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

/// pkcs-7 (1.2.840.113549.1.7), the arc of every PKCS#7 content type.
const OID_PKCS7: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07];
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

/// The DER certificates in an answer, whatever its wrapping: PKCS#7 SignedData or
/// certificates, each as PEM under any label, as DER, or as bare base64 (a `certnew.p7b`
/// of another certsrv implementation may answer a PEM certificate whatever its content
/// type says). Only the shape is read here; the caller parses each certificate.
///
/// # Errors
/// Why nothing could be read.
pub(crate) fn certificates_in(body: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let text = String::from_utf8_lossy(body);
    if text.contains("-----BEGIN ") {
        let mut out = Vec::new();
        for block in pem_blocks(&text) {
            let der = base64::engine::general_purpose::STANDARD
                .decode(block)
                .map_err(|_| "a PEM block whose base64 does not decode")?;
            out.extend(der_certificates(&der)?);
        }
        return Ok(out);
    }
    if body.first() == Some(&0x30) {
        return der_certificates(body);
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| "neither PEM, DER nor base64")?;
    der_certificates(&der)
}

/// The base64 of each PEM block (`-----BEGIN <any label>-----` to `-----END`), with line
/// breaks and any RFC 1421 headers (`Name: value` lines) left out.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(header_end) = after.find("-----") else {
            break;
        };
        let body = &after[header_end + 5..];
        let Some(end) = body.find("-----END ") else {
            break;
        };
        let base64: String = body[..end]
            .lines()
            .filter(|line| !line.contains(':'))
            .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
            .collect();
        blocks.push(base64);
        rest = &body[end + "-----END ".len()..];
    }
    blocks
}

/// The certificates of one DER value: a PKCS#7 ContentInfo's, or one or more
/// certificates one after the other.
fn der_certificates(der: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let first = tlv(der).filter(|t| t.tag == 0x30).ok_or("not DER")?;
    let is_content_info = tlv(first.contents)
        .is_some_and(|oid| oid.tag == 0x06 && oid.contents.starts_with(OID_PKCS7));
    if is_content_info {
        return signed_data_certificates(der);
    }
    let mut out = Vec::new();
    let mut rest = der;
    while !rest.is_empty() {
        let cert = tlv(rest)
            .filter(|t| t.tag == 0x30)
            .ok_or("DER with trailing data that is not a certificate")?;
        out.push(cert.whole.to_vec());
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

    fn wrap(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            n if n < 0x80 => out.push(n as u8),
            n => {
                out.push(0x82);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(contents);
        out
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN {label}-----\r\n{}\r\n-----END {label}-----\r\n",
            lines.join("\r\n")
        )
    }

    #[test]
    fn certificates_are_read_in_any_wrapping() {
        let root =
            certwright_simulators::TestCa::root(certwright_simulators::KeyKind::EcdsaP256, "r");
        let issuing = root.intermediate(certwright_simulators::KeyKind::EcdsaP256, "i");
        let (a, b) = (
            root.cert().cert_der.to_vec(),
            issuing.cert().cert_der.to_vec(),
        );
        let mut inner = wrap(0x02, &[1]);
        inner.extend(wrap(0x31, &[]));
        inner.extend(wrap(0x30, &wrap(0x06, &OID_PKCS7_DATA)));
        inner.extend(wrap(0xa0, &[a.clone(), b.clone()].concat()));
        inner.extend(wrap(0x31, &[]));
        let mut info = wrap(0x06, OID_SIGNED_DATA);
        info.extend(wrap(0xa0, &wrap(0x30, &inner)));
        let p7 = wrap(0x30, &info);
        let both = vec![a.clone(), b.clone()];
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("PKCS7 PEM", pem("PKCS7", &p7).into_bytes()),
            (
                "PKCS7 under CERTIFICATE",
                pem("CERTIFICATE", &p7).into_bytes(),
            ),
            ("PKCS7 DER", p7.clone()),
            ("PKCS7 base64", format!("{}\r\n", b64(&p7)).into_bytes()),
            (
                "two PEM certificates",
                format!("{}{}", pem("CERTIFICATE", &a), pem("CERTIFICATE", &b)).into_bytes(),
            ),
            ("DER certificates", [a.clone(), b.clone()].concat()),
            (
                "base64 certificates",
                b64(&[a.clone(), b.clone()].concat()).into_bytes(),
            ),
        ];
        for (what, body) in cases {
            assert_eq!(certificates_in(&body).as_ref(), Ok(&both), "{what}");
        }
        assert_eq!(
            certificates_in(format!("  {}", b64(&a)).as_bytes()),
            Ok(vec![a.clone()])
        );
        for bad in [
            &b"<html>sign in</html>"[..],
            b"",
            b"-----BEGIN X-----\n!!\n-----END X-----",
        ] {
            assert!(
                certificates_in(bad).map_or(true, |c| c.is_empty()),
                "{bad:?}"
            );
        }
        assert!(certificates_in(&[a.as_slice(), &[0x04, 0x00]].concat()).is_err());
    }

    /// pkcs7-data.
    const OID_PKCS7_DATA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let ca =
            certwright_simulators::TestCa::root(certwright_simulators::KeyKind::EcdsaP384, "x");
        let der = &ca.cert().cert_der;
        assert_eq!(signature_hash(der), Hash::Sha384);
        let ca =
            certwright_simulators::TestCa::root(certwright_simulators::KeyKind::EcdsaP256, "x");
        assert_eq!(signature_hash(&ca.cert().cert_der), Hash::Sha256);
    }
}
