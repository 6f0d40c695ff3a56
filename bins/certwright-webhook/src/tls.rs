//! The serving certificate, reloaded from disk when its files change: cert-manager (or
//! the kubelet updating a mounted Secret) rotates it under a running webhook. A
//! [`ReloadingCert`] holds the current certificate behind a lock and answers every
//! handshake with it; [`ReloadingCert::watch`] checks the files' metadata every few
//! seconds and swaps in a new certificate when it loads. A bad new file keeps the old
//! certificate and logs a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate files are checked for changes.
pub(crate) const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What identifies one version of a file, cheaply: a change of any of these means the
/// file was rewritten or replaced (the kubelet swaps a symlink).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl Fingerprint {
    fn of(path: &Path) -> std::io::Result<Fingerprint> {
        // `metadata` follows symlinks, so a swapped `..data` link shows as a change.
        let meta = std::fs::metadata(path)?;
        Ok(Fingerprint {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

/// A server certificate resolver whose certificate is replaced when its files change.
#[derive(Debug)]
pub(crate) struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file versions last tried, loaded or not, so that a bad file is reported once.
    seen: RwLock<Option<(Fingerprint, Fingerprint)>>,
}

impl ReloadingCert {
    /// Loads the certificate chain and key.
    ///
    /// # Errors
    /// When either file cannot be read or parsed, or the key does not match the
    /// certificate: there is nothing to serve with.
    pub(crate) fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<ReloadingCert> {
        let seen = fingerprints(&cert_file, &key_file).ok();
        let key = load_certified_key(&cert_file, &key_file, &provider)?;
        Ok(ReloadingCert {
            cert_file,
            key_file,
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: RwLock::new(seen),
        })
    }

    /// The certificate served now.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reloads when either file changed since the last attempt. Returns whether a new
    /// certificate is now served.
    pub(crate) fn reload_if_changed(&self) -> bool {
        let now = match fingerprints(&self.cert_file, &self.key_file) {
            Ok(now) => now,
            Err(e) => {
                // Mid-rotation, a file may be briefly absent: keep serving, retry later.
                tracing::debug!(error = %e, "cannot stat the serving certificate files");
                return false;
            }
        };
        {
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            if seen.as_ref() == Some(&now) {
                return false;
            }
            *seen = Some(now);
        }
        match load_certified_key(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    "reloaded the serving certificate"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    cert_file = %self.cert_file.display(),
                    key_file = %self.key_file.display(),
                    error = format!("{e:#}"),
                    "the serving certificate files changed but do not load; \
                     still serving the previous certificate"
                );
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_INTERVAL`], forever.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let this = self.clone();
            // File reads are blocking; keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn fingerprints(cert: &Path, key: &Path) -> std::io::Result<(Fingerprint, Fingerprint)> {
    Ok((Fingerprint::of(cert)?, Fingerprint::of(key)?))
}

fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let cert_pem =
        std::fs::read(cert_file).with_context(|| format!("cannot read {}", cert_file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", cert_file.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_file.display());
    }
    let key_pem =
        std::fs::read(key_file).with_context(|| format!("cannot read {}", key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} holds no PEM private key", key_file.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "{} and {} do not make a usable certificate and key",
            cert_file.display(),
            key_file.display()
        )
    })
}

/// A rustls server configuration (HTTP/2 and HTTP/1.1) answering with `cert`.
///
/// # Errors
/// When the provider supports no safe protocol version (never with ring).
pub(crate) fn server_config(
    cert: Arc<ReloadingCert>,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use certwright_testkit::fixtures::{KeyKind, TestCa};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn write_leaf(dir: &Path, ca: &TestCa) -> (PathBuf, PathBuf) {
        let leaf = ca.issue_leaf(KeyKind::EcdsaP256, "localhost");
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, format!("{}{}", leaf.cert_pem, ca.cert_pem())).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (cert, key)
    }

    fn leaf_der(cert: &ReloadingCert) -> Vec<u8> {
        cert.current().cert[0].as_ref().to_vec()
    }

    #[test]
    fn reloads_a_changed_certificate_and_keeps_the_old_one_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) =
            write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "First CA"));
        let cert = ReloadingCert::load(cert_file.clone(), key_file.clone(), provider()).unwrap();
        let first = leaf_der(&cert);
        assert_eq!(cert.current().cert.len(), 2, "the chain is served whole");
        assert!(!cert.reload_if_changed(), "nothing changed yet");

        // A new certificate and key: served from the next check on.
        write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "Second CA"));
        assert!(cert.reload_if_changed());
        let second = leaf_der(&cert);
        assert_ne!(first, second);

        // A certificate whose key does not match, then garbage: the old one stays.
        let other =
            TestCa::root(KeyKind::EcdsaP256, "Third CA").issue_leaf(KeyKind::EcdsaP256, "x");
        std::fs::write(&cert_file, &other.cert_pem).unwrap();
        assert!(!cert.reload_if_changed());
        assert_eq!(leaf_der(&cert), second);
        std::fs::write(&cert_file, "not a certificate").unwrap();
        assert!(!cert.reload_if_changed());
        assert_eq!(leaf_der(&cert), second);

        // Once the files are whole again, they load.
        write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "Fourth CA"));
        assert!(cert.reload_if_changed());
        assert_ne!(leaf_der(&cert), second);
    }

    #[test]
    fn a_bad_initial_certificate_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir.path().join("tls.crt");
        let key_file = dir.path().join("tls.key");
        std::fs::write(&cert_file, "").unwrap();
        std::fs::write(&key_file, "").unwrap();
        let err = ReloadingCert::load(cert_file, key_file, provider()).unwrap_err();
        assert!(
            format!("{err:#}").contains("holds no certificate"),
            "{err:#}"
        );
        let missing = ReloadingCert::load(
            dir.path().join("nope.crt"),
            dir.path().join("nope.key"),
            provider(),
        )
        .unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read"),
            "{missing:#}"
        );
    }
}
