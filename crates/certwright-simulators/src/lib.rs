//! PKI simulators for certwright's tests, never published, each built from its
//! protocol: a REST CA that also answers cfssl's API ([`rest_sim`]), AD CS certsrv web
//! enrollment with NTLMv2, channel binding and Negotiate ([`adcs_sim`]) against a
//! Kerberos KDC ([`kdc_sim`]), EJBCA's REST API ([`ejbca_sim`]), a plain-HTTP CRL server
//! ([`crl_server`]) and a Jira-like change-ticket system ([`ticket_sim`]); an HTTPS test
//! server they share ([`tls`]); a launcher for a real `cfssl serve` ([`cfssl`]) and
//! SoftHSM2 tokens ([`softhsm`]).
//!
//! The in-memory Kubernetes API server is `certwright-testkit`; the CSR and CA fixtures
//! are `certwright-fixtures`, re-exported here as [`fixtures`]. The adapter crates
//! (`certwright-backend-*`) test against this crate without compiling the API server.

#![deny(missing_docs)]

pub mod adcs_sim;
pub mod cfssl;
pub mod crl_server;
pub mod ejbca_sim;
pub mod kdc_sim;
pub mod rest_sim;
pub mod softhsm;
pub mod ticket_sim;
pub mod tls;

/// The CSR and CA fixtures (`certwright-fixtures`).
pub use certwright_fixtures as fixtures;
pub use certwright_fixtures::{
    CsrBuilder, GeneratedCert, GeneratedCsr, KeyKind, TestCa, VALID_FROM_UNIX, VALID_UNTIL_UNIX,
    rcgen,
};
