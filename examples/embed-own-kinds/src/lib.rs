//! A controller of your own on certwright's engine: the issuer kinds `TeamIssuer`
//! (namespaced) and `TeamClusterIssuer` in the API group `pki.team.example`, each
//! certwright's [`IssuerSpec`] plus a field of the team's own (`owner`, a contact that
//! every issuer must name). cert-manager CertificateRequests whose `issuerRef.group` is
//! `pki.team.example` are signed by this controller; certwright's own kinds are left to
//! certwright.
//!
//! Three things make it work, all in this file:
//! 1. the two kinds, derived with kube's `CustomResource` with a status holding
//!    certwright's [`Condition`]s;
//! 2. [`IssuerResource`] for each, saying where the spec and conditions are, and here
//!    also refusing an issuer that names no owner before any backend is built;
//! 3. [`IssuerKinds`] pairing them with the group, and [`Engine::<TeamKinds>`](Engine).

use std::sync::Arc;

use certwright_api::validation::ValidationErrors;
use certwright_api::{Condition, FieldError, FieldErrorKind, IssuerSpec};
use certwright_backends::{BuildError, SecretSource, build_backend};
use certwright_engine::metrics::Metrics;
use certwright_engine::{Engine, EngineConfig, IssuerKinds, IssuerResource};
use certwright_pki::Backend;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the team's kinds.
pub const GROUP: &str = "pki.team.example";

/// A team's issuer in its own namespace: certwright's spec plus an owner.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "pki.team.example",
    version = "v1",
    kind = "TeamIssuer",
    namespaced,
    status = "TeamIssuerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TeamIssuerSpec {
    /// Who answers for certificates from this issuer (an email address or a team name).
    pub owner: String,
    /// certwright's issuer spec: the backend and its tuning.
    #[serde(flatten)]
    pub issuer: IssuerSpec,
}

/// The cluster-scoped counterpart, reading its Secrets from the cluster resource
/// namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "pki.team.example",
    version = "v1",
    kind = "TeamClusterIssuer",
    status = "TeamIssuerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TeamClusterIssuerSpec {
    /// Who answers for certificates from this issuer.
    pub owner: String,
    /// certwright's issuer spec.
    #[serde(flatten)]
    pub issuer: IssuerSpec,
}

/// The status both kinds share: the conditions the engine writes (`Ready`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct TeamIssuerStatus {
    /// The issuer's conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Refuses an issuer without an owner, in the words the engine puts on its `Ready`
/// condition (reason `InvalidSpec`).
fn require_owner(owner: &str) -> Result<(), BuildError> {
    if owner.trim().is_empty() {
        let errors = ValidationErrors(vec![FieldError {
            field: "spec.owner".to_string(),
            kind: FieldErrorKind::Required,
            detail: "every issuer names who answers for its certificates".to_string(),
        }]);
        return Err(BuildError::InvalidSpec(errors));
    }
    Ok(())
}

impl IssuerResource for TeamIssuer {
    fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }

    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }

    fn build_backend(&self, secrets: &dyn SecretSource) -> Result<Arc<dyn Backend>, BuildError> {
        require_owner(&self.spec.owner)?;
        build_backend(self.issuer_spec(), secrets)
    }
}

impl IssuerResource for TeamClusterIssuer {
    fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }

    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }

    fn build_backend(&self, secrets: &dyn SecretSource) -> Result<Arc<dyn Backend>, BuildError> {
        require_owner(&self.spec.owner)?;
        build_backend(self.issuer_spec(), secrets)
    }
}

/// The team's pair of kinds, served by [`Engine::<TeamKinds>`](Engine).
#[derive(Debug, Clone, Copy, Default)]
pub struct TeamKinds;

impl IssuerKinds for TeamKinds {
    const GROUP: &'static str = GROUP;
    type Namespaced = TeamIssuer;
    type Cluster = TeamClusterIssuer;
}

/// The two CRDs, to install before the controller starts.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![TeamIssuer::crd(), TeamClusterIssuer::crd()]
}

/// The CRDs as one YAML stream (`embed-own-kinds --print-crds | kubectl apply -f -`).
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

/// The engine configuration of this controller: certwright's defaults under its own
/// name, with the cluster issuers' Secrets in `cluster_resource_namespace`.
pub fn config(cluster_resource_namespace: &str) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.cluster_resource_namespace = cluster_resource_namespace.to_string();
    config.controller_name = "team-issuer".to_string();
    config.redact_tenant_errors = true;
    config
}

/// The engine for the team's kinds.
pub fn engine(client: kube::Client, config: EngineConfig, metrics: Metrics) -> Engine<TeamKinds> {
    Engine::<TeamKinds>::new(client, config, metrics)
}
