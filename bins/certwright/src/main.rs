//! `certwright`, the operator CLI: works from files, with no cluster.
//! `check` asks whether an issuer configuration can reach and authenticate to its PKI,
//! `sign` issues a certificate for a CSR through it, `inspect` explains a CSR or
//! certificate, `policy test` evaluates a request against IssuancePolicies.

mod cli;
mod policy;

use std::process::ExitCode;

fn main() -> ExitCode {
    // One rustls crypto provider for the whole process: ring.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("certwright: a rustls crypto provider was already installed");
    }
    cli::main()
}
