//! `certwright-controller`: flags, logging and tracing, metrics and health endpoints,
//! leader election, then the engine. Everything else lives in `certwright-engine`.

mod flags;
mod run;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One rustls crypto provider for the whole process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flags = flags::Flags::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certwright-controller: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "certwright-controller stopped");
            eprintln!("certwright-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}
