//! Reads the Secrets an issuer references from the API server, keeping only the names of
//! their non-empty keys. Secret data never leaves this module, and is never logged.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::admission::{FetchedSecrets, SecretRef, SecretState};

/// How long one Secret read may take before the check counts as not made.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads every Secret in `refs` at once, each with [`LOOKUP_TIMEOUT`].
pub(crate) async fn fetch(client: &kube::Client, refs: Vec<SecretRef>) -> FetchedSecrets {
    let lookups = refs.into_iter().map(|secret| async move {
        let state = fetch_one(client, &secret).await;
        (secret, state)
    });
    futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .collect()
}

async fn fetch_one(client: &kube::Client, secret: &SecretRef) -> SecretState {
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
    match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(&secret.name)).await {
        Err(_) => SecretState::Unknown(format!(
            "the API server did not answer within {}s",
            LOOKUP_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => {
            tracing::warn!(
                namespace = %secret.namespace,
                secret = %secret.name,
                error = %describe(&e),
                "cannot read a Secret an issuer references"
            );
            SecretState::Unknown(describe(&e))
        }
        Ok(Ok(None)) => SecretState::NotFound,
        Ok(Ok(Some(found))) => SecretState::Found(key_names(&found)),
    }
}

/// The keys of `secret` that hold a non-empty value.
fn key_names(secret: &Secret) -> std::collections::BTreeSet<String> {
    let data = secret
        .data
        .iter()
        .flatten()
        .filter(|(_, v)| !v.0.is_empty())
        .map(|(k, _)| k.clone());
    // The API server never returns stringData, but a Secret built by hand might carry it.
    let string_data = secret
        .string_data
        .iter()
        .flatten()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k.clone());
    data.chain(string_data).collect()
}

/// An API error in words fit for a denial: the status for API answers (RBAC denials are
/// the usual cause), the error chain otherwise. kube's errors carry no Secret data.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn only_non_empty_key_names_are_kept() {
        let secret = Secret {
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(b"pem".to_vec())),
                    ("tls.key".to_string(), ByteString(Vec::new())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let keys: Vec<_> = key_names(&secret).into_iter().collect();
        assert_eq!(keys, vec!["tls.crt".to_string()]);
    }
}
