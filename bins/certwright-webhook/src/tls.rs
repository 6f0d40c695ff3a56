//! The serving certificate, reloaded from disk when its files change: cert-manager (or
//! the kubelet updating a mounted Secret) rotates it under a running webhook. A
//! [`ReloadingCert`] holds the current certificate behind a lock and answers every
//! handshake with it; [`ReloadingCert::watch`] reads the files every few seconds and
//! swaps in a new certificate when their contents changed and load. A bad new file keeps
//! the old certificate and logs a warning.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate files are checked for changes.
pub(crate) const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The most either file may hold: a certificate chain or key is a few KiB.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One version of the certificate and key files, read together.
struct Files {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl Files {
    fn read(cert_file: &Path, key_file: &Path) -> anyhow::Result<Files> {
        Ok(Files {
            cert_pem: read_bounded(cert_file)?,
            key_pem: read_bounded(key_file)?,
        })
    }

    /// What identifies this version: a digest of both contents. Metadata is not enough:
    /// a file rewritten in place within one tick of a coarse file-system clock keeps its
    /// modification time, and a new key of the same type has the same length.
    fn version(&self) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [&self.cert_pem, &self.key_pem] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let mut version = [0u8; 32];
        version.copy_from_slice(context.finish().as_ref());
        version
    }
}

fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    // `open` follows symlinks, so a swapped `..data` link is read through.
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        anyhow::bail!("{} is larger than {MAX_FILE_BYTES} bytes", path.display());
    }
    Ok(bytes)
}

/// A server certificate resolver whose certificate is replaced when its files change.
#[derive(Debug)]
pub(crate) struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the checks have seen, so that each bad version or read failure is reported
    /// once rather than every few seconds.
    seen: RwLock<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The file contents last tried, loaded or not.
    version: Option<[u8; 32]>,
    /// The read failure last reported, until the files read again.
    failure: Option<String>,
}

