//! certwright's reconcile engine: the only library that talks to the API server.
//!
//! It watches cert-manager `CertificateRequest`s that name an issuer of the configured
//! kinds, decides what each needs with a pure function, and applies that decision:
//! signs approved requests exactly once through the issuer's
//! [`certwright_pki::Backend`], protects the PKI (concurrency cap, token bucket, circuit
//! breaker), writes conditions, emits Kubernetes Events and Prometheus [`metrics`]. It
//! is generic over the issuer kinds ([`IssuerKinds`]), so an embedder can drive it with
//! their own CRDs.
//!
//! What it exports is what an embedder uses: [`Engine`] and its [`EngineConfig`]
//! ([`PolicyConfig`], [`SecretAccess`], [`Backoff`]), the kinds traits
//! ([`IssuerKinds`], [`IssuerResource`], [`CertwrightIssuers`]), [`metrics::Metrics`],
//! and leader election ([`leader`]). Configuration types are `#[non_exhaustive]`: start
//! from `Default` (or `new`) and set the fields to change. The loops themselves (one
//! module each: the engine's tasks, the watches, requests, issuers, Kubernetes CSRs,
//! the policy approver) are private; `docs/architecture.md` follows one request
//! through them.
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
mod cached;
mod config;
mod csr;
mod engine;
mod error;
mod events;
mod issuers;
mod kinds;
pub mod leader;
pub mod metrics;
mod protection;
mod requests;
mod submission;
mod watches;

pub use certwright_policy::Evaluation;
pub use config::{
    DEFAULT_CA_EXPIRY_WARNING, DEFAULT_MAX_RETRY_DURATION, EngineConfig, PolicyConfig,
    SecretAccess, Unmatched,
};
pub use engine::Engine;
pub use error::Error;
pub use kinds::{CertwrightIssuers, IssuerKinds, IssuerResource};
pub use requests::decide::Backoff;
