//! Byte-level DER helpers.
//!
//! Signatures cover the exact bytes of the signed part, so it is sliced from the input
//! rather than re-encoded from the decoded structure.

use der::{Reader, SliceReader};

/// The complete encoding (tag, length and value) of the first element inside the outer
/// SEQUENCE of `der`: the `certificationRequestInfo` of a CSR, the `tbsCertificate` of a
/// certificate.
pub(crate) fn first_element(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    let signed = reader.sequence(|body| -> der::Result<&[u8]> {
        let first = body.tlv_bytes()?;
        // Skip the rest so the nested reader ends where the SEQUENCE does.
        while !body.is_finished() {
            body.tlv_bytes()?;
        }
        Ok(first)
    })?;
    reader.finish()?;
    Ok(signed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn slices_the_first_element() {
        // SEQUENCE { SEQUENCE { INTEGER 5 }, NULL }
        let der = [0x30, 0x07, 0x30, 0x03, 0x02, 0x01, 0x05, 0x05, 0x00];
        assert_eq!(
            first_element(&der).unwrap(),
            &[0x30, 0x03, 0x02, 0x01, 0x05]
        );
    }

    #[test]
    fn rejects_truncated_and_trailing_input() {
        assert!(first_element(&[0x30, 0x05, 0x30, 0x03]).is_err());
        assert!(first_element(&[0x30, 0x02, 0x05, 0x00, 0xff]).is_err());
        assert!(first_element(&[]).is_err());
        assert!(first_element(&[0x30, 0x00]).is_err());
    }
}
