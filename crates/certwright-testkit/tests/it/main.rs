//! Backend tests against real and simulated CAs, and tests of the test API server.
//!
//! One test binary per crate: every integration test links the whole dependency
//! tree, so separate binaries cost a link and tens of megabytes each.

mod adcs;
mod adcs_kerberos;
mod apiserver;
mod conformance_adcs;
mod conformance_ca;
mod conformance_cfssl;
mod conformance_ejbca;
mod conformance_rest;
mod conformance_softhsm;
mod egress;
mod ejbca;
mod examples;
mod rest_backend;
mod softhsm;
mod ticket_sim;
