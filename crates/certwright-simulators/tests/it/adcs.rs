//! What is particular to AD CS, against the certsrv simulator over real TLS: approval by
//! a CA manager, NTLM on one connection, Extended Protection, credentials, templates,
//! HRESULTs, Basic and client certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_adcs::{AdcsAuth, AdcsBackend, AdcsConfig};
use certwright_backend_http::ClientIdentity;
use certwright_pki::{Backend, Error, Outcome, SignRequest};
use certwright_simulators::adcs_sim::{
    AdcsSimulator, Behaviour, DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_TEMPLATE, DEFAULT_USER,
    SimAuth, SimOptions,
};
use certwright_simulators::fixtures::{CsrBuilder, KeyKind, TestCa};
use certwright_x509::Csr;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn ntlm(password: &str) -> AdcsAuth {
    AdcsAuth::Ntlm {
        username: DEFAULT_USER.into(),
        password: password.into(),
        domain: Some(DEFAULT_DOMAIN.into()),
    }
}

fn backend_at(url: String, ca_pem: &str, auth: AdcsAuth) -> AdcsBackend {
    let mut config = AdcsConfig::new(url, DEFAULT_TEMPLATE, auth);
    config.ca_bundle_pem = Some(ca_pem.as_bytes().to_vec());
    config.timeout = Duration::from_secs(5);
    AdcsBackend::new(config).expect("valid configuration")
}

fn backend(sim: &AdcsSimulator, auth: AdcsAuth) -> AdcsBackend {
    backend_at(sim.url(), sim.tls_ca_pem(), auth)
}

fn request() -> SignRequest {
    let generated = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("web.apps.example.test")
        .dns("web.apps.example.test")
        .build();
    SignRequest::new(Csr::parse(generated.csr_pem.as_bytes()).unwrap(), "uid-1")
}

