//! The one error type of this crate.
//!
//! Every variant names what was being read (for example `CSR: extensionRequest:
//! subjectAltName`) and why it failed, so its `Display` can go straight into a status condition.

use std::fmt;

/// Why a CSR, certificate, bundle or chain was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is larger than the bound for its kind; nothing was parsed.
    #[error("input of {actual} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The bound that applies ([`MAX_CSR_BYTES`](crate::MAX_CSR_BYTES) or
        /// [`MAX_BUNDLE_BYTES`](crate::MAX_BUNDLE_BYTES)).
        limit: usize,
        /// The size of the input.
        actual: usize,
    },

    /// A bundle or chain holds more certificates than this crate accepts.
    #[error("{actual} certificates given; at most {limit} are accepted")]
    TooManyCertificates {
        /// The bound ([`MAX_CHAIN_CERTIFICATES`](crate::MAX_CHAIN_CERTIFICATES)).
        limit: usize,
        /// How many were given.
        actual: usize,
    },

    /// The PEM armour could not be read.
    #[error("{context}: invalid PEM: {}", describe_pem_error(.source))]
    Pem {
        /// What was being read, e.g. `CSR`.
        context: String,
        /// The PEM decoder's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// The input holds no PEM block with the expected label.
    #[error("{context}: no \"-----BEGIN {label}-----\" PEM block found")]
    NoPemBlock {
        /// What was being read, e.g. `CSR`.
        context: String,
        /// The PEM label that was looked for.
        label: &'static str,
    },

    /// The DER encoding of a structure is invalid.
    #[error("{context}: invalid DER: {source}")]
    Der {
        /// The structure or field being decoded, e.g. `CSR: extensionRequest: subjectAltName`.
        context: String,
        /// The DER decoder's error.
        #[source]
        source: der::Error,
    },

    /// The structure decodes but its content is not acceptable.
    #[error("{context}: {reason}")]
    Malformed {
        /// The structure or field, e.g. `CSR: extensionRequest: subjectAltName`.
        context: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A key or signature algorithm (or its parameters) that certwright does not accept.
    #[error("{context}: unsupported algorithm: {algorithm}")]
    UnsupportedAlgorithm {
        /// Where the algorithm appeared, e.g. `CSR: public key`.
        context: String,
        /// The algorithm's name and OID, or the parameter that is not accepted.
        algorithm: String,
    },

    /// An RSA key outside the accepted 2048–8192-bit range.
    #[error("{context}: {}", describe_rsa_size(*.bits))]
    RsaKeySize {
        /// Where the key appeared, e.g. `CSR: public key`.
        context: String,
        /// The modulus size in bits.
        bits: usize,
    },

    /// The signature algorithm does not belong to the key type (e.g. an RSA key with an
    /// ECDSA signature).
    #[error("{context}: signature algorithm {signature} does not match the {key} key")]
    KeyMismatch {
        /// Where the mismatch was found.
        context: String,
        /// The key's algorithm.
        key: crate::KeyAlgorithm,
        /// The signature algorithm.
        signature: crate::SignatureAlgorithm,
    },

    /// A signature does not verify: the signed data or the signature was altered, or the
    /// wrong key was used.
    #[error("{context}: signature does not verify")]
    BadSignature {
        /// What was verified with which key, e.g. `CSR (self-signature)`.
        context: String,
    },

    /// A bundle holds no `CERTIFICATE` block.
    #[error("PEM bundle contains no certificate")]
    NoCertificates,

    /// The certificates do not form one chain from a leaf upwards.
    #[error("certificate chain is broken: {reason}")]
    BrokenChain {
        /// Which certificates are missing, ambiguous or left over, named by subject.
        reason: String,
    },
}

impl Error {
    /// A short, stable label for metrics (`reason` label values), one per variant.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::TooLarge { .. } => "too_large",
            Error::TooManyCertificates { .. } => "too_many_certificates",
            Error::Pem { .. } | Error::NoPemBlock { .. } => "pem",
            Error::Der { .. } => "der",
            Error::Malformed { .. } => "malformed",
            Error::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            Error::RsaKeySize { .. } => "rsa_key_size",
            Error::KeyMismatch { .. } => "key_mismatch",
            Error::BadSignature { .. } => "bad_signature",
            Error::NoCertificates => "no_certificates",
            Error::BrokenChain { .. } => "broken_chain",
        }
    }

    pub(crate) fn der(context: impl Into<String>, source: der::Error) -> Self {
        Error::Der {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            context: context.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(context: impl Into<String>, algorithm: impl Into<String>) -> Self {
        Error::UnsupportedAlgorithm {
            context: context.into(),
            algorithm: algorithm.into(),
        }
    }
}

/// The PEM decoder's own messages can quote a whole input line as a byte list; this keeps
/// the message short enough for a status condition.
fn describe_pem_error(error: &rustls_pki_types::pem::Error) -> impl fmt::Display + '_ {
    use rustls_pki_types::pem::Error as PemError;
    match error {
        PemError::MissingSectionEnd { .. } => "a BEGIN line has no matching END line".to_owned(),
        PemError::IllegalSectionStart { .. } => "malformed BEGIN line".to_owned(),
        PemError::Base64Decode(detail) => format!("invalid base64 ({detail})"),
        PemError::SectionTooLarge => "PEM section too large".to_owned(),
        PemError::NoItemsFound => "no PEM block found".to_owned(),
        other => other.to_string(),
    }
}

fn describe_rsa_size(bits: usize) -> String {
    if bits < crate::algorithm::RSA_MIN_BITS {
        format!(
            "RSA key of {bits} bits is below the {}-bit minimum",
            crate::algorithm::RSA_MIN_BITS
        )
    } else {
        format!(
            "RSA key of {bits} bits is above the {}-bit maximum",
            crate::algorithm::RSA_MAX_BITS
        )
    }
}
