//! Integration tests of CSR and certificate handling against fixture files.
//!
//! One test binary per crate: every integration test links the whole dependency
//! tree, so separate binaries cost a link and tens of megabytes each.

mod certificates;
mod csr;
mod no_panic;
