//! Whether a local CA's own certificate was revoked by its parent, by the CRL the
//! certificate names (RFC 5280 section 4.2.1.13), checked on the health-check interval.
//!
//! Bounded, because a tenant's CA chooses the URL and the CRL:
//! - the CRL is fetched within 10 seconds for all its URLs together and 1 MiB, under
//!   the issuer's egress policy, without redirects; plain `http://` is allowed, as CRLs
//!   are served;
//! - at most two CRLs are fetched and parsed at once in the whole process;
//! - a fetch runs as a task of its own: a health check waits for it at most
//!   [`CHECK_WAIT`], and otherwise takes its verdict at a later check;
//! - a CRL is used only when its signature verifies with the parent's key (the
//!   certificate of `tls.crt` that issued the CA), the parent may sign CRLs, it names the
//!   parent as issuer, it is current (not past its `nextUpdate`, not from the future,
//!   not older than one already read), and it carries no critical extension certwright
//!   does not apply (a delta CRL, an indirect CRL, one limited to some reasons or to
//!   end-entity certificates): otherwise revocation is "not checked", which never stops
//!   a CA nobody revoked.
//!
//! A revocation is final for as long as the controller runs, for every build of every
//! issuer with that CA certificate: a later fetch that fails, or a CRL that no longer
//! lists it, does not make it sign again.

use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use certwright_x509::{Certificate, Crl};

use super::{CaFault, describe, fault, lock};
use certwright_pki::Error;

/// How long a CRL download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a health check waits for a fetch it started before it answers.
pub(crate) const CHECK_WAIT: Duration = Duration::from_secs(3);
/// The largest CRL fetched, in bytes.
pub const MAX_CRL_BYTES: usize = 1024 * 1024;
/// Most CRL URLs of one certificate tried.
const MAX_URLS: usize = 4;

/// CRLs fetched and parsed at once, in the whole process.
static FETCHES: LazyLock<Arc<tokio::sync::Semaphore>> =
    LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(2)));

/// The CA certificates (SHA-256 fingerprints) found revoked in this process, with the
/// refusal's message: a rebuilt issuer does not start from "unknown".
static REVOKED: LazyLock<Mutex<std::collections::HashMap<String, String>>> =
    LazyLock::new(Default::default);

/// How far a CRL's times may be off this host's clock.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What is known of the CA's revocation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Not checked yet, or not checkable now: why.
    Unknown(String),
    /// The CRL does not list the CA.
    Good { crl_issued: String },
    /// The CRL lists the CA: the refusal's message.
    Revoked(String),
}

/// The CRL check of one CA certificate.
pub(crate) struct Revocation {
    urls: Vec<String>,
    ca: Certificate,
    parent: Certificate,
    /// The client, or why none could be built.
    http: Result<certwright_backend_http::HttpClient, String>,
    state: Mutex<State>,
    /// Told each time a fetch ends.
    done: tokio::sync::watch::Sender<u64>,
}

struct State {
    verdict: Verdict,
    fetching: bool,
    fetched_at: Option<Instant>,
    /// The `thisUpdate` (Unix seconds) of the newest CRL read: an older one is not taken.
    newest: Option<i64>,
}

impl Revocation {
    /// The check of `ca`, whose parent (the CRL's signer) is `parent`, when `ca` names
    /// an `http`/`https` CRL distribution point.
    pub(crate) fn new(
        ca: &Certificate,
        parent: &Certificate,
        egress: Option<Arc<certwright_pki::egress::EgressPolicy>>,
    ) -> Option<Arc<Revocation>> {
        let mut urls = ca.crl_urls();
        if urls.is_empty() {
            return None;
        }
        urls.truncate(MAX_URLS);
        let http = certwright_backend_http::HttpClient::new(certwright_backend_http::HttpConfig {
            timeout: FETCH_TIMEOUT,
            connect_timeout: FETCH_TIMEOUT.min(certwright_backend_http::DEFAULT_CONNECT_TIMEOUT),
            max_response_bytes: MAX_CRL_BYTES,
            egress,
            allow_http: true,
            ..certwright_backend_http::HttpConfig::default()
        })
        .map_err(|e| e.to_string());
        let verdict = match lock(&REVOKED).get(&ca.fingerprint_hex()) {
            Some(message) => Verdict::Revoked(message.clone()),
            None => Verdict::Unknown("the CRL has not been fetched yet".to_string()),
        };
        Some(Arc::new(Revocation {
            urls,
            ca: ca.clone(),
            parent: parent.clone(),
            http,
            state: Mutex::new(State {
                verdict,
                fetching: false,
                fetched_at: None,
                newest: None,
            }),
            done: tokio::sync::watch::channel(0).0,
        }))
    }

