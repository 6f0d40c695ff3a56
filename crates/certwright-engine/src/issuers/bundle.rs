//! What a local CA publishes beside its issuer: the trust bundle ConfigMap in the
//! issuer's namespace, and the CA report (rotation, expiry) written to its status.

use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::time::Instant;
use tracing::warn;

use super::{IssuerEntry, IssuerKey};
use crate::engine::Shared;
use crate::engine::lock;
use crate::error::api_code;
use crate::events::Transition;

impl Shared {
    /// What the issuer's status should say of its CA: nothing new while its build
    /// failed, nothing for a backend that holds no CA.
    pub(crate) fn ca_report(
        &self,
        key: &IssuerKey,
        entry: &IssuerEntry,
        generation: Option<i64>,
    ) -> crate::issuers::CaReport {
        use crate::issuers::CaReport;
        let Some(backend) = entry.backend.as_ref() else {
            return CaReport::Keep;
        };
        let Some(certificates) = backend.ca_certificates() else {
            return CaReport::Absent;
        };
        let next = entry
            .spec
            .ca
            .as_ref()
            .and_then(|ca| ca.rotation.as_ref())
            .map(|r| r.next_secret_name.as_str());
        CaReport::Present(crate::ca_lifecycle::ca_status(
            &certificates,
            &self.ledger.records(key),
            next,
            generation,
            jiff::Timestamp::now(),
        ))
    }

    /// Keeps the trust bundle in the ConfigMap `spec.ca.bundleConfigMap` names, in the
    /// namespace the issuer reads its Secrets from. Only a ConfigMap certwright made for
    /// this issuer is written; another is left alone, with a warning Event. `false`
    /// when the ConfigMap could not be read or written, to be tried again soon.
    pub(crate) async fn publish_bundle(
        &self,
        key: &IssuerKey,
        entry: &IssuerEntry,
        namespace: &str,
    ) -> bool {
        use crate::ca_lifecycle::{BundleWrite, bundle_config_map};
        use k8s_openapi::api::core::v1::ConfigMap;
        let Some(name) = entry
            .spec
            .ca
            .as_ref()
            .and_then(|ca| ca.bundle_config_map.clone())
        else {
            lock(&self.bundles).remove(key);
            return true;
        };
        let Some(certificates) = entry.backend.as_ref().and_then(|b| b.ca_certificates()) else {
            return true;
        };
        let bundle = certwright_x509::certificates_to_pem(&crate::ca_lifecycle::trust(
            &certificates,
            &self.ledger.records(key),
            jiff::Timestamp::now(),
        ));
        let done = format!("{namespace}/{name}\n{bundle}");
        // Written once per bundle, and looked at again every health-check interval, so
        // that a ConfigMap deleted or edited meanwhile is put right.
        if lock(&self.bundles).get(key).is_some_and(|(last, at)| {
            *last == done && at.elapsed() < self.config.issuer_health_check_interval
        }) {
            return true;
        }
        let issuer = self.issuer_label(key);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let existing = match api.get_opt(&name).await {
            Ok(existing) => existing,
            Err(e) if api_code(&e) == Some(403) => {
                // Not granted (the chart's trustBundleConfigMaps): said once per interval.
                let why = format!(
                    "the controller may not read or write ConfigMap {namespace}/{name} \
                     (spec.ca.bundleConfigMap): the chart grants it with \
                     trustBundleConfigMaps.enabled; the trust bundle is in status.trustBundle"
                );
                warn!(issuer = %issuer, "{why}");
                self.events.emit(Transition {
                    regarding: self.issuer_reference(key),
                    reason: "BundleConfigMapForbidden",
                    note: why,
                    warning: true,
                });
                lock(&self.bundles).insert(key.clone(), (done, Instant::now()));
                return true;
            }
            Err(e) => {
                warn!(issuer = %issuer, configmap = %name, error = %e, "could not read the bundle ConfigMap; retrying");
                return false;
            }
        };
        let result = match bundle_config_map(&name, namespace, &issuer, &bundle, existing.as_ref())
        {
            BundleWrite::Nothing => Ok(()),
            BundleWrite::NotOurs(why) => {
                warn!(issuer = %issuer, "{why}");
                self.events.emit(Transition {
                    regarding: self.issuer_reference(key),
                    reason: "BundleConfigMapNotOwned",
                    note: why,
                    warning: true,
                });
                Ok(())
            }
            BundleWrite::Write(object) => match existing {
                None => match serde_json::from_value::<ConfigMap>(object) {
                    Ok(map) => api
                        .create(&kube::api::PostParams::default(), &map)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                },
                Some(_) => api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&object))
                    .await
                    .map(|_| ()),
            },
        };
        match result {
            Ok(()) => {
                lock(&self.bundles).insert(key.clone(), (done, Instant::now()));
                true
            }
            Err(e) => {
                warn!(issuer = %issuer, configmap = %name, error = %e, "could not write the bundle ConfigMap; retrying");
                false
            }
        }
    }
}
