//! The issuer kinds the engine serves. An embedder implements [`IssuerKinds`] for their
//! own CRD pair (namespaced + cluster-scoped); certwright's `InternalIssuer` and
//! `InternalClusterIssuer` are one implementation, [`CertwrightIssuers`].

use std::fmt::Debug;
use std::sync::Arc;

use certwright_api::{Condition, InternalClusterIssuer, InternalIssuer, IssuerSpec, IssuerStatus};
use certwright_backends::{BuildError, SecretSource, build_backend};
use certwright_pki::Backend;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::{ClusterResourceScope, NamespaceResourceScope};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One issuer kind: how the engine reads its spec and status and builds its backend.
pub trait IssuerResource:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// The spec that configures the backend and its tuning.
    fn issuer_spec(&self) -> &IssuerSpec;

    /// The conditions currently in the object's status.
    fn conditions(&self) -> &[Condition];

    /// The object's status, when the kind has certwright's `IssuerStatus`: the engine
    /// reads back from it what it wrote of a local CA (its issuance records, trust bundle
    /// and rotation). The default, `None`, suits a kind whose status has only conditions;
    /// its local CAs then record nothing a restarted controller could read back, and a
    /// rotation's `Retire` cannot wait for the current CA's certificates (docs/engine.md).
    fn issuer_status(&self) -> Option<&IssuerStatus> {
        None
    }

    /// Builds the backend from the spec and the Secrets it references. The default uses
    /// certwright's adapters; override it to plug in a backend of your own.
    fn build_backend(&self, secrets: &dyn SecretSource) -> Result<Arc<dyn Backend>, BuildError> {
        build_backend(self.issuer_spec(), secrets)
    }

    /// Names of the Secrets the backend is built from; a change to one rebuilds it.
    fn secret_names(&self) -> Vec<String> {
        self.issuer_spec()
            .secret_names()
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}

/// A pair of issuer kinds in one API group, as cert-manager's `Issuer` and
/// `ClusterIssuer`: CertificateRequests whose `issuerRef.group` is [`IssuerKinds::GROUP`]
/// are served by the engine.
pub trait IssuerKinds: Send + Sync + 'static {
    /// The API group in `issuerRef.group`, e.g. `pki.certwright.io`.
    const GROUP: &'static str;
    /// The namespaced kind; it reads Secrets from its own namespace.
    type Namespaced: IssuerResource + Resource<Scope = NamespaceResourceScope>;
    /// The cluster-scoped kind; it reads Secrets from the cluster resource namespace.
    type Cluster: IssuerResource + Resource<Scope = ClusterResourceScope>;
}

/// certwright's own kinds: `InternalIssuer` and `InternalClusterIssuer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CertwrightIssuers;

impl IssuerKinds for CertwrightIssuers {
    const GROUP: &'static str = certwright_api::GROUP;
    type Namespaced = InternalIssuer;
    type Cluster = InternalClusterIssuer;
}

impl IssuerResource for InternalIssuer {
    fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }

    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
}

impl IssuerResource for InternalClusterIssuer {
    fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }

    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
}

/// An issuer object as the issuer loop reads it, whatever its kind's Rust type: the
/// reflector store's own object, never a copy.
pub(crate) trait IssuerObject: Send + Sync {
    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;
    /// [`IssuerResource::issuer_spec`].
    fn spec(&self) -> &IssuerSpec;
    /// [`IssuerResource::conditions`].
    fn ready_conditions(&self) -> &[Condition];
    /// [`IssuerResource::issuer_status`].
    fn status(&self) -> Option<&IssuerStatus>;
    /// [`IssuerResource::secret_names`].
    fn secrets(&self) -> Vec<String>;
    /// [`IssuerResource::build_backend`].
    fn build(&self, secrets: &dyn SecretSource) -> Result<Arc<dyn Backend>, BuildError>;
}

impl<R: IssuerResource> IssuerObject for R {
    fn metadata(&self) -> &ObjectMeta {
        self.meta()
    }

    fn spec(&self) -> &IssuerSpec {
        self.issuer_spec()
    }

    fn ready_conditions(&self) -> &[Condition] {
        self.conditions()
    }

    fn status(&self) -> Option<&IssuerStatus> {
        self.issuer_status()
    }

    fn secrets(&self) -> Vec<String> {
        self.secret_names()
    }

    fn build(&self, secrets: &dyn SecretSource) -> Result<Arc<dyn Backend>, BuildError> {
        self.build_backend(secrets)
    }
}