/// What one check of the files found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reload {
    /// The same contents as last time (or briefly missing, mid-rotation).
    Unchanged,
    /// New contents that loaded: served from now on.
    Reloaded,
    /// New contents, or files that cannot be read, that leave the current certificate
    /// in place. `reported` is whether this check logged the warning (the first time).
    Kept {
        /// Whether this check logged the warning.
        reported: bool,
    },
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
        let files = Files::read(&cert_file, &key_file)?;
        let seen = Seen {
            version: Some(files.version()),
            failure: None,
        };
        let key = load_certified_key(&files, &cert_file, &key_file, &provider)?;
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

    /// Reloads when either file changed since the last attempt.
    pub(crate) fn reload_if_changed(&self) -> Reload {
        let files = match Files::read(&self.cert_file, &self.key_file) {
            Ok(files) => files,
            Err(e) => return self.cannot_read(&e),
        };
        {
            let now = files.version();
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            seen.failure = None;
            if seen.version == Some(now) {
                return Reload::Unchanged;
            }
            seen.version = Some(now);
        }
        match load_certified_key(&files, &self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    "reloaded the serving certificate"
                );
                Reload::Reloaded
            }
            Err(e) => {
                tracing::warn!(
                    cert_file = %self.cert_file.display(),
                    key_file = %self.key_file.display(),
                    error = format!("{e:#}"),
                    "the serving certificate files changed but do not load; \
                     still serving the previous certificate"
                );
                Reload::Kept { reported: true }
            }
        }
    }

    /// A failed read: briefly missing files are a rotation in progress; anything else
    /// (a permission, a file over the size bound) is warned about once per distinct cause.
    fn cannot_read(&self, e: &anyhow::Error) -> Reload {
        let message = format!("{e:#}");
        let missing = e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        });
        if missing {
            tracing::debug!(error = message, "the serving certificate files are missing");
            return Reload::Unchanged;
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if seen.failure.as_deref() == Some(message.as_str()) {
            return Reload::Kept { reported: false };
        }
        tracing::warn!(
            error = message,
            "cannot read the serving certificate files; still serving the previous certificate"
        );
        seen.failure = Some(message);
        Reload::Kept { reported: true }
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

/// Parses `files` (read from `cert_file` and `key_file`, named in errors).
fn load_certified_key(
    files: &Files,
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", cert_file.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem)
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
        assert_eq!(
            cert.reload_if_changed(),
            Reload::Unchanged,
            "nothing changed yet"
        );

        // A new certificate and key: served from the next check on.
        write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "Second CA"));
        assert_eq!(cert.reload_if_changed(), Reload::Reloaded);
        let second = leaf_der(&cert);
        assert_ne!(first, second);

        // A certificate whose key does not match, then garbage: the old one stays, and
        // each bad version is reported once.
        let other =
            TestCa::root(KeyKind::EcdsaP256, "Third CA").issue_leaf(KeyKind::EcdsaP256, "x");
        std::fs::write(&cert_file, &other.cert_pem).unwrap();
        assert_eq!(cert.reload_if_changed(), Reload::Kept { reported: true });
        assert_eq!(cert.reload_if_changed(), Reload::Unchanged);
        assert_eq!(leaf_der(&cert), second);
        std::fs::write(&cert_file, "not a certificate").unwrap();
        assert_eq!(cert.reload_if_changed(), Reload::Kept { reported: true });
        assert_eq!(leaf_der(&cert), second);

        // Once the files are whole again, they load.
        write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "Fourth CA"));
        assert_eq!(cert.reload_if_changed(), Reload::Reloaded);
        assert_ne!(leaf_der(&cert), second);
    }

    #[test]
    fn a_rewrite_that_keeps_length_and_modification_time_is_still_seen() {
        // A coarse file-system clock gives two writes in one tick the same mtime, and a
        // new certificate and key of the same types often have the same lengths: only
        // the contents differ.
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) =
            write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "First CA"));
        let cert = ReloadingCert::load(cert_file.clone(), key_file.clone(), provider()).unwrap();
        let first = leaf_der(&cert);
        let stamp = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
        let len = |path: &Path| std::fs::metadata(path).unwrap().len();
        let (cert_time, key_time) = (stamp(&cert_file), stamp(&key_file));
        let (cert_len, key_len) = (len(&cert_file), len(&key_file));

        // ECDSA signatures vary in length by a byte or two: draw until both files keep
        // their lengths.
        let mut draws = 0;
        loop {
            draws += 1;
            assert!(draws < 200, "no same-length certificate in {draws} draws");
            write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "First CB"));
            if len(&cert_file) == cert_len && len(&key_file) == key_len {
                break;
            }
        }
        for (path, time) in [(&cert_file, cert_time), (&key_file, key_time)] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(time)
                .unwrap();
        }
        assert_eq!((stamp(&cert_file), stamp(&key_file)), (cert_time, key_time));

        assert_eq!(cert.reload_if_changed(), Reload::Reloaded);
        assert_ne!(leaf_der(&cert), first);
        assert_eq!(
            cert.reload_if_changed(),
            Reload::Unchanged,
            "not reloaded again"
        );
    }

    #[test]
    fn unreadable_files_keep_the_certificate_and_are_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) =
            write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "First CA"));
        let cert = ReloadingCert::load(cert_file.clone(), key_file.clone(), provider()).unwrap();
        let first = leaf_der(&cert);

        // Over the size bound: warned about once, not at every check.
        let huge = vec![b'A'; usize::try_from(MAX_FILE_BYTES).unwrap() + 1];
        std::fs::write(&cert_file, &huge).unwrap();
        assert_eq!(cert.reload_if_changed(), Reload::Kept { reported: true });
        assert_eq!(cert.reload_if_changed(), Reload::Kept { reported: false });
        assert_eq!(
            leaf_der(&cert),
            first,
            "the old certificate is still served"
        );
        let err = ReloadingCert::load(cert_file.clone(), key_file.clone(), provider())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls.crt is larger than 1048576 bytes"),
            "{err}"
        );

        // Missing, as between the steps of a rotation: quietly unchanged.
        std::fs::remove_file(&cert_file).unwrap();
        assert_eq!(cert.reload_if_changed(), Reload::Unchanged);

        // Whole again: loaded; a later failure of the same kind is reported afresh.
        write_leaf(dir.path(), &TestCa::root(KeyKind::EcdsaP256, "Second CA"));
        assert_eq!(cert.reload_if_changed(), Reload::Reloaded);
        std::fs::write(&cert_file, &huge).unwrap();
        assert_eq!(cert.reload_if_changed(), Reload::Kept { reported: true });
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
