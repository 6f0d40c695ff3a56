//! CRDs of other projects that certwright's tests install into the test API server.

/// cert-manager's `CertificateRequest` CRD (`cert-manager.io/v1`), as YAML.
pub const CERT_MANAGER: &str = include_str!("../fixtures/cert-manager-crds.yaml");
