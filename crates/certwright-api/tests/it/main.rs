//! Integration tests of the CRDs and the shipped example issuers.
//!
//! One test binary per crate: every integration test links the whole dependency
//! tree, so separate binaries cost a link and tens of megabytes each.

mod crd;
mod examples;
