//! The kinds the test API server serves: a few built-in ones (Secret, ConfigMap, core and
//! `events.k8s.io` Events, Lease, CertificateSigningRequest, Namespace,
//! ValidatingWebhookConfiguration,
//! CustomResourceDefinition) and every custom resource registered from a
//! `CustomResourceDefinition`.

use serde_json::Value;

use super::error::ApiError;

/// Identifies a stored kind: (API group, plural). Core kinds have the group "".
pub(crate) type TypeKey = (String, String);

/// The group of CustomResourceDefinitions.
pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
/// The plural of CustomResourceDefinitions.
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

/// How one kind is served and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourceDef {
    /// API group, "" for core.
    pub(crate) group: String,
    pub(crate) plural: String,
    pub(crate) singular: String,
    pub(crate) kind: String,
    pub(crate) list_kind: String,
    pub(crate) short_names: Vec<String>,
    /// Served versions; objects are stored once and served at each (no conversion but
    /// the `apiVersion`, as a CRD with conversion strategy `None`).
    pub(crate) versions: Vec<String>,
    /// The version objects are stored at (their `apiVersion` in the store).
    pub(crate) storage_version: String,
    pub(crate) namespaced: bool,
    /// `.status` is written only through `/status`, and ignored on the main resource.
    pub(crate) status_subresource: bool,
    /// A custom resource: strategic merge patch is refused (415) and PUT requires
    /// `metadata.resourceVersion`, as upstream.
    pub(crate) custom: bool,
    /// `metadata.generation` starts at 1 and is bumped when anything but metadata (and
    /// status, with a status subresource) changes.
    pub(crate) tracks_generation: bool,
    /// PUT of a missing object creates it (upstream: Events, Leases).
    pub(crate) create_on_update: bool,
}

impl ResourceDef {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
    ) -> ResourceDef {
        ResourceDef {
            group: group.to_string(),
            plural: plural.to_string(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.to_string(),
            list_kind: format!("{kind}List"),
            short_names: Vec::new(),
            versions: vec![version.to_string()],
            storage_version: version.to_string(),
            namespaced,
            status_subresource: false,
            custom: false,
            tracks_generation: false,
            create_on_update: false,
        }
    }

    /// Whether this is `certificates.k8s.io` CertificateSigningRequests.
    pub(crate) fn is_csr(&self) -> bool {
        self.group == super::certificates::GROUP && self.plural == super::certificates::PLURAL
    }

    /// The key this kind is stored under.
    pub(crate) fn key(&self) -> TypeKey {
        (self.group.clone(), self.plural.clone())
    }

    /// `apiVersion` for one of the served versions: `v1` or `group/version`.
    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The `apiVersion` objects are stored with.
    pub(crate) fn storage_api_version(&self) -> String {
        self.api_version(&self.storage_version)
    }

    /// `plural` or `plural.group`, as upstream names a resource in messages.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The 404 upstream answers for a missing object of this kind.
    pub(crate) fn not_found(&self, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", self.qualified()),
        )
        .with_details(name, &self.group, &self.plural)
    }

    /// The 409 Conflict upstream answers for a stale resourceVersion or a failed
    /// precondition.
    pub(crate) fn conflict(&self, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                self.qualified()
            ),
        )
        .with_details(name, &self.group, &self.plural)
    }

    /// A 422 Invalid about one field of an object of this kind.
    pub(crate) fn invalid(&self, name: &str, field_error: &str) -> ApiError {
        let group_kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        ApiError::invalid(format!("{group_kind} \"{name}\" is invalid: {field_error}"))
            .with_details(name, &self.group, &self.kind)
    }
}

/// The kinds every server starts with.
pub(crate) fn builtins() -> Vec<ResourceDef> {
    let mut defs = vec![
        ResourceDef::builtin("", "v1", "secrets", "Secret", true),
        ResourceDef::builtin("", "v1", "configmaps", "ConfigMap", true),
        ResourceDef::builtin("", "v1", "events", "Event", true),
        ResourceDef::builtin("events.k8s.io", "v1", "events", "Event", true),
        ResourceDef::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
    ];
    for def in &mut defs {
        if def.plural == "events" || def.plural == "leases" {
            def.create_on_update = true;
        }
    }
    defs[1].short_names = vec!["cm".to_string()];
    defs[2].short_names = vec!["ev".to_string()];
    defs[3].short_names = vec!["ev".to_string()];

    let mut csrs = ResourceDef::builtin(
        super::certificates::GROUP,
        "v1",
        super::certificates::PLURAL,
        "CertificateSigningRequest",
        false,
    );
    csrs.status_subresource = true;
    csrs.short_names = vec!["csr".to_string()];
    defs.push(csrs);

    let mut namespaces = ResourceDef::builtin("", "v1", "namespaces", "Namespace", false);
    namespaces.status_subresource = true;
    namespaces.short_names = vec!["ns".to_string()];
    defs.push(namespaces);

    let mut webhooks = ResourceDef::builtin(
        super::admission::GROUP,
        "v1",
        super::admission::VALIDATING_PLURAL,
        "ValidatingWebhookConfiguration",
        false,
    );
    webhooks.tracks_generation = true;
    defs.push(webhooks);

    let mut crds = ResourceDef::builtin(
        CRD_GROUP,
        "v1",
        CRD_PLURAL,
        "CustomResourceDefinition",
        false,
    );
    crds.status_subresource = true;
    crds.tracks_generation = true;
    crds.short_names = vec!["crd".to_string(), "crds".to_string()];
    defs.push(crds);
    defs
}

