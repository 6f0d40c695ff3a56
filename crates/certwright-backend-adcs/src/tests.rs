use super::*;
use certwright_simulators::{CsrBuilder, KeyKind, TestCa};

fn bundle() -> Option<Vec<u8>> {
    Some(
        TestCa::root(KeyKind::EcdsaP256, "Trust")
            .cert_pem()
            .as_bytes()
            .to_vec(),
    )
}

fn basic() -> AdcsAuth {
    AdcsAuth::Basic {
        username: "CORP\\svc".into(),
        password: "hunter2".into(),
    }
}

fn config(url: &str, auth: AdcsAuth) -> AdcsConfig {
    AdcsConfig {
        ca_bundle_pem: bundle(),
        ..AdcsConfig::new(url, "WebServer", auth)
    }
}

#[test]
fn config_is_checked() {
    let misconfigured = |config: AdcsConfig| {
        let err = AdcsBackend::new(config).expect_err("misconfigured");
        assert_eq!(err.metric_label(), "misconfigured", "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        err.to_string()
    };
    assert!(misconfigured(config("http://adcs.example/certsrv", basic())).contains("https"));
    misconfigured(config("https://u:hunter2@adcs.example/certsrv", basic()));
    misconfigured(config("https://adcs.example/certsrv?x=hunter2", basic()));
    let kerberos = |username: &str, realm: &str, kdc: &str, secret: KerberosSecret| {
        AdcsAuth::Kerberos(KerberosCredentials {
            username: username.into(),
            realm: realm.into(),
            kdc: kdc.into(),
            secret,
        })
    };
    let password = || KerberosSecret::Password("hunter2".into());
    let good = kerberos("svc", "corp.example", "dc1.corp.example", password());
    assert!(!format!("{good:?}").contains("hunter2"));
    AdcsBackend::new(config("https://adcs.example/certsrv", good)).expect("kerberos");
    for bad in [
        kerberos("CORP\\svc", "CORP.EXAMPLE", "dc1:88", password()),
        kerberos("svc@CORP.EXAMPLE", "CORP.EXAMPLE", "dc1:88", password()),
        kerberos("svc", " ", "dc1:88", password()),
        kerberos("svc", "CORP.EXAMPLE", "", password()),
        kerberos(
            "svc",
            "CORP.EXAMPLE",
            "dc1:88",
            KerberosSecret::Password(String::new()),
        ),
        kerberos(
            "svc",
            "CORP.EXAMPLE",
            "dc1:88",
            KerberosSecret::Keytab(b"hunter2".to_vec()),
        ),
    ] {
        misconfigured(config("https://adcs.example/certsrv", bad));
    }
    misconfigured(AdcsConfig {
        template: " ".into(),
        ..config("https://adcs.example/certsrv", basic())
    });
    misconfigured(AdcsConfig {
        ca_bundle_pem: Some(b"not pem".to_vec()),
        ..config("https://adcs.example/certsrv", basic())
    });
    let backend = AdcsBackend::new(config("https://adcs.example/certsrv/", basic())).expect("ok");
    assert_eq!(backend.kind(), "adcs");
    assert!(!format!("{backend:?}").contains("hunter2"));
    let ntlm = AdcsAuth::Ntlm {
        username: "svc".into(),
        password: "hunter2".into(),
        domain: Some("CORP".into()),
    };
    assert!(!format!("{ntlm:?}").contains("hunter2"));
    AdcsBackend::new(config("https://adcs.example/certsrv", ntlm)).expect("ok");
}

#[test]
fn a_lifetime_goes_in_validity_period_attributes() {
    let generated = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("www.example.test")
        .build();
    let csr = Csr::parse(generated.csr_pem.as_bytes()).expect("csr");
    let form = submit_form(&csr, "WebServer", Some(Duration::from_secs(90 * 86_400)));
    assert!(
        form.contains(
            "CertAttrib=CertificateTemplate%3AWebServer%0D%0AValidityPeriod%3ADays%0D%0A\
             ValidityPeriodUnits%3A90&"
        ),
        "{form}"
    );
    assert_eq!(
        validity_period(Duration::from_secs(36 * 3600)),
        Some(("Hours", 36))
    );
    assert_eq!(
        validity_period(Duration::from_secs(90)),
        Some(("Seconds", 90))
    );
    assert_eq!(
        validity_period(Duration::from_secs(600)),
        Some(("Minutes", 10))
    );
    assert_eq!(validity_period(Duration::from_millis(500)), None);
}

#[test]
fn the_form_carries_the_reference_fields() {
    let generated = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("www.example.test")
        .build();
    let csr = Csr::parse(generated.csr_pem.as_bytes()).expect("csr");
    let form = submit_form(&csr, "Web Server+1", None);
    let fields: Vec<&str> = form
        .split('&')
        .map(|f| f.split('=').next().unwrap_or(""))
        .collect();
    assert_eq!(
        fields,
        [
            "Mode",
            "CertRequest",
            "CertAttrib",
            "FriendlyType",
            "TargetStoreFlags",
            "SaveCert"
        ]
    );
    assert!(form.contains("Mode=newreq&CertRequest=-----BEGIN+CERTIFICATE+REQUEST-----%0A"));
    assert!(form.contains("CertAttrib=CertificateTemplate%3AWeb+Server%2B1&"));
    assert!(
        form.contains("FriendlyType=Saved-Request+Certificate&TargetStoreFlags=0&SaveCert=yes")
    );
}

#[tokio::test]
async fn unusable_pending_ids_are_rejected_without_a_call() {
    let backend = AdcsBackend::new(AdcsConfig {
        timeout: Duration::from_secs(2),
        ..config(&certwright_simulators::tls::refused_url(), basic())
    })
    .expect("valid");
    let generated = CsrBuilder::new(KeyKind::EcdsaP256).common_name("x").build();
    let request = SignRequest::new(Csr::parse(generated.csr_pem.as_bytes()).expect("csr"), "k");
    for id in ["..", "", "12a", "99999999999999999999999"] {
        match backend.poll(id, &request).await {
            Err(Error::Rejected { reason }) => {
                assert!(reason.starts_with("cannot poll"), "{reason}")
            }
            other => panic!("{id:?}: {other:?}"),
        }
    }
    let err = backend.poll("12", &request).await.expect_err("refused");
    assert_eq!(err.metric_label(), "transient", "{err}");
}

#[tokio::test]
async fn templates_that_would_forge_attributes_are_refused() {
    for bad in [
        "Web:Server",
        "a&b",
        "a=b",
        "a\\b",
        "Web\r\nSAN:dns=evil.example",
    ] {
        let err = AdcsBackend::new(AdcsConfig {
            template: bad.into(),
            ..config("https://adcs.example/certsrv", basic())
        })
        .expect_err(bad);
        assert_eq!(err.metric_label(), "misconfigured", "{bad:?}: {err}");
        assert!(err.to_string().contains("templateName"), "{err}");
    }
    // A request's override is refused before any call (the URL refuses connections).
    let backend = AdcsBackend::new(AdcsConfig {
        timeout: Duration::from_secs(2),
        ..config(&certwright_simulators::tls::refused_url(), basic())
    })
    .expect("valid");
    let generated = CsrBuilder::new(KeyKind::EcdsaP256).common_name("x").build();
    let mut request = SignRequest::new(Csr::parse(generated.csr_pem.as_bytes()).expect("csr"), "k");
    for bad in [
        "User\r\nSAN:upn=admin@corp",
        "a:b",
        "a&b",
        "a=b",
        "a\\b",
        "a\u{7f}",
    ] {
        request.template = Some(bad.into());
        match backend.sign(&request).await {
            Err(Error::Rejected { reason }) => assert!(reason.contains("template"), "{reason}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    request.template = Some("User".into());
    let err = backend.sign(&request).await.expect_err("refused");
    assert_eq!(err.metric_label(), "transient", "{err}");
}

/// IIS with Extended Protection refuses an NTLM client that sends no channel binding at
/// all (older clients), and accepts it when Extended Protection is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protection_refuses_a_client_without_channel_binding() {
    use certwright_simulators::adcs_sim::{
        AdcsSimulator, DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_USER,
    };
    let sim = AdcsSimulator::start().await.expect("simulator starts");
    let config = AdcsConfig {
        ca_bundle_pem: Some(sim.tls_ca_pem().as_bytes().to_vec()),
        ..AdcsConfig::new(
            sim.url(),
            "WebServer",
            AdcsAuth::Ntlm {
                username: DEFAULT_USER.into(),
                password: DEFAULT_PASSWORD.into(),
                domain: Some(DEFAULT_DOMAIN.into()),
            },
        )
    };
    let backend = AdcsBackend::new(config).expect("backend");
    // Our client binds, and is let in.
    let session = backend.transport.open().await.expect("connects");
    let mut bound = session;
    let answer = bound
        .send(hyper::Method::GET, "certcarc.asp", None)
        .await
        .expect("bound client accepted");
    assert_eq!(answer.status, hyper::StatusCode::OK);
    // The same credentials without a binding: 401, as IIS answers.
    let mut unbound = backend
        .transport
        .open()
        .await
        .expect("connects")
        .without_channel_binding();
    match unbound.send(hyper::Method::GET, "certcarc.asp", None).await {
        Err(Error::Unauthorized { message }) => {
            assert!(message.contains("Extended Protection"), "{message}")
        }
        other => panic!("expected Unauthorized, got {:?}", other.map(|r| r.status)),
    }
    assert!(
        sim.auth_failures()
            .iter()
            // An unbinding client sends zeros (or no pair at all): both are refused.
            .any(|f| f == "ntlm: Extended Protection: empty channel binding"
                || f == "ntlm: Extended Protection: no channel binding"),
        "{:?}",
        sim.auth_failures()
    );
    // With Extended Protection off, the unbound client gets through.
    sim.set_extended_protection(false);
    let mut unbound = backend
        .transport
        .open()
        .await
        .expect("connects")
        .without_channel_binding();
    let answer = unbound
        .send(hyper::Method::GET, "certcarc.asp", None)
        .await
        .expect("accepted without Extended Protection");
    assert_eq!(answer.status, hyper::StatusCode::OK);
}
