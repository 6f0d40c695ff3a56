//! Test support for certwright, never published: CSR and CA fixtures built with rcgen
//! (re-exported from `certwright-fixtures` as [`fixtures`]); an in-memory Kubernetes
//! API server with its CRDs and schema checks ([`apiserver`], [`crds`], [`schema`]); an
//! HTTPS test server ([`tls`]); PKI simulators: a REST CA ([`rest_sim`]), AD CS certsrv ([`adcs_sim`]) with a Kerberos KDC
//! ([`kdc_sim`]), EJBCA REST ([`ejbca_sim`]), a CRL server ([`crl_server`]) and a
//! Jira-like change-ticket system ([`ticket_sim`]); a launcher for a real `cfssl serve`
//! ([`cfssl`]) and SoftHSM2 tokens ([`softhsm`]). The backend conformance suite, which
//! its tests run against every adapter, is `certwright-conformance`.
//!
//! Crates below `certwright-pki` (`certwright-x509`, `certwright-api`,
//! `certwright-policy`) test with `certwright-fixtures` alone, without compiling any of
//! this.

#![deny(missing_docs)]

pub mod adcs_sim;
pub mod apiserver;
pub mod cfssl;
pub mod crds;
pub mod crl_server;
pub mod ejbca_sim;
pub mod kdc_sim;
pub mod rest_sim;
pub mod schema;
pub mod softhsm;
pub mod ticket_sim;
pub mod tls;

/// The CSR and CA fixtures (`certwright-fixtures`), for tests that use the testkit too.
pub use certwright_fixtures as fixtures;
pub use certwright_fixtures::{
    CsrBuilder, GeneratedCert, GeneratedCsr, KeyKind, TestCa, VALID_FROM_UNIX, VALID_UNTIL_UNIX,
    rcgen,
};
