//! Kerberos (Negotiate) to AD CS, against the KDC simulator and certsrv over real TLS:
//! password and keytab, a wrong password, an unreachable KDC, an unknown service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certwright_backend_adcs::{
    AdcsAuth, AdcsBackend, AdcsConfig, KerberosCredentials, KerberosSecret,
};
use certwright_pki::{Backend, Error, Outcome, SignRequest};
use certwright_simulators::adcs_sim::{
    AdcsSimulator, DEFAULT_PASSWORD, DEFAULT_TEMPLATE, DEFAULT_USER, SimAuth, SimOptions,
};
use certwright_simulators::fixtures::{CsrBuilder, KeyKind};
use certwright_simulators::kdc_sim::{DEFAULT_REALM, KdcSimulator};
use certwright_x509::Csr;

struct World {
    kdc: KdcSimulator,
    sim: AdcsSimulator,
}

async fn world() -> World {
    let kdc = KdcSimulator::start(DEFAULT_REALM, DEFAULT_USER, DEFAULT_PASSWORD)
        .await
        .unwrap();
    let sim = AdcsSimulator::start_with(SimOptions {
        auth: SimAuth::Negotiate {
            service_key: kdc.service_key(),
            principal: format!("{DEFAULT_USER}@{DEFAULT_REALM}"),
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    World { kdc, sim }
}

fn kerberos(kdc: &str, secret: KerberosSecret) -> AdcsAuth {
    AdcsAuth::Kerberos(KerberosCredentials {
        username: DEFAULT_USER.into(),
        realm: DEFAULT_REALM.to_ascii_lowercase(),
        kdc: kdc.into(),
        secret,
    })
}

/// The service principal is `HTTP/localhost`, so certsrv is addressed by that name.
fn backend(world: &World, auth: AdcsAuth) -> AdcsBackend {
    let url = world.sim.url().replace("127.0.0.1", "localhost");
    let mut config = AdcsConfig::new(url, DEFAULT_TEMPLATE, auth);
    config.ca_bundle_pem = Some(world.sim.tls_ca_pem().as_bytes().to_vec());
    config.timeout = Duration::from_secs(5);
    AdcsBackend::new(config).expect("valid configuration")
}

fn request() -> SignRequest {
    let generated = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("web.apps.example.test")
        .dns("web.apps.example.test")
        .build();
    SignRequest::new(Csr::parse(generated.csr_pem.as_bytes()).unwrap(), "uid-1")
}

async fn issued(backend: &AdcsBackend) {
    match backend.sign(&request()).await {
        Ok(Outcome::Issued(bundle)) => {
            assert_eq!(bundle.chain[1].subject().to_string(), "CN=CORP-ISSUING-CA");
        }
        other => panic!("expected Issued, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_with_a_password() {
    let world = world().await;
    let backend = backend(
        &world,
        kerberos(
            &world.kdc.address(),
            KerberosSecret::Password(DEFAULT_PASSWORD.into()),
        ),
    );
    issued(&backend).await;
    assert_eq!(world.sim.auth_failures(), Vec::<String>::new());
    assert_eq!(world.kdc.failures(), Vec::<String>::new());
    assert_eq!(world.sim.kerberos_logons(), 1, "one logon per connection");
    assert_eq!(
        world.kdc.as_requests(),
        2,
        "pre-authentication asked, then given"
    );
    assert_eq!(world.kdc.tgs_requests(), 1);
    backend.check().await.expect("healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_with_a_keytab() {
    let world = world().await;
    let backend = backend(
        &world,
        kerberos(
            &world.kdc.address(),
            KerberosSecret::Keytab(world.kdc.keytab()),
        ),
    );
    issued(&backend).await;
    assert_eq!(world.sim.kerberos_logons(), 1);
    assert_eq!(world.kdc.failures(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_unauthorized_at_the_kdc() {
    let world = world().await;
    let backend = backend(
        &world,
        kerberos(
            &world.kdc.address(),
            KerberosSecret::Password("wrong".into()),
        ),
    );
    let err = backend.sign(&request()).await.expect_err("refused");
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("KDC_ERR_PREAUTH_FAILED"), "{err}");
    assert!(!err.to_string().contains("wrong\""), "{err}");
    assert_eq!(world.sim.submissions(), 0);
    assert_eq!(world.sim.connections(), 1, "certsrv is reached only by TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kdc_is_transient() {
    let world = world().await;
    let closed = format!("127.0.0.1:{}", certwright_simulators::tls::refused_port());
    let backend = backend(
        &world,
        kerberos(&closed, KerberosSecret::Password(DEFAULT_PASSWORD.into())),
    );
    let err = backend.sign(&request()).await.expect_err("no KDC");
    assert!(matches!(err, Error::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_service_principal_is_misconfigured() {
    let world = world().await;
    // 127.0.0.1 has no HTTP/ SPN in the KDC.
    let mut config = AdcsConfig::new(
        world.sim.url(),
        DEFAULT_TEMPLATE,
        kerberos(
            &world.kdc.address(),
            KerberosSecret::Password(DEFAULT_PASSWORD.into()),
        ),
    );
    config.ca_bundle_pem = Some(world.sim.tls_ca_pem().as_bytes().to_vec());
    let backend = AdcsBackend::new(config).unwrap();
    let err = backend.sign(&request()).await.expect_err("no SPN");
    assert_eq!(err.metric_label(), "misconfigured", "{err}");
    assert!(err.to_string().contains("HTTP/<host>"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certsrv_refuses_a_ticket_for_another_service_key() {
    let world = world().await;
    let other = KdcSimulator::start(DEFAULT_REALM, DEFAULT_USER, DEFAULT_PASSWORD)
        .await
        .unwrap();
    let backend = backend(
        &world,
        kerberos(
            &other.address(),
            KerberosSecret::Password(DEFAULT_PASSWORD.into()),
        ),
    );
    let err = backend.sign(&request()).await.expect_err("refused");
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(
        err.to_string().contains("refused the Kerberos ticket"),
        "{err}"
    );
    assert!(
        world.sim.auth_failures()[0].contains("does not decrypt"),
        "{:?}",
        world.sim.auth_failures()
    );
}

fn password_backend(world: &World) -> AdcsBackend {
    backend(
        world,
        kerberos(
            &world.kdc.address(),
            KerberosSecret::Password(DEFAULT_PASSWORD.into()),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_cached_a_hundred_signs_make_one_as_and_one_tgs_exchange() {
    let world = world().await;
    let backend = password_backend(&world);
    for _ in 0..100 {
        issued(&backend).await;
    }
    backend.check().await.expect("healthy");
    assert_eq!(world.sim.submissions(), 100);
    assert_eq!(world.sim.kerberos_logons(), 101, "one logon per connection");
    assert_eq!(
        world.kdc.as_requests(),
        2,
        "one AS exchange: asked, then given"
    );
    assert_eq!(world.kdc.tgs_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_certsrv_refuses_is_replaced_once() {
    let world = world().await;
    let backend = password_backend(&world);
    issued(&backend).await;
    // The service account's password is reset: the cached ticket no longer decrypts.
    let key = world.kdc.rotate_service_key();
    world.sim.set_auth(SimAuth::Negotiate {
        service_key: key,
        principal: format!("{DEFAULT_USER}@{DEFAULT_REALM}"),
    });
    issued(&backend).await;
    assert_eq!(
        world.kdc.tgs_requests(),
        2,
        "a fresh ticket after the refusal"
    );
    assert_eq!(
        world.sim.auth_failures().len(),
        1,
        "{:?}",
        world.sim.auth_failures()
    );
    assert_eq!(world.sim.submissions(), 2);
    // A ticket refused though fresh is an error, not a loop.
    world.sim.set_auth(SimAuth::Negotiate {
        service_key: vec![7; 32],
        principal: format!("{DEFAULT_USER}@{DEFAULT_REALM}"),
    });
    let err = backend.sign(&request()).await.expect_err("refused");
    assert_eq!(err.metric_label(), "unauthorized", "{err}");
    assert_eq!(world.kdc.tgs_requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_negotiate_authenticates_every_request() {
    let world = world().await;
    world.sim.set_persist_auth(false);
    let backend = password_backend(&world);
    issued(&backend).await;
    issued(&backend).await;
    assert_eq!(world.sim.connections(), 2);
    // Each request authenticates with its own token from the one cached ticket: four
    // for the first sign (certcarc.asp, certnew.p7b, the submission, certnew.cer), two
    // for the second (the chain is cached).
    assert_eq!(world.sim.kerberos_logons(), 6);
    assert_eq!(world.sim.submissions(), 2);
    assert_eq!(world.sim.auth_failures(), Vec::<String>::new());
    assert_eq!(world.kdc.tgs_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_an_aes_key_is_named() {
    let world = world().await;
    world.kdc.remove_aes_key();
    let err = password_backend(&world)
        .sign(&request())
        .await
        .expect_err("no AES key");
    assert_eq!(err.metric_label(), "unauthorized", "{err}");
    let text = err.to_string();
    assert!(text.contains("KDC_ERR_PREAUTH_FAILED"), "{text}");
    assert!(text.contains("may have no AES256 key"), "{text}");
    assert!(text.contains("msDS-SupportedEncryptionTypes"), "{text}");
    assert_eq!(world.sim.submissions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signs_share_one_set_of_tickets() {
    let world = world().await;
    let backend = std::sync::Arc::new(password_backend(&world));
    let signs: Vec<_> = (0..8)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move { backend.sign(&request()).await })
        })
        .collect();
    for sign in signs {
        assert!(matches!(sign.await.unwrap(), Ok(Outcome::Issued(_))));
    }
    assert_eq!(world.kdc.as_requests(), 2);
    assert_eq!(world.kdc.tgs_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_renewed_before_they_end() {
    let world = world().await;
    // Long enough that two signs fit in it on a loaded machine (tickets are renewed a
    // quarter of their lifetime, 2 s, before they end, and the KDC rounds to seconds).
    world.kdc.set_ticket_lifetime(Duration::from_secs(8));
    let backend = password_backend(&world);
    issued(&backend).await;
    issued(&backend).await;
    assert_eq!(world.kdc.tgs_requests(), 1, "cached while valid");
    tokio::time::sleep(Duration::from_millis(8100)).await;
    issued(&backend).await;
    assert_eq!(world.kdc.as_requests(), 4, "a new TGT");
    assert_eq!(world.kdc.tgs_requests(), 2, "a new service ticket");
}
