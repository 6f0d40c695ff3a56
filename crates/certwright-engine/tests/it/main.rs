//! Engine tests against the in-memory API server.
//!
//! One test binary per crate: every integration test links the whole dependency
//! tree, so separate binaries cost a link and tens of megabytes each.

mod backup;
mod ca_faults;
mod embedding;
mod flow;
mod hsm;
mod kubernetes_csr;
mod leader;
mod lost_answers;
mod policy;
mod races;
mod rotation;
mod support;
mod tenancy;
