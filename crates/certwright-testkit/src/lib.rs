//! Test support for certwright, never published: CSR and CA fixtures built with rcgen
//! ([`fixtures`]); an in-memory Kubernetes API server with its CRDs and schema checks
//! ([`apiserver`], [`crds`], [`schema`]); an HTTPS test server ([`tls`]); PKI simulators:
//! a REST CA ([`rest_sim`]), AD CS certsrv ([`adcs_sim`]) with a Kerberos KDC
//! ([`kdc_sim`]), EJBCA REST ([`ejbca_sim`]), a CRL server ([`crl_server`]) and a
//! Jira-like change-ticket system ([`ticket_sim`]); a launcher for a real `cfssl serve`
//! ([`cfssl`]), SoftHSM2 tokens ([`softhsm`]) and the backend conformance suite
//! ([`conformance`]).
//!
//! Fixtures return bytes and PEM strings rather than certwright types, so that crates
//! below `certwright-pki` (such as `certwright-x509`) can use them in their own tests.

#![deny(missing_docs)]

pub mod adcs_sim;
pub mod apiserver;
pub mod cfssl;
pub mod conformance;
pub mod crds;
pub mod crl_server;
pub mod ejbca_sim;
pub mod fixtures;
pub mod kdc_sim;
pub mod rest_sim;
pub mod schema;
pub mod softhsm;
pub mod ticket_sim;
pub mod tls;

pub use fixtures::{
    CsrBuilder, GeneratedCert, GeneratedCsr, KeyKind, TestCa, VALID_FROM_UNIX, VALID_UNTIL_UNIX,
};
/// rcgen, re-exported so tests can name its key usage, EKU and DN types without their own
/// dependency on it.
pub use rcgen;
