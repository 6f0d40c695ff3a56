//! CSR parsing and verification, certificate inspection and chain ordering for certwright.
//!
//! This crate knows nothing of Kubernetes. It turns the bytes of a cert-manager
//! `CertificateRequest` into a verified [`Csr`] that policy can inspect, and turns what a CA
//! returns into an ordered [`Chain`] that can be split into `status.certificate` and
//! `status.ca`.
//!
//! - Parsing uses the RustCrypto `x509-cert`/`der` crates; signatures are verified with
//!   `ring`. Accepted keys: RSA 2048–8192 bits, ECDSA P-256 and P-384, Ed25519. Accepted
//!   signatures: RSA PKCS#1 v1.5 and RSASSA-PSS with SHA-256/384/512, ECDSA with
//!   SHA-256/384, Ed25519.
//! - Inputs are bounded ([`MAX_CSR_BYTES`], [`MAX_BUNDLE_BYTES`],
//!   [`MAX_CHAIN_CERTIFICATES`]) and no input makes this crate panic.
//!
//! ```no_run
//! # fn demo(pem: &[u8], bundle: &[u8]) -> Result<(), certwright_x509::Error> {
//! use certwright_x509::{Chain, Csr, parse_pem_bundle};
//!
//! let csr = Csr::parse(pem)?;
//! println!("{} asks for {:?}", csr.subject(), csr.sans().dns);
//!
//! let chain = Chain::order(parse_pem_bundle(bundle)?)?;
//! let (certificate, ca) = chain.split();
//! # let _ = (certificate, ca);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod algorithm;
mod certificate;
mod chain;
mod crl;
mod csr;
mod der_util;
mod error;
mod extensions;
mod name;
mod pem;

pub use algorithm::{KeyAlgorithm, PublicKeyInfo, SignatureAlgorithm};
pub use certificate::{Certificate, certificates_to_pem, parse_pem_bundle};
pub use chain::Chain;
pub use crl::{Crl, MAX_CRL_BYTES};
pub use csr::Csr;
pub use error::Error;
pub use extensions::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltNames};
pub use name::DistinguishedName;

/// Largest CSR input accepted, PEM or DER, in bytes.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Largest PEM certificate bundle accepted, in bytes.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// Most certificates [`Chain::order`] accepts (after dropping duplicates); it checks
/// signatures between every pair whose names match, so the count is bounded.
pub const MAX_CHAIN_CERTIFICATES: usize = 32;
