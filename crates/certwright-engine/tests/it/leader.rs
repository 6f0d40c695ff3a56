//! Leader election on a Lease against the testkit API server: one leader at a time, a
//! graceful stop hands over at once, a leader that cannot renew stops at once, and the
//! engine it ran signs nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{Env, cluster_ref, fast_config, rest_spec};
use certwright_engine::leader::{LeaderElector, LeaseConfig};
use certwright_engine::{CertwrightIssuers, Engine, Error};
use certwright_simulators::rest_sim::RestSimulator;
use certwright_testkit::apiserver::Method;
use tokio_util::sync::CancellationToken;

fn config(identity: &str) -> LeaseConfig {
    let mut config = LeaseConfig::new("cert-manager", "certwright-controller", identity);
    // Leases count whole seconds. Long enough that a loaded machine does not make a
    // leader miss its renewals, short against the test's waits.
    config.lease_duration = Duration::from_secs(5);
    config.renew_deadline = Duration::from_secs(2);
    config.retry_period = Duration::from_millis(100);
    config
}

/// Counts down when the work ends, however it ends (returned or aborted).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Work that records how many leaders run at once.
fn work(
    running: Arc<AtomicUsize>,
    overlap: Arc<AtomicBool>,
) -> impl FnOnce(
    CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>> {
    move |token| {
        Box::pin(async move {
            if running.fetch_add(1, Ordering::SeqCst) > 0 {
                overlap.store(true, Ordering::SeqCst);
            }
            let _running = Running(running);
            token.cancelled().await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_graceful_stop_hands_over() {
    let env = Env::new().await;
    let running = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicBool::new(false));
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = LeaderElector::new(env.client.clone(), config("replica-a"));
    let b = LeaderElector::new(env.client.clone(), config("replica-b"));
    let task_a = tokio::spawn({
        let (stop, work) = (stop_a.clone(), work(running.clone(), overlap.clone()));
        async move { a.run(stop, work).await }
    });
    crate::support::eventually("replica-a to lead", || running.load(Ordering::SeqCst) == 1).await;
    let task_b = tokio::spawn({
        let (stop, work) = (stop_b.clone(), work(running.clone(), overlap.clone()));
        async move { b.run(stop, work).await }
    });
    // The standby tries every 100 ms and never gets in while the leader renews.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(running.load(Ordering::SeqCst), 1, "exactly one leader");
    let lease = env
        .server
        .get_json(
            "leases.coordination.k8s.io",
            "cert-manager",
            "certwright-controller",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");

    // A graceful stop releases the lease; the standby takes over well before the
    // 5 s lease would have expired.
    stop_a.cancel();
    task_a.await.unwrap().unwrap();
    let released = std::time::Instant::now();
    let holder = || {
        env.server
            .get_json(
                "leases.coordination.k8s.io",
                "cert-manager",
                "certwright-controller",
            )
            .unwrap()["spec"]["holderIdentity"]
            .clone()
    };
    crate::support::eventually("replica-b to take over", || {
        holder() == "replica-b" && running.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        released.elapsed() < Duration::from_secs(4),
        "taken over on release, not on expiry: {:?}",
        released.elapsed()
    );
    stop_b.cancel();
    task_b.await.unwrap().unwrap();
    assert!(
        !overlap.load(Ordering::SeqCst),
        "two leaders never ran at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_at_once() {
    let env = Env::new().await;
    let running = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicBool::new(false));
    let elector = LeaderElector::new(env.client.clone(), config("replica-a"));
    let task = tokio::spawn({
        let work = work(running.clone(), overlap.clone());
        async move { elector.run(CancellationToken::new(), work).await }
    });
    crate::support::eventually("the elector to lead", || {
        running.load(Ordering::SeqCst) == 1
    })
    .await;
    // Every renewal fails from now on.
    env.server
        .faults()
        .fail_next(Method::PUT, "leases/certwright-controller", 500, 1000);
    // It steps down at the 2 s renew deadline, before the 5 s lease could expire.
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(Error::LeadershipLost)), "{result:?}");
    assert_eq!(running.load(Ordering::SeqCst), 0, "the work was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_leadership_signs_nothing_approved_after() {
    let env = Env::new().await;
    let sim = RestSimulator::start().await.unwrap();
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    let engine =
        Engine::<CertwrightIssuers>::new(env.client.clone(), fast_config(), env.metrics.clone());
    let elector = LeaderElector::new(env.client.clone(), config("replica-a"));
    // The engine's own token is never cancelled: only dropping its future (the elector
    // aborts it when the lease is lost) can stop it. Without the engine's own defences
    // (its tasks aborted with the future, and the stopping token its drop guard
    // cancels), this replica signs the request approved after the loss.
    let task = tokio::spawn(async move {
        elector
            .run(CancellationToken::new(), move |_leading| {
                engine.run(CancellationToken::new())
            })
            .await
    });
    // While it leads, its engine signs.
    env.request("apps", "before", cluster_ref("corp")).await;
    env.approve("apps", "before").await;
    env.wait_ready_reason("apps", "before", "Issued").await;
    let signed = sim.sign_submissions();

    // Every renewal fails from now on: it steps down at the renew deadline.
    env.server
        .faults()
        .fail_next(Method::PUT, "leases/certwright-controller", 500, 100_000);
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(Error::LeadershipLost)), "{result:?}");

    // A request approved now is left to the next leader: no watcher sees it, no worker
    // of this replica takes it, no call reaches the PKI.
    env.request("apps", "after", cluster_ref("corp")).await;
    env.approve("apps", "after").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.sign_submissions(),
        signed,
        "no sign call after the loss"
    );
    let after = env.requests("apps").get("after").await.unwrap();
    let status = after.status.unwrap_or_default();
    assert!(status.certificate.is_none(), "signed after the loss");
    assert!(
        !status.conditions.iter().any(|c| c.type_ == "Ready"),
        "this replica wrote {:?}",
        status.conditions
    );
    assert!(
        after.metadata.annotations.unwrap_or_default().is_empty(),
        "this replica marked the request"
    );
}
