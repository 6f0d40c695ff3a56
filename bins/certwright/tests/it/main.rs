//! The `certwright` CLI run as a process against real and simulated CAs.
//!
//! One test binary per crate: every integration test links the whole dependency
//! tree, so separate binaries cost a link and tens of megabytes each.

mod adcs_cli;
mod cli;
mod ejbca_cli;
mod policy_cli;