/// The kind a `CustomResourceDefinition` (apiextensions.k8s.io/v1, as JSON) defines.
///
/// Checks what upstream checks for serving: a group with a dot, plural and kind, a scope,
/// at least one served version, and `metadata.name` = `<plural>.<group>`. The schema is
/// not validated; served objects are checked against its CEL rules only (see
/// [`super::cel`]), not against its types, and are neither defaulted nor pruned.
pub(crate) fn from_crd(crd: &Value) -> Result<ResourceDef, ApiError> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let invalid = |field: &str| {
        ApiError::invalid(format!(
            "CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: {field}"
        ))
        .with_details(name, CRD_GROUP, "CustomResourceDefinition")
    };
    let text = |pointer: &str| {
        crd.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let group = text("/spec/group").ok_or_else(|| invalid("spec.group: Required value"))?;
    if !group.contains('.') {
        return Err(invalid(
            "spec.group: Invalid value: should be a domain with at least one dot",
        ));
    }
    let plural =
        text("/spec/names/plural").ok_or_else(|| invalid("spec.names.plural: Required value"))?;
    let kind =
        text("/spec/names/kind").ok_or_else(|| invalid("spec.names.kind: Required value"))?;
    if name != format!("{plural}.{group}") {
        return Err(invalid(&format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        )));
    }
    let namespaced = match text("/spec/scope").as_deref() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(invalid(
                "spec.scope: Unsupported value: supported values: \"Cluster\", \"Namespaced\"",
            ));
        }
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut served = Vec::new();
    let mut storage = None;
    let mut status_subresource = false;
    for v in &versions {
        let Some(vname) = v.get("name").and_then(Value::as_str) else {
            return Err(invalid("spec.versions[].name: Required value"));
        };
        if v.get("served").and_then(Value::as_bool).unwrap_or(false) {
            served.push(vname.to_string());
        }
        if v.get("storage").and_then(Value::as_bool).unwrap_or(false) {
            storage = Some(vname.to_string());
        }
        if v.pointer("/subresources/status").is_some() {
            status_subresource = true;
        }
    }
    if served.is_empty() {
        return Err(invalid(
            "spec.versions: Invalid value: must have at least one served version",
        ));
    }
    let storage_version = storage.unwrap_or_else(|| served[0].clone());
    let singular = text("/spec/names/singular").unwrap_or_else(|| kind.to_ascii_lowercase());
    let list_kind = text("/spec/names/listKind").unwrap_or_else(|| format!("{kind}List"));
    let short_names = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(ResourceDef {
        group,
        plural,
        singular,
        kind,
        list_kind,
        short_names,
        versions: served,
        storage_version,
        namespaced,
        status_subresource,
        custom: true,
        tracks_generation: true,
        create_on_update: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "kind": "Widget"},
                "scope": "Namespaced",
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}}},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn reads_a_crd() {
        let def = from_crd(&crd()).expect("valid");
        assert_eq!(
            def.key(),
            ("example.com".to_string(), "widgets".to_string())
        );
        assert_eq!(def.versions, ["v1beta1", "v1"]);
        assert_eq!(def.storage_version, "v1");
        assert_eq!(def.singular, "widget");
        assert_eq!(def.list_kind, "WidgetList");
        assert!(def.namespaced && def.status_subresource && def.custom);
        assert_eq!(def.storage_api_version(), "example.com/v1");
    }

    #[test]
    fn refuses_a_crd_whose_name_or_group_is_wrong() {
        let mut bad = crd();
        bad["metadata"]["name"] = json!("widgets");
        assert_eq!(from_crd(&bad).expect_err("name").code, 422);
        let mut bad = crd();
        bad["spec"]["group"] = json!("example");
        bad["metadata"]["name"] = json!("widgets.example");
        assert_eq!(from_crd(&bad).expect_err("group").code, 422);
        let mut bad = crd();
        bad["spec"]["scope"] = json!("Everywhere");
        assert_eq!(from_crd(&bad).expect_err("scope").code, 422);
    }
}
