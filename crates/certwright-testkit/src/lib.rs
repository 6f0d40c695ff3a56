//! Test support for certwright, never published: an in-memory Kubernetes API server
//! with its CRDs and schema checks ([`apiserver`], also the `certwright-apiserver`
//! binary; [`crds`], [`schema`]), and the CSR and CA fixtures of `certwright-fixtures`
//! (re-exported as [`fixtures`]).
//!
//! The PKI simulators are `certwright-simulators`, and the backend conformance suite is
//! `certwright-conformance`. Crates below `certwright-pki` (`certwright-x509`,
//! `certwright-api`, `certwright-policy`) test with `certwright-fixtures` alone, and the
//! adapter crates (`certwright-backend-*`) test without this crate.

#![deny(missing_docs)]

pub mod apiserver;
pub mod crds;
pub mod schema;

/// The CSR and CA fixtures (`certwright-fixtures`), for tests that use the testkit too.
pub use certwright_fixtures as fixtures;
pub use certwright_fixtures::{
    CsrBuilder, GeneratedCert, GeneratedCsr, KeyKind, TestCa, VALID_FROM_UNIX, VALID_UNTIL_UNIX,
    rcgen,
};