    /// The refusal of a revoked CA, for `sign`.
    pub(crate) fn refusal(&self) -> Option<Error> {
        match &lock(&self.state).verdict {
            Verdict::Revoked(message) => Some(fault(CaFault::Revoked, message.clone())),
            _ => None,
        }
    }

    /// The health check's part: starts a fetch unless one is under way or one ended
    /// within `every`, waits for it at most [`CHECK_WAIT`], and answers with the
    /// verdict: `Err` when revoked, else a sentence for the health message.
    pub(crate) async fn check(self: &Arc<Self>, every: Duration) -> Result<String, Error> {
        let mut done = self.done.subscribe();
        let started = {
            let mut state = lock(&self.state);
            let due = state.fetched_at.is_none_or(|at| at.elapsed() >= every);
            let start = due && !state.fetching && !matches!(state.verdict, Verdict::Revoked(_));
            if start {
                state.fetching = true;
            }
            start
        };
        if started {
            let this = Arc::downgrade(self);
            tokio::spawn(fetch(this));
        }
        if lock(&self.state).fetching {
            let _ = tokio::time::timeout(CHECK_WAIT, done.changed()).await;
        }
        match lock(&self.state).verdict.clone() {
            Verdict::Revoked(message) => Err(fault(CaFault::Revoked, message)),
            Verdict::Good { crl_issued } => Ok(format!(
                "not revoked by the CRL of {} issued at {crl_issued}",
                describe(&self.parent)
            )),
            Verdict::Unknown(why) => Ok(format!("revocation not checked: {why}")),
        }
    }

    /// Fetches each URL until one gives a usable CRL, within [`FETCH_TIMEOUT`] for all,
    /// and says what it says of the CA.
    async fn verdict(&self) -> Verdict {
        tokio::time::timeout(FETCH_TIMEOUT, self.verdict_unbounded())
            .await
            .unwrap_or_else(|_| {
                Verdict::Unknown(format!(
                    "the CRL was not read within {}s",
                    FETCH_TIMEOUT.as_secs()
                ))
            })
    }

