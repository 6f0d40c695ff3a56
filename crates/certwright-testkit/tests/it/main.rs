//! Tests of the test API server, and of the examples against the CRD schemas.
//!
//! One test binary per crate: every integration test links the whole dependency
//! tree, so separate binaries cost a link and tens of megabytes each.

mod apiserver;
mod examples;
