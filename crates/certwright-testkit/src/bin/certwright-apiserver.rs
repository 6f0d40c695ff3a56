//! `certwright-apiserver`: the testkit's in-memory Kubernetes API server as a process,
//! for demos and benchmarks that run the real controller against it.
//!
//! Prints its URL as the first line of stdout once it serves (CRDs registered, kubeconfig
//! written), then runs until SIGTERM or SIGINT. With `--enable-fault-endpoint` it also
//! serves `/testkit/faults` and `/testkit/stats` (see `--help`).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use certwright_testkit::apiserver::{ApiServer, ApiServerOptions};
use clap::Parser;

/// What `--help` adds about the fault endpoint.
const FAULT_ENDPOINT_HELP: &str = "\
Fault endpoint (only with --enable-fault-endpoint; not logged, counted or faulted):
  POST   /testkit/faults  {\"method\": \"PATCH\", \"pattern\": \"/status\", \"code\": 409, \"times\": 3}
                          fails the next 3 calls whose method matches (\"*\": any) and
                          whose path contains pattern, with a Status as upstream's for code;
                          {..., \"code\": 409, \"ratio\": 0.05} fails each matching call with
                          probability 0.05 until cleared (fixed seed, or \"seed\": n);
                          {..., \"delayMs\": 200[, \"times\": n]} delays matching calls;
                          neither times nor ratio: every matching call. Answers the rules.
  GET    /testkit/faults  the active rules
  DELETE /testkit/faults  removes every rule
  GET    /testkit/stats   {\"total\", \"byMethod\": {\"GET\": n, ...}, \"byClass\": {\"2xx\": n, ...},
                           \"injectedFaults\", \"watches\"}: the calls answered so far
  DELETE /testkit/stats   starts the counts over";

/// An in-memory Kubernetes API server over plain HTTP, for tests and demos.
#[derive(Debug, Parser)]
#[command(name = "certwright-apiserver", version, after_help = FAULT_ENDPOINT_HELP)]
struct Args {
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// A YAML file with one or more CustomResourceDefinitions to serve (repeatable).
    #[arg(long = "crd", value_name = "FILE")]
    crds: Vec<PathBuf>,
    /// Write a kubeconfig pointing at this server here.
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,
    /// The kubeconfig's default namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Changes retained per kind for resuming watches (older resourceVersions get 410).
    #[arg(long, default_value_t = 10_000)]
    history_limit: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 1.0)]
    bookmark_interval: f64,
    /// Serve the fault endpoint under /testkit/ (see below), so that a separate process
    /// can inject faults and read call counts.
    #[arg(long)]
    enable_fault_endpoint: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bookmark_interval = Duration::try_from_secs_f64(args.bookmark_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--bookmark-interval must be a positive number of seconds")?;
    let options = ApiServerOptions::new()
        .address(args.address)
        .port(args.port)
        .history_limit(args.history_limit)
        .bookmark_interval(bookmark_interval)
        .fault_endpoint(args.enable_fault_endpoint)
        // Nobody can read the log of a separate process: do not keep it.
        .request_log_limit(0);
    let server = ApiServer::start_with(options)
        .await
        .with_context(|| format!("listening on {}:{}", args.address, args.port))?;
    for file in &args.crds {
        let yaml =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let count = server
            .register_crds_yaml(&yaml)
            .with_context(|| format!("registering the CRDs of {}", file.display()))?;
        eprintln!(
            "certwright-apiserver: {count} CRD(s) from {}",
            file.display()
        );
    }
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, server.kubeconfig_yaml(&args.namespace))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let stop = shutdown_signal()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", server.url()).context("writing the URL to stdout")?;
    stdout.flush().context("writing the URL to stdout")?;

    stop.await;
    eprintln!("certwright-apiserver: stopping");
    drop(server);
    Ok(())
}

/// Listens for SIGINT (Ctrl-C) and, on Unix, SIGTERM; the future resolves on the first.
/// On Unix the handlers are in place when this returns, so registering before the URL is
/// printed means a caller that signals as soon as it has read the URL gets a clean stop,
/// not the default action. Elsewhere Ctrl-C is listened for once the future is polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                eprintln!("certwright-apiserver: cannot listen for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
        })
    }
}
