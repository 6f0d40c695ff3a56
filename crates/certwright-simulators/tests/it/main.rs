//! Backend tests against real and simulated CAs: each adapter against the simulator of
//! its protocol (and a real `cfssl serve`, a real SoftHSM2 token), the conformance suite
//! against every adapter, and the egress policy every network adapter keeps.
//!
//! One test binary per crate: every integration test links the whole dependency
//! tree, so separate binaries cost a link and tens of megabytes each.

mod adcs;
mod adcs_kerberos;
mod conformance_adcs;
mod conformance_ca;
mod conformance_cfssl;
mod conformance_ejbca;
mod conformance_rest;
mod conformance_softhsm;
mod egress;
mod ejbca;
mod rest_backend;
mod softhsm;
mod ticket_sim;
