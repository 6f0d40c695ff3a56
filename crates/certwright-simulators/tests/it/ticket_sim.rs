//! The change-ticket simulator over HTTPS, as a Jira client sees it: issues and their
//! status at `/fields/status/name`, Jira's 401 and 404, and the behaviours in front.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use certwright_simulators::ticket_sim::{TicketBehaviour, TicketSimulator};
use certwright_simulators::tls::client_config;
use serde_json::Value;

/// An HTTPS client trusting only the simulator's CA.
fn client(sim: &TicketSimulator) -> reqwest::Client {
    let mut tls = client_config(sim.ca_pem().as_bytes()).expect("client TLS config");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTPS client")
}

fn issue_url(sim: &TicketSimulator, key: &str) -> String {
    format!("{}/rest/api/2/issue/{key}", sim.url())
}

/// `GET /rest/api/2/issue/{key}` with the simulator's bearer token.
async fn get_issue(sim: &TicketSimulator, key: &str) -> reqwest::Response {
    client(sim)
        .get(issue_url(sim, key))
        .bearer_auth(sim.token())
        .send()
        .await
        .expect("an answer")
}

fn content_type(answer: &reqwest::Response) -> String {
    answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn body_json(answer: reqwest::Response) -> Value {
    let bytes = answer.bytes().await.expect("a body");
    serde_json::from_slice(&bytes).expect("a JSON body")
}

fn status_name(issue: &Value) -> Option<&str> {
    issue.pointer("/fields/status/name").and_then(Value::as_str)
}

#[tokio::test]
async fn a_known_ticket_answers_its_status() {
    let sim = TicketSimulator::start().await.unwrap();
    sim.set_status("SEC-4521", "Approved");

    let answer = get_issue(&sim, "SEC-4521").await;
    assert_eq!(answer.status().as_u16(), 200);
    assert!(
        content_type(&answer).starts_with("application/json"),
        "{}",
        content_type(&answer)
    );
    let issue = body_json(answer).await;
    assert_eq!(status_name(&issue), Some("Approved"));
    assert_eq!(issue["key"], "SEC-4521");
    let id = issue["id"].as_str().expect("a string id").to_string();
    assert!(id.parse::<u64>().is_ok(), "{id}");
    assert_eq!(
        issue["self"],
        format!("{}/rest/api/2/issue/{id}", sim.url()).as_str()
    );
    assert_eq!(
        issue.pointer("/fields/status/statusCategory/key"),
        Some(&Value::from("done"))
    );
    let updated = issue
        .pointer("/fields/updated")
        .and_then(Value::as_str)
        .expect("an updated time");
    assert!(
        updated.ends_with("+0000") && updated.len() == 28,
        "{updated}"
    );

    // Jira also finds an issue by its numeric id.
    let by_id = body_json(get_issue(&sim, &id).await).await;
    assert_eq!(by_id["key"], "SEC-4521");
}

#[tokio::test]
async fn status_changes_are_seen_and_removed_tickets_are_gone() {
    let sim = TicketSimulator::start().await.unwrap();
    sim.set_status("CHG-7", "Open");
    let first = body_json(get_issue(&sim, "CHG-7").await).await;
    assert_eq!(status_name(&first), Some("Open"));
    assert_eq!(
        first.pointer("/fields/status/statusCategory/key"),
        Some(&Value::from("new"))
    );

    sim.set_status("CHG-7", "In Review");
    let second = body_json(get_issue(&sim, "CHG-7").await).await;
    assert_eq!(status_name(&second), Some("In Review"));
    assert_eq!(second["id"], first["id"], "an update keeps the id");

    sim.set_status("CHG-7", "Rejected");
    let third = body_json(get_issue(&sim, "CHG-7").await).await;
    assert_eq!(status_name(&third), Some("Rejected"));

    assert!(sim.remove("CHG-7"));
    assert!(!sim.remove("CHG-7"));
    assert_eq!(get_issue(&sim, "CHG-7").await.status().as_u16(), 404);
}

#[tokio::test]
async fn an_unknown_ticket_is_not_found() {
    let sim = TicketSimulator::start().await.unwrap();
    sim.set_status("SEC-4521", "Approved");

    for key in ["SEC-9999", "sec-4521", "SEC-45210"] {
        let answer = get_issue(&sim, key).await;
        assert_eq!(answer.status().as_u16(), 404, "{key}");
        assert!(content_type(&answer).starts_with("application/json"));
        let body = body_json(answer).await;
        assert_eq!(
            body["errorMessages"][0],
            "Issue does not exist or you do not have permission to see it."
        );
        assert!(body["errors"].as_object().is_some_and(|e| e.is_empty()));
    }
    assert_eq!(sim.unauthenticated(), 0);
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_refused_and_counted() {
    let sim = TicketSimulator::start().await.unwrap();
    sim.set_status("SEC-1", "Approved");
    let http = client(&sim);
    let url = issue_url(&sim, "SEC-1");
    let (user, _) = sim.basic_credentials();

    let attempts = [
        http.get(&url),
        http.get(&url).bearer_auth("sim-token-wrong"),
        http.get(&url).basic_auth(user, Some("wrong-password")),
        http.get(&url)
            .basic_auth("someone-else", Some("sim-password-3b9e")),
        http.get(&url).header("authorization", sim.token()),
    ];
    let tries = attempts.len() as u64;
    for attempt in attempts {
        let answer = attempt.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401);
        assert_eq!(
            answer
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Basic realm=\"tickets\"")
        );
        let body = body_json(answer).await;
        assert_eq!(
            body["errorMessages"][0],
            "You are not authenticated. Authentication required to perform this operation."
        );
    }
    assert_eq!(sim.unauthenticated(), tries);
    // Refused lookups are lookups all the same.
    assert_eq!(sim.lookups_of("SEC-1"), tries);

    // Other paths want credentials too.
    let other = http
        .get(format!("{}/rest/api/2/myself", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 401);
    assert_eq!(sim.unauthenticated(), tries + 1);
}

#[tokio::test]
async fn basic_credentials_work() {
    let sim = TicketSimulator::start().await.unwrap();
    sim.set_status("SEC-2", "Approved");
    let (user, password) = sim.basic_credentials();

    let answer = client(&sim)
        .get(issue_url(&sim, "SEC-2"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(status_name(&body_json(answer).await), Some("Approved"));

    // Built by hand, with the scheme in lower case.
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let answer = client(&sim)
        .get(issue_url(&sim, "SEC-2"))
        .header("authorization", format!("basic {encoded}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(sim.unauthenticated(), 0);
}

#[tokio::test]
async fn behaviours_in_front_of_the_ticket_system() {
    let sim = TicketSimulator::start().await.unwrap();
    sim.set_status("SEC-3", "Approved");

    sim.set_behaviour(TicketBehaviour::Html);
    let answer = get_issue(&sim, "SEC-3").await;
    assert_eq!(answer.status().as_u16(), 200);
    assert!(
        content_type(&answer).starts_with("text/html"),
        "{}",
        content_type(&answer)
    );
    let page = answer.text().await.unwrap();
    assert!(page.contains("<html"), "{page}");
    assert!(serde_json::from_str::<Value>(&page).is_err());

    sim.set_behaviour(TicketBehaviour::Unavailable);
    let answer = get_issue(&sim, "SEC-3").await;
    assert_eq!(answer.status().as_u16(), 503);
    assert!(content_type(&answer).starts_with("application/json"));
    let body = body_json(answer).await;
    assert!(body["errorMessages"][0].is_string(), "{body}");

    let delay = Duration::from_millis(300);
    sim.set_behaviour(TicketBehaviour::Slow(delay));
    let started = Instant::now();
    let answer = get_issue(&sim, "SEC-3").await;
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(status_name(&body_json(answer).await), Some("Approved"));

    sim.set_behaviour(TicketBehaviour::Normal);
    let answer = get_issue(&sim, "SEC-3").await;
    assert_eq!(status_name(&body_json(answer).await), Some("Approved"));

    assert_eq!(sim.lookups(), 4);
    assert_eq!(sim.unauthenticated(), 0);
}

#[tokio::test]
async fn lookups_are_counted_per_key() {
    let sim = TicketSimulator::start().await.unwrap();
    sim.set_status("SEC-10", "Approved");
    sim.set_status("SEC-11", "Open");
    assert_eq!(sim.lookups(), 0);

    for key in ["SEC-10", "SEC-11", "SEC-10", "SEC-12", "SEC-10"] {
        get_issue(&sim, key).await;
    }
    assert_eq!(sim.lookups(), 5);
    assert_eq!(sim.lookups_of("SEC-10"), 3);
    assert_eq!(sim.lookups_of("SEC-11"), 1);
    assert_eq!(sim.lookups_of("SEC-12"), 1, "unknown tickets are counted");
    assert_eq!(sim.lookups_of("sec-10"), 0);
    assert_eq!(sim.lookups_of("SEC-13"), 0);
}