    async fn verdict_unbounded(&self) -> Verdict {
        if self
            .parent
            .key_usage()
            .is_some_and(|usages| !usages.contains(certwright_x509::KeyUsage::CrlSign))
        {
            return Verdict::Unknown(format!(
                "the parent {} may not sign CRLs (no cRLSign in its key usage)",
                describe(&self.parent)
            ));
        }
        let http = match &self.http {
            Ok(http) => http,
            Err(why) => return Verdict::Unknown(why.clone()),
        };
        let mut problems = Vec::new();
        for url in &self.urls {
            let parsed = match certwright_backend_http::Url::parse(url) {
                Ok(u) => u,
                Err(e) => {
                    problems.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let answer = match http
                .send(http.request(certwright_backend_http::Method::GET, parsed))
                .await
            {
                Ok(a) if a.is_success() => a,
                Ok(a) => {
                    problems.push(format!("{url} answered HTTP {}", a.status.as_u16()));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let crl = match Crl::parse(&answer.body)
                .and_then(|crl| crl.verify_signed_by(&self.parent).map(|()| crl))
                .and_then(|crl| crl.check_applies_to_ca_certificates().map(|()| crl))
            {
                Ok(crl) => crl,
                Err(e) => {
                    problems.push(format!("{url}: {e}"));
                    continue;
                }
            };
            if let Some(stale) = self.stale(&crl) {
                problems.push(format!("{url}: {stale}"));
                continue;
            }
            return match crl.revocation_of(&self.ca) {
                Some(at) => Verdict::Revoked(format!(
                    "the CA certificate {} was revoked at {at} by {}, as the CRL at {url} says",
                    describe(&self.ca),
                    describe(&self.parent)
                )),
                None => Verdict::Good {
                    crl_issued: crl.this_update().to_string(),
                },
            };
        }
        Verdict::Unknown(problems.join("; "))
    }

    /// Why `crl` is not current: past its `nextUpdate`, issued in the future, or older
    /// than one already read (an old copy served by a cache, or by someone on the path
    /// of a plain-HTTP fetch).
    fn stale(&self, crl: &Crl) -> Option<String> {
        let now = super::unix_now().unwrap_or(0);
        let skew = i64::try_from(CLOCK_SKEW.as_secs()).unwrap_or(300);
        if crl.this_update().as_second() > now + skew {
            return Some(format!(
                "the CRL was issued in the future ({})",
                crl.this_update()
            ));
        }
        if let Some(next) = crl.next_update()
            && next.as_second() + skew < now
        {
            return Some(format!(
                "the CRL is out of date (its next update was due {next})"
            ));
        }
        let issued = crl.this_update().as_second();
        let mut state = lock(&self.state);
        if state.newest.is_some_and(|newest| newest > issued) {
            return Some(format!(
                "the CRL (issued {}) is older than one already read",
                crl.this_update()
            ));
        }
        state.newest = Some(issued);
        None
    }
}

/// One fetch, as a task of its own that does not keep the check alive.
async fn fetch(check: Weak<Revocation>) {
    // However the task ends (done, dropped, panicked), the check may start another.
    struct Ending(Weak<Revocation>);
    impl Drop for Ending {
        fn drop(&mut self) {
            if let Some(check) = self.0.upgrade() {
                {
                    let mut state = lock(&check.state);
                    state.fetching = false;
                    state.fetched_at = Some(Instant::now());
                }
                check.done.send_modify(|n| *n += 1);
            }
        }
    }
    let _ending = Ending(check.clone());
    let Ok(_permit) = FETCHES.clone().acquire_owned().await else {
        return;
    };
    let Some(check) = check.upgrade() else {
        return;
    };
    let verdict = check.verdict().await;
    let mut state = lock(&check.state);
    // Final once revoked, for every build of an issuer with this CA.
    if let Verdict::Revoked(message) = &verdict {
        lock(&REVOKED).insert(check.ca.fingerprint_hex(), message.clone());
    }
    if !matches!(state.verdict, Verdict::Revoked(_)) {
        state.verdict = verdict;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Mutex as StdMutex;

    use certwright_simulators::crl_server::serve;
    use certwright_simulators::fixtures::{KeyKind, TestCa};

    use super::*;

    fn cert(pem: &str) -> Certificate {
        certwright_x509::parse_pem_bundle(pem.as_bytes())
            .unwrap()
            .remove(0)
    }

    #[tokio::test]
    async fn a_revocation_is_final_and_an_unusable_crl_says_nothing() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let served = Arc::new(StdMutex::new(b"not a CRL".to_vec()));
        let url = serve(served.clone()).await;
        let issuing = root.intermediate_with_crl(KeyKind::EcdsaP256, "Issuing", &url);
        let check =
            Revocation::new(&cert(issuing.cert_pem()), &cert(root.cert_pem()), None).unwrap();

        // Garbage, then an out-of-date CRL, then a CRL for end entities only: not
        // checked, not refused.
        let said = check.check(Duration::ZERO).await.unwrap();
        assert!(said.starts_with("revocation not checked"), "{said}");
        *served.lock().unwrap() = root.crl_out_of_date(&[&issuing.cert().serial_hex]);
        let said = check.check(Duration::ZERO).await.unwrap();
        assert!(said.contains("out of date"), "{said}");
        *served.lock().unwrap() = root.crl_for_end_entities(&[&issuing.cert().serial_hex]);
        let said = check.check(Duration::ZERO).await.unwrap();
        assert!(said.contains("leaves CA certificates out"), "{said}");
        assert!(check.refusal().is_none());

        // Listed: refused, by the check and for signing.
        *served.lock().unwrap() = root.crl(&[&issuing.cert().serial_hex]);
        let e = check.check(Duration::ZERO).await.unwrap_err();
        assert_eq!(CaFault::of(&e), Some(CaFault::Revoked), "{e}");
        assert!(check.refusal().is_some());
        // A later CRL that no longer lists it, or none, changes nothing.
        *served.lock().unwrap() = root.crl(&[]);
        assert!(check.check(Duration::ZERO).await.is_err());
        *served.lock().unwrap() = Vec::new();
        assert!(check.check(Duration::ZERO).await.is_err());
    }

    #[tokio::test]
    async fn a_crl_over_the_cap_is_not_read() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let served = Arc::new(StdMutex::new(vec![0x30; MAX_CRL_BYTES + 1]));
        let url = serve(served).await;
        let issuing = root.intermediate_with_crl(KeyKind::EcdsaP256, "Issuing", &url);
        let check =
            Revocation::new(&cert(issuing.cert_pem()), &cert(root.cert_pem()), None).unwrap();
        let said = check.check(Duration::ZERO).await.unwrap();
        assert!(said.starts_with("revocation not checked"), "{said}");
    }

    #[test]
    fn a_ca_that_names_no_crl_is_not_checked() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let issuing = root.intermediate(KeyKind::EcdsaP256, "Issuing");
        assert!(Revocation::new(&cert(issuing.cert_pem()), &cert(root.cert_pem()), None).is_none());
    }
}
