//! A local stand-in for a cluster, made of the real binaries: the testkit API server
//! process, the controller and the webhook, each a child process that is stopped when
//! dropped. Shared by `cargo xtask demo` and `cargo xtask bench`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A free TCP port on 127.0.0.1, never the same one twice in this process.
pub(crate) use certwright_simulators::tls::unused_local_port as free_port;

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
pub(crate) struct Process {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Process {
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Process> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Process { name, child, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, from /proc, in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Sends SIGTERM and waits up to `limit` for a clean exit.
    pub(crate) fn terminate(&mut self, limit: Duration) -> Result<bool> {
        if self.child.try_wait()?.is_some() {
            return Ok(true);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(false)
    }

    /// Fails with the end of its log when the process has exited.
    pub(crate) fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.terminate(Duration::from_secs(5));
    }
}

/// The testkit API server as a process, with the CRDs installed.
pub(crate) struct ApiServerProcess {
    pub(crate) process: Process,
    pub(crate) url: String,
    pub(crate) kubeconfig: PathBuf,
}

pub(crate) fn start_apiserver(bin: &Path, root: &Path, dir: &Path) -> Result<ApiServerProcess> {
    start_apiserver_with(bin, root, dir, &[])
}

/// As [`start_apiserver`], with extra flags.
pub(crate) fn start_apiserver_with(
    bin: &Path,
    root: &Path,
    dir: &Path,
    extra: &[&str],
) -> Result<ApiServerProcess> {
    let kubeconfig = dir.join("kubeconfig");
    let mut args: Vec<String> = vec![
        "--port".into(),
        "0".into(),
        "--kubeconfig-out".into(),
        kubeconfig.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    for crd in [
        root.join("crates/certwright-testkit/fixtures/cert-manager-crds.yaml"),
        root.join("deploy/crds/internalissuers.pki.certwright.io.yaml"),
        root.join("deploy/crds/internalclusterissuers.pki.certwright.io.yaml"),
        root.join("deploy/crds/issuancepolicies.pki.certwright.io.yaml"),
    ] {
        args.push("--crd".into());
        args.push(crd.display().to_string());
    }
    // The URL is the first line of stdout: read it through a pipe.
    let log = dir.join("apiserver.log");
    let err = std::fs::File::create(&log)?;
    let mut child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("API server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the API server's URL")?;
    let url = line.trim().to_string();
    if url.is_empty() {
        bail!("the API server printed no URL; see {}", log.display());
    }
    Ok(ApiServerProcess {
        process: Process {
            name: "certwright-apiserver",
            child,
            log,
        },
        url,
        kubeconfig,
    })
}

/// A kube client for the API server at `url`.
pub(crate) fn client(url: &str) -> Result<kube::Client> {
    let config = kube::Config::new(url.parse().context("API server URL")?);
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Waits until something answers on 127.0.0.1:`port`.
pub(crate) fn wait_port(port: u16, process: &mut Process, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        process.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on port {port} within {limit:?}",
                process.name
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP GET on 127.0.0.1 (metrics and probes), returning the body.
pub(crate) fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    // The metrics server may answer chunked; strip chunk sizes if so.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        return Ok(out);
    }
    Ok(body.to_string())
}

/// Creates a `kubernetes.io/tls` Secret holding a CA's certificate and key: what the
/// `ca` backend reads.
pub(crate) async fn create_ca_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ca: &certwright_testkit::fixtures::TestCa,
) -> Result<()> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (
                    "tls.crt".to_string(),
                    ByteString(ca.cert_pem().as_bytes().to_vec()),
                ),
                (
                    "tls.key".to_string(),
                    ByteString(ca.key_pem().as_bytes().to_vec()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    kube::Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&kube::api::PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating the CA Secret {namespace}/{name}"))?;
    Ok(())
}