async fn pending_id(backend: &AdcsBackend, request: &SignRequest) -> String {
    match backend.sign(request).await.expect("accepted") {
        Outcome::Pending(p) => p.id,
        other => panic!("expected Pending, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_then_approved_is_fetched_without_resubmitting() {
    let sim = AdcsSimulator::start().await.unwrap();
    sim.set_behaviour(Behaviour::Pending);
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    let request = request();
    let id = pending_id(&backend, &request).await;
    assert_eq!(sim.waiting_ids(), std::slice::from_ref(&id));
    for _ in 0..2 {
        match backend.poll(&id, &request).await.unwrap() {
            Outcome::Pending(p) => {
                assert_eq!(p.id, id);
                assert_eq!(p.retry_after, Duration::from_secs(300));
            }
            other => panic!("expected Pending, got {other:?}"),
        }
    }
    assert!(sim.approve(&id));
    let bundle = match backend.poll(&id, &request).await.unwrap() {
        Outcome::Issued(bundle) => bundle,
        other => panic!("expected Issued, got {other:?}"),
    };
    assert_eq!(bundle.chain.len(), 2, "leaf then the issuing CA");
    assert_eq!(bundle.chain[1].subject().to_string(), "CN=CORP-ISSUING-CA");
    assert_eq!(bundle.ca_pem(), sim.root_pem());
    assert_eq!(sim.submissions(), 1, "polling never resubmits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_then_denied_is_rejected_with_the_managers_words() {
    let sim = AdcsSimulator::start().await.unwrap();
    sim.set_behaviour(Behaviour::Pending);
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    let request = request();
    let id = pending_id(&backend, &request).await;
    assert!(sim.deny(&id, "no owner on record for web.apps"));
    match backend.poll(&id, &request).await {
        Err(Error::Rejected { reason }) => {
            assert!(
                reason.contains("no owner on record for web.apps"),
                "{reason}"
            );
            assert!(reason.contains("Denied by"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(sim.submissions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntlm_authenticates_one_connection_for_the_whole_exchange() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    // Submit, fetch the certificate, read certcarc.asp, fetch the chain: four requests.
    match backend.sign(&request()).await.unwrap() {
        Outcome::Issued(bundle) => assert_eq!(bundle.chain.len(), 2),
        other => panic!("expected Issued, got {other:?}"),
    }
    assert_eq!(sim.connections(), 1);
    assert_eq!(sim.ntlm_handshakes(), 1);
    assert!(sim.last_user_agent().unwrap().contains("Mozilla"));
    // The next call opens a new connection, which needs a new handshake; the chain is
    // cached.
    backend.sign(&request()).await.unwrap();
    assert_eq!(sim.connections(), 2);
    assert_eq!(sim.ntlm_handshakes(), 2);
    assert_eq!(sim.submissions(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_unauthorized_as_iis_answers() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm("Wr0ng-Horse!"));
    match backend.sign(&request()).await {
        Err(e @ Error::Unauthorized { .. }) => {
            let text = e.to_string();
            assert!(text.contains("CORP\\svc-certwright"), "{text}");
            assert!(!text.contains("Wr0ng-Horse!"), "{text}");
            assert!(e.is_issuer_fault());
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(sim.auth_failures(), ["ntlm: wrong password"]);
    assert_eq!(sim.submissions(), 0);
    let err = backend.check().await.expect_err("unauthorized");
    assert_eq!(err.metric_label(), "unauthorized", "{err}");
}

/// A TLS-terminating relay in front of certsrv: the client's TLS connection ends here,
/// with another certificate, so its channel binding cannot be certsrv's.
async fn relay(sim: &AdcsSimulator) -> (String, String, tokio::task::JoinHandle<()>) {
    let relay_ca = TestCa::root(KeyKind::EcdsaP256, "relay CA");
    let cert = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("localhost")
        .ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        .build();
    let cert_pem = relay_ca.sign_csr(&cert.csr_pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(sim.tls_ca_pem().as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream: std::net::SocketAddr = sim
        .url()
        .trim_start_matches("https://")
        .trim_end_matches("/certsrv")
        .parse()
        .unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let connector = connector.clone();
            tokio::spawn(async move {
                let Ok(mut down) = acceptor.accept(stream).await else {
                    return;
                };
                let tcp = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut up = connector.connect(name, tcp).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    (
        format!("https://127.0.0.1:{port}/certsrv"),
        relay_ca.cert_pem().to_string(),
        task,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protection_accepts_our_channel_binding_and_refuses_a_foreign_one() {
    let sim = AdcsSimulator::start().await.unwrap();
    // Direct: the binding is the simulator's certificate (hashed with SHA-384, as its
    // signature algorithm says), so Extended Protection lets it through.
    let direct = backend(&sim, ntlm(DEFAULT_PASSWORD));
    direct.check().await.expect("channel binding accepted");
    assert!(sim.auth_failures().is_empty());

    // Through a relay: the binding names the relay's certificate, and IIS says 401.
    let (url, relay_ca, task) = relay(&sim).await;
    let relayed = backend_at(url, &relay_ca, ntlm(DEFAULT_PASSWORD));
    match relayed.sign(&request()).await {
        Err(Error::Unauthorized { message }) => {
            assert!(message.contains("Extended Protection"), "{message}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(
        sim.auth_failures(),
        ["ntlm: Extended Protection: channel binding mismatch"]
    );
    assert_eq!(sim.submissions(), 0);

    // With Extended Protection off, the same relayed client gets through.
    sim.set_extended_protection(false);
    assert!(matches!(
        relayed.sign(&request()).await,
        Ok(Outcome::Issued(_))
    ));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_the_ca_does_not_offer_is_the_issuers_misconfiguration() {
    let sim = AdcsSimulator::start().await.unwrap();
    let mut config = AdcsConfig::new(sim.url(), "WebServr", ntlm(DEFAULT_PASSWORD));
    config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
    let backend = AdcsBackend::new(config).unwrap();
    match backend.sign(&request()).await {
        Err(e @ Error::Misconfigured { .. }) => {
            let text = e.to_string();
            assert!(text.contains("\"WebServr\""), "{text}");
            assert!(text.contains("templateName"), "{text}");
            assert!(text.contains("0x80094800"), "{text}");
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    // A per-request template (allowed by the issuer) replaces the issuer's.
    let mut request = request();
    request.template = Some("User".into());
    assert!(matches!(
        backend.sign(&request).await,
        Ok(Outcome::Issued(_))
    ));
    assert_eq!(sim.last_template().as_deref(), Some("User"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hresults_become_sentences() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    sim.set_behaviour(Behaviour::ErrorPage(
        0x8009_4004,
        "The requested property value is empty. (CERTSRV_E_PROPERTY_EMPTY)".into(),
    ));
    let err = backend.sign(&request()).await.expect_err("error page");
    assert_eq!(err.metric_label(), "misconfigured", "{err}");
    assert!(err.to_string().contains("Supply in the request"), "{err}");

    // An HRESULT the adapter does not know is final on submission: the CA may hold the
    // request, and retrying would submit it again.
    sim.set_behaviour(Behaviour::ErrorPage(0x8009_4011, "Something odd".into()));
    let err = backend.sign(&request()).await.expect_err("error page");
    assert_eq!(err.metric_label(), "rejected", "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("0x80094011"), "{err}");
    assert!(err.to_string().contains("Something odd"), "{err}");

    // The allow-list: the CA service is down, the request never reached it.
    for code in [0x8007_06BA, 0x8007_06BE, 0x8007_06D9, 0x8008_0005] {
        sim.set_behaviour(Behaviour::ErrorPage(
            code,
            "The RPC server is unavailable.".into(),
        ));
        let err = backend.sign(&request()).await.expect_err("error page");
        assert_eq!(err.metric_label(), "transient", "{code:#x}: {err}");
    }

    sim.set_behaviour(Behaviour::Deny("CN not allowed".into()));
    match backend.sign(&request()).await {
        Err(Error::Rejected { reason }) => assert!(reason.contains("CN not allowed"), "{reason}"),
        other => panic!("expected Rejected, got {other:?}"),
    }

    // A certificate answered in the submission itself.
    sim.set_behaviour(Behaviour::IssueInline);
    assert!(matches!(
        backend.sign(&request()).await,
        Ok(Outcome::Issued(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_loop_is_unauthorized_not_a_retry_storm() {
    let sim = AdcsSimulator::start().await.unwrap();
    sim.set_behaviour(Behaviour::Unauthorized401Loop);
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    let err = backend.sign(&request()).await.expect_err("401");
    assert_eq!(err.metric_label(), "unauthorized", "{err}");
    assert_eq!(sim.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_authentication() {
    let sim = AdcsSimulator::start_with(SimOptions {
        auth: SimAuth::Basic {
            username: "CORP\\svc-certwright".into(),
            password: "b4sic!".into(),
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let good = backend(
        &sim,
        AdcsAuth::Basic {
            username: "CORP\\svc-certwright".into(),
            password: "b4sic!".into(),
        },
    );
    assert!(matches!(
        good.sign(&request()).await,
        Ok(Outcome::Issued(_))
    ));
    let health = good.check().await.unwrap();
    assert_eq!(
        health.message,
        "AD CS answered; template WebServer; CA chain of 2"
    );
    let bad = backend(
        &sim,
        AdcsAuth::Basic {
            username: "CORP\\svc-certwright".into(),
            password: "nope".into(),
        },
    );
    let err = bad.sign(&request()).await.expect_err("401");
    assert_eq!(err.metric_label(), "unauthorized", "{err}");
    // An NTLM client facing Basic-only IIS is told what the server offers.
    let err = backend(&sim, ntlm(DEFAULT_PASSWORD))
        .sign(&request())
        .await
        .expect_err("no NTLM");
    assert_eq!(err.metric_label(), "misconfigured", "{err}");
    assert!(err.to_string().contains("Basic"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication() {
    let clients = TestCa::root(KeyKind::EcdsaP256, "CORP client CA");
    let sim = AdcsSimulator::start_with(SimOptions {
        auth: SimAuth::None,
        extended_protection: false,
        client_ca_pem: Some(clients.cert_pem().to_string()),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let leaf = clients.issue_leaf(KeyKind::EcdsaP256, "svc-certwright.corp.example");
    let good = backend(
        &sim,
        AdcsAuth::ClientCertificate(ClientIdentity {
            cert_pem: leaf.cert_pem.into_bytes(),
            key_pem: leaf.key_pem.into_bytes(),
        }),
    );
    assert!(matches!(
        good.sign(&request()).await,
        Ok(Outcome::Issued(_))
    ));
    let stranger = TestCa::root(KeyKind::EcdsaP256, "other CA")
        .issue_leaf(KeyKind::EcdsaP256, "someone.example");
    let bad = backend(
        &sim,
        AdcsAuth::ClientCertificate(ClientIdentity {
            cert_pem: stranger.cert_pem.into_bytes(),
            key_pem: stranger.key_pem.into_bytes(),
        }),
    );
    let err = bad.sign(&request()).await.expect_err("refused");
    assert_eq!(err.metric_label(), "unauthorized", "{err}");
    assert_eq!(sim.submissions(), 1);
}

/// Submissions certsrv answered for `backend`, after `sign`.
async fn submits_once(sim: &AdcsSimulator, backend: &AdcsBackend) -> Result<Outcome, Error> {
    let before = sim.submissions();
    let result = backend.sign(&request()).await;
    assert_eq!(sim.submissions(), before + 1, "{result:?}");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_chain_is_fetched_before_submitting() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    sim.set_behaviour(Behaviour::TruncatedChain);
    let err = backend.sign(&request()).await.expect_err("no chain");
    assert_eq!(err.metric_label(), "invalid_response", "{err}");
    assert_eq!(
        sim.submissions(),
        0,
        "a retryable failure never follows a submission"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_certificate_that_cannot_be_fetched_is_polled_not_resubmitted() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    let request = request();
    sim.set_behaviour(Behaviour::FetchFails);
    let pending = match backend.sign(&request).await {
        Ok(Outcome::Pending(p)) => p,
        other => panic!("expected Pending, got {other:?}"),
    };
    assert_eq!(sim.submissions(), 1);
    assert!(
        pending.retry_after <= Duration::from_secs(10),
        "{pending:?}"
    );
    sim.set_behaviour(Behaviour::Issue);
    match backend.poll(&pending.id, &request).await {
        Ok(Outcome::Issued(bundle)) => assert_eq!(
            bundle.leaf().unwrap().public_key().spki_der,
            request.csr.public_key().spki_der
        ),
        other => panic!("expected Issued, got {other:?}"),
    }
    assert_eq!(sim.submissions(), 1, "polling never resubmits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_after_a_submission_is_retryable() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));

    sim.set_behaviour(Behaviour::WrongKey);
    let err = submits_once(&sim, &backend).await.expect_err("wrong key");
    assert_eq!(err.metric_label(), "rejected", "{err}");
    assert!(err.to_string().contains("public key"), "{err}");

    sim.set_behaviour(Behaviour::TruncatedCertificate);
    let err = submits_once(&sim, &backend).await.expect_err("truncated");
    assert_eq!(err.metric_label(), "rejected", "{err}");
    assert!(err.to_string().contains("may have been submitted"), "{err}");

    sim.set_behaviour(Behaviour::SubmitPage(
        "<html><h1>Corporate SSO Sign in</h1></html>".into(),
    ));
    let err = submits_once(&sim, &backend).await.expect_err("unreadable");
    assert_eq!(err.metric_label(), "rejected", "{err}");
    assert!(err.to_string().contains("may have been submitted"), "{err}");
    assert!(err.to_string().contains("Corporate SSO"), "{err}");

    // Pending, but no id to poll with.
    sim.set_behaviour(Behaviour::SubmitPage(
        "<html><td>Disposition message:</td><td>Taken Under Submission</td></html>".into(),
    ));
    let err = submits_once(&sim, &backend).await.expect_err("no id");
    assert_eq!(err.metric_label(), "rejected", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_page_whose_script_says_denied_is_pending() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    sim.set_behaviour(Behaviour::SubmitPage(
        "<Script>var sDenied = \"Your request was denied\";</Script>\
         <P><B>Certificate Pending</B></P><P>Your Request Id is 77.</P>"
            .into(),
    ));
    match submits_once(&sim, &backend).await {
        Ok(Outcome::Pending(p)) => assert_eq!(p.id, "77"),
        other => panic!("expected Pending, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_an_unknown_request_id_is_rejected() {
    let sim = AdcsSimulator::start().await.unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    let err = backend
        .poll("4242", &request())
        .await
        .expect_err("no such request");
    assert_eq!(err.metric_label(), "rejected", "{err}");
    assert!(err.to_string().contains("0x8007000D"), "{err}");
    assert_eq!(sim.submissions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_in_any_wrapping_is_read() {
    use certwright_simulators::adcs_sim::ChainFormat;
    let sim = AdcsSimulator::start().await.unwrap();
    for format in [
        ChainFormat::Pkcs7Pem,
        ChainFormat::Pkcs7PemLabel("CERTIFICATE".into()),
        ChainFormat::Pkcs7PemLabel("PKCS #7 SIGNED DATA".into()),
        ChainFormat::Pkcs7Der,
        ChainFormat::Pkcs7Base64,
        ChainFormat::CertificatesPem,
        ChainFormat::CertificateBase64,
    ] {
        sim.set_chain_format(format.clone());
        // A new backend each time: the chain is cached per backend.
        let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
        let health = backend
            .check()
            .await
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert!(health.message.contains("template WebServer"), "{format:?}");
        match backend.sign(&request()).await {
            Ok(Outcome::Issued(bundle)) => {
                assert_eq!(
                    bundle.chain[1].subject().to_string(),
                    "CN=CORP-ISSUING-CA",
                    "{format:?}"
                );
                if format != ChainFormat::CertificateBase64 {
                    assert_eq!(bundle.ca_pem(), sim.root_pem(), "{format:?}");
                }
            }
            other => panic!("{format:?}: expected Issued, got {other:?}"),
        }
    }
    // A page is still not a chain.
    sim.set_behaviour(Behaviour::Html200);
    let err = backend(&sim, ntlm(DEFAULT_PASSWORD))
        .check()
        .await
        .expect_err("a sign-in page");
    assert_eq!(err.metric_label(), "invalid_response", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_on_the_first_fetch_after_submitting_is_a_denial() {
    let sim = AdcsSimulator::start().await.unwrap();
    sim.set_behaviour(Behaviour::DenyOnFetch("no owner on record".into()));
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    match backend.sign(&request()).await {
        Err(e @ Error::Rejected { .. }) => {
            let text = e.to_string();
            assert!(text.contains("no owner on record"), "{text}");
            assert!(text.contains("denied"), "{text}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(sim.submissions(), 1);
    // A poll of the same id reads the page the same way.
    let id = (sim.submissions() + 100).to_string();
    match backend.poll(&id, &request()).await {
        Err(Error::Rejected { reason }) => assert!(reason.contains("no owner on record")),
        other => panic!("expected Rejected, got {other:?}"),
    }
    // A denial by the policy module whose HRESULT names the issuer's configuration is
    // final too: the request was not issued, so it is not left pending.
    sim.set_behaviour(Behaviour::DenyOnFetch(
        "Denied by Policy Module  0x80094800, The request was for a certificate template \
         that is not supported by the Active Directory Certificate Services policy: WebServer."
            .into(),
    ));
    match backend.sign(&request()).await {
        Err(e @ Error::Misconfigured { .. }) => {
            assert!(
                e.to_string().contains("CERTSRV_E_UNSUPPORTED_CERT_TYPE"),
                "{e}"
            );
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert_eq!(sim.submissions(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_with_its_401_is_replaced() {
    let sim = AdcsSimulator::start_with(SimOptions {
        persist_auth: false,
        close_after_401: true,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    match backend.sign(&request()).await {
        Ok(Outcome::Issued(bundle)) => assert_eq!(bundle.chain.len(), 2),
        other => panic!("expected Issued, got {other:?}"),
    }
    // The first connection, closed by the 401 to its second request, and its
    // replacement, which authenticates every request up front.
    assert_eq!(sim.connections(), 2);
    assert_eq!(sim.submissions(), 1);
    assert_eq!(sim.auth_failures(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_asked_to_authenticate_again_authenticates_once_more() {
    let sim = AdcsSimulator::start_with(SimOptions {
        persist_auth: false,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let backend = backend(&sim, ntlm(DEFAULT_PASSWORD));
    // certcarc.asp, certnew.p7b, the submission and certnew.cer: four requests, each
    // authenticated on the one connection, the channel binding checked every time.
    match backend.sign(&request()).await {
        Ok(Outcome::Issued(bundle)) => assert_eq!(bundle.chain.len(), 2),
        other => panic!("expected Issued, got {other:?}"),
    }
    assert_eq!(sim.connections(), 1);
    assert_eq!(sim.ntlm_handshakes(), 4);
    assert_eq!(
        sim.submissions(),
        1,
        "a 401 is answered before the submission is read"
    );
    assert_eq!(sim.auth_failures(), Vec::<String>::new());
    // Wrong credentials are still refused, without a loop.
    let wrong = backend_at(sim.url(), sim.tls_ca_pem(), ntlm("Wr0ng-Horse!"));
    let err = wrong.sign(&request()).await.expect_err("refused");
    assert_eq!(err.metric_label(), "unauthorized", "{err}");
    assert_eq!(sim.auth_failures(), ["ntlm: wrong password"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requested_lifetime_is_asked_for_when_the_issuer_sends_it() {
    let sim = AdcsSimulator::start().await.unwrap();
    sim.set_attribute_end_date(true);
    let mut config = AdcsConfig::new(sim.url(), DEFAULT_TEMPLATE, ntlm(DEFAULT_PASSWORD));
    config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
    config.send_validity_period = true;
    let sending = AdcsBackend::new(config).unwrap();
    let mut request = request();
    request.duration = Some(Duration::from_secs(36 * 3600));
    let leaf = match sending.sign(&request).await.unwrap() {
        Outcome::Issued(bundle) => bundle.chain[0].clone(),
        other => panic!("expected Issued, got {other:?}"),
    };
    assert_eq!(sim.last_validity(), Some(Duration::from_secs(36 * 3600)));
    // A request that names no duration asks for the issuer's default.
    sending.sign(&self::request()).await.unwrap();
    assert_eq!(sim.last_validity(), Some(Duration::from_secs(90 * 86_400)));
    let lifetime = leaf.not_after().as_second() - leaf.not_before().as_second();
    assert!(
        (36 * 3600..=36 * 3600 + 120).contains(&lifetime),
        "lifetime {lifetime}s"
    );
    // Without sendValidityPeriod the template decides.
    let silent = backend(&sim, ntlm(DEFAULT_PASSWORD));
    silent.sign(&request).await.unwrap();
    assert_eq!(sim.last_validity(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_the_submission_is_never_sent_again() {
    let sim = AdcsSimulator::start().await.unwrap();
    let mut config = AdcsConfig::new(sim.url(), DEFAULT_TEMPLATE, ntlm(DEFAULT_PASSWORD));
    config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
    // Long enough for the steps before the submission on a loaded machine; the lost
    // answer then costs this long once.
    config.timeout = Duration::from_secs(3);
    let backend = AdcsBackend::new(config).unwrap();
    sim.set_behaviour(Behaviour::LoseAnswerToSubmission);
    let err = backend.sign(&request()).await.expect_err("no answer");
    assert_eq!(err.metric_label(), "rejected", "{err}");
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(text.contains("may have been submitted"), "{text}");
    assert!(text.contains("look for it on the CA"), "{text}");
    assert_eq!(sim.submissions(), 1);
    assert_eq!(sim.waiting_ids().len(), 1, "the CA holds the one request");

    // A 500 answering the submission itself (the chain is cached from the call above,
    // so the submission is the first request) is final too: it may come after certsrv
    // took the request.
    sim.set_behaviour(Behaviour::Fail500);
    let err = backend.sign(&request()).await.expect_err("500");
    assert_eq!(err.metric_label(), "rejected", "{err}");
    assert!(err.to_string().contains("may have been submitted"), "{err}");
}
