//! certwright's reconcile engine: the only library that talks to the API server.
//!
//! It watches cert-manager `CertificateRequest`s that name an issuer of the configured
//! kinds, decides what each needs with a pure function ([`decide`]), and applies that
//! decision: signs approved requests exactly once through the issuer's
//! [`certwright_pki::Backend`], protects the PKI ([`protection`]: concurrency cap, token
//! bucket, circuit breaker), writes conditions, emits Kubernetes Events and Prometheus
//! [`metrics`]. It is generic over the issuer kinds ([`IssuerKinds`]), so an embedder can
//! drive it with their own CRDs.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), certwright_engine::Error> {
//! use certwright_engine::{CertwrightIssuers, Engine, EngineConfig, metrics::Metrics};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let engine = Engine::<CertwrightIssuers>::new(client, EngineConfig::default(), Metrics::new());
//! engine.run(shutdown).await
//! # }
//! ```
#![deny(missing_docs)]

mod approver;
mod ca_lifecycle;
pub mod cached;
mod config;
pub mod csr;
mod engine;
mod error;
pub mod events;
pub mod issuers;
pub mod kinds;
pub mod leader;
pub mod metrics;
pub mod protection;
mod requests;
mod submission;
mod watches;
pub mod workqueue;

pub use certwright_policy::Evaluation;
pub use config::{
    DEFAULT_CA_EXPIRY_WARNING, DEFAULT_MAX_RETRY_DURATION, EngineConfig, PolicyConfig,
    SecretAccess, Unmatched,
};
pub use engine::Engine;
pub use error::Error;
pub use kinds::{CertwrightIssuers, IssuerKinds, IssuerResource};
pub use requests::decide;
