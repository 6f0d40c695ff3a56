//! A real CA server for tests: CloudFlare's `cfssl serve` (Debian package
//! `golang-cfssl`), started on 127.0.0.1 over TLS with a generated CA, and stopped when
//! dropped. `cargo xtask test` installs cfssl when it is missing.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fixtures::{KeyKind, TestCa};

/// The profile `/sign` uses: no authentication, 48 hours.
pub const PROFILE: &str = "web-server";
/// The profile `/authsign` uses: HMAC-authenticated with [`CfsslServer::auth_key_hex`].
pub const AUTH_PROFILE: &str = "web-server-auth";
/// A profile whose name whitelist admits only `allowed.example.test`.
pub const RESTRICTED_PROFILE: &str = "restricted";
/// Lifetime of certificates from every profile.
pub const PROFILE_EXPIRY: Duration = Duration::from_secs(48 * 3600);

/// How many ports [`CfsslServer::start`] tries. The port is found free, released, and
/// only then bound by cfssl, so another process may take it in between.
const START_ATTEMPTS: usize = 5;

/// A running `cfssl serve`.
pub struct CfsslServer {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    signing_ca: TestCa,
    tls_ca: TestCa,
    auth_key_hex: String,
}

impl std::fmt::Debug for CfsslServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CfsslServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why cfssl could not be started.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn find_cfssl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("cfssl"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> Result<u16, StartError> {
    // Infallible here; `start_on` takes a fallible picker so tests can script ports.
    Ok(crate::tls::unused_local_port())
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, StartError> {
    let path = dir.join(name);
    std::fs::write(&path, contents)
        .map_err(|e| StartError(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}

fn random_hex_key() -> Result<String, StartError> {
    use ring::rand::SecureRandom as _;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| StartError("no randomness for the HMAC key".to_string()))?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why cfssl did not come to listen.
#[derive(Debug)]
enum NotListening {
    /// cfssl exited because its port was taken.
    AddressInUse,
    /// Any other failure.
    Failed(StartError),
}

/// Whether the server on `addr` is the one whose TLS certificate `tls_ca_pem` issued:
/// a completed TLS handshake for `localhost`, verified against that CA alone.
///
/// A bare TCP connect is not proof. The port was free a moment ago, so it may now belong
/// to another server (another test's cfssl, whose port `free_port` handed out twice),
/// and a connect to a port nothing listens on can even succeed by connecting the socket
/// to itself (TCP simultaneous open). Only this server holds a certificate from its CA.
fn is_our_server(addr: SocketAddr, tls_ca_pem: &str) -> Result<(), String> {
    use rustls::pki_types::ServerName;
    use std::io::Write as _;

    let config =
        crate::tls::client_config(tls_ca_pem.as_bytes()).map_err(|e| format!("TLS CA: {e}"))?;
    let mut tls = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::try_from("localhost").map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut tcp =
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    // Flushing an empty write drives the handshake to completion.
    stream.flush().map_err(|e| format!("TLS handshake: {e}"))?;
    if stream.conn.is_handshaking() {
        return Err("TLS handshake did not complete".to_string());
    }
    Ok(())
}

/// Waits until `child` serves TLS on `addr` with the certificate from `tls_ca_pem`.
fn wait_until_listening(
    child: &mut Child,
    addr: SocketAddr,
    tls_ca_pem: &str,
    log: &Path,
    limit: Duration,
) -> Result<(), NotListening> {
    let deadline = Instant::now() + limit;
    loop {
        // Exited first: whoever took the port may be listening on it.
        if let Ok(Some(status)) = child.try_wait() {
            let log = read_log(log);
            // Go's words for EADDRINUSE: "listen tcp 127.0.0.1:N: bind: address already
            // in use".
            if log.contains("address already in use") {
                return Err(NotListening::AddressInUse);
            }
            return Err(NotListening::Failed(StartError(format!(
                "cfssl exited ({status}) before listening: {log}"
            ))));
        }
        let last = match is_our_server(addr, tls_ca_pem) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(NotListening::Failed(StartError(format!(
                "cfssl did not serve TLS on {addr} within {limit:?} ({last}): {}",
                read_log(log)
            ))));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl CfsslServer {
    /// Starts `cfssl serve` with a fresh ECDSA P-256 signing CA (a root), TLS from a
    /// separate test CA, and the profiles [`PROFILE`], [`AUTH_PROFILE`] and
    /// [`RESTRICTED_PROFILE`]. Waits until it accepts connections. When cfssl cannot bind
    /// its port because something took it meanwhile, starts again on another one.
    pub fn start() -> Result<CfsslServer, StartError> {
        Self::start_on(free_port)
    }

    /// [`start`](Self::start), on the ports `next_port` picks.
    fn start_on(
        mut next_port: impl FnMut() -> Result<u16, StartError>,
    ) -> Result<CfsslServer, StartError> {
        let cfssl = find_cfssl().ok_or_else(|| {
            StartError(
                "cfssl is not installed: install the Debian package golang-cfssl \
                 (`cargo xtask test` does this)"
                    .to_string(),
            )
        })?;
        let dir = tempfile::tempdir().map_err(|e| StartError(format!("temp dir: {e}")))?;
        let signing_ca = TestCa::root(KeyKind::EcdsaP256, "certwright cfssl test CA");
        let tls_ca = TestCa::root(KeyKind::EcdsaP256, "certwright cfssl TLS CA");
        let tls = tls_ca.issue_leaf(KeyKind::EcdsaP256, "localhost");
        let auth_key_hex = random_hex_key()?;
        let hours = PROFILE_EXPIRY.as_secs() / 3600;
        let usages = r#"["digital signature", "key encipherment", "server auth", "client auth"]"#;
        let config = format!(
            r#"{{
  "signing": {{
    "default": {{ "expiry": "{hours}h", "usages": {usages} }},
    "profiles": {{
      "{PROFILE}": {{ "expiry": "{hours}h", "usages": {usages} }},
      "{AUTH_PROFILE}": {{ "expiry": "{hours}h", "usages": {usages}, "auth_key": "primary" }},
      "{RESTRICTED_PROFILE}": {{ "expiry": "{hours}h", "usages": {usages},
                                 "name_whitelist": "^allowed\\.example\\.test$" }}
    }}
  }},
  "auth_keys": {{ "primary": {{ "type": "standard", "key": "{auth_key_hex}" }} }}
}}"#
        );
        let d = dir.path();
        let ca = write(d, "ca.pem", signing_ca.cert_pem())?;
        let ca_key = write(d, "ca-key.pem", signing_ca.key_pem())?;
        let tls_cert = write(d, "tls.pem", &tls.cert_pem)?;
        let tls_key = write(d, "tls-key.pem", &tls.key_pem)?;
        let config = write(d, "config.json", &config)?;
        let log_path = d.join("cfssl.log");
        let mut taken = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = next_port()?;
            let log = std::fs::File::create(&log_path)
                .map_err(|e| StartError(format!("log file: {e}")))?;
            let log_err = log.try_clone().map_err(|e| StartError(e.to_string()))?;
            let mut child = Command::new(&cfssl)
                .arg("serve")
                .args(["-address", "127.0.0.1", "-port", &port.to_string()])
                .arg("-ca")
                .arg(&ca)
                .arg("-ca-key")
                .arg(&ca_key)
                .arg("-config")
                .arg(&config)
                .arg("-tls-cert")
                .arg(&tls_cert)
                .arg("-tls-key")
                .arg(&tls_key)
                .args(["-loglevel", "2"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|e| StartError(format!("starting cfssl: {e}")))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_until_listening(
                &mut child,
                addr,
                tls_ca.cert_pem(),
                &log_path,
                Duration::from_secs(20),
            ) {
                Ok(()) => {
                    return Ok(CfsslServer {
                        child,
                        addr,
                        dir,
                        signing_ca,
                        tls_ca,
                        auth_key_hex,
                    });
                }
                // cfssl has exited: try another port.
                Err(NotListening::AddressInUse) => taken.push(port),
                Err(NotListening::Failed(e)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
        Err(StartError(format!(
            "cfssl found its port taken {START_ATTEMPTS} times (ports {taken:?}): {}",
            read_log(&log_path)
        )))
    }

    /// What cfssl has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("cfssl.log"))
    }

    /// The server's base URL, e.g. `https://localhost:41234`.
    pub fn url(&self) -> String {
        // The TLS certificate names localhost, as a real server names its host.
        format!("https://localhost:{}", self.addr.port())
    }

    /// The PEM CA certificate that signs the server's TLS certificate: the `caBundle`.
    pub fn tls_ca_pem(&self) -> &str {
        self.tls_ca.cert_pem()
    }

    /// The PEM certificate of the CA that signs issued certificates.
    pub fn signing_ca_pem(&self) -> &str {
        self.signing_ca.cert_pem()
    }

    /// The hex HMAC key of [`AUTH_PROFILE`]: the Secret's `key`.
    pub fn auth_key_hex(&self) -> &str {
        &self.auth_key_hex
    }

    /// Stops the server; later connections are refused.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CfsslServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_port_taken_before_cfssl_binds_it_is_traded_for_another() {
        // A connected socket holds its local port without listening on it: cfssl cannot
        // bind there and connections are refused, as when another process took the port
        // between `free_port` and cfssl's bind.
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let holder = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let taken = holder.local_addr().expect("local addr").port();

        let mut offered = Vec::new();
        let server = CfsslServer::start_on(|| {
            let port = if offered.is_empty() {
                taken
            } else {
                free_port()?
            };
            offered.push(port);
            Ok(port)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(offered.len(), 2, "{offered:?}");
        assert_ne!(server.addr.port(), taken);
        assert!(TcpStream::connect(server.addr).is_ok());

        // A port that stays taken is given up on after a few tries.
        let err = CfsslServer::start_on(|| Ok(taken))
            .map(|_| ())
            .expect_err("no free port");
        assert!(err.0.contains("taken 5 times"), "{err}");
    }

    #[test]
    fn another_server_on_the_port_is_not_mistaken_for_ours() {
        // Two starts handed the same free port: the other cfssl binds it first, ours
        // exits with "address already in use", and connections to the port succeed all
        // the while. Ours must still be found on a port of its own.
        let other = CfsslServer::start().unwrap_or_else(|e| panic!("{e}"));
        let mut offered = Vec::new();
        let server = CfsslServer::start_on(|| {
            let port = if offered.is_empty() {
                other.addr.port()
            } else {
                free_port()?
            };
            offered.push(port);
            Ok(port)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(offered.len(), 2, "{offered:?}");
        assert_ne!(server.addr, other.addr);
        is_our_server(server.addr, server.tls_ca_pem()).expect("our cfssl answers");
        let err = is_our_server(other.addr, server.tls_ca_pem()).expect_err("not ours");
        assert!(err.contains("TLS handshake"), "{err}");
    }
}
