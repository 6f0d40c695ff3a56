//! Test support for certwright, never published: CSR and CA fixtures built with rcgen
//! ([`fixtures`]).
//!
//! Fixtures return bytes and PEM strings rather than certwright types, so that crates
//! below `certwright-pki` (such as `certwright-x509`) can use them in their own tests.

#![deny(missing_docs)]

pub mod fixtures;

pub use fixtures::{
    CsrBuilder, GeneratedCert, GeneratedCsr, KeyKind, TestCa, VALID_FROM_UNIX, VALID_UNTIL_UNIX,
};
/// rcgen, re-exported so tests can name its key usage, EKU and DN types without their own
/// dependency on it.
pub use rcgen;
