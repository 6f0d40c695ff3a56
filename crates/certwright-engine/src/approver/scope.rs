//! Whether a request is the approver's to decide, known before it is read: what the
//! request store holds and what a look leaves alone.

use std::collections::BTreeMap;

use certwright_api::IssuerRef;
use certwright_policy::{Issuer, PolicySet};

use crate::config::Unmatched;

/// Whether an undecided request is the approver's to look at, known before it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Another approver's (or a person's): neither held nor read.
    Others,
    /// Held and looked at.
    Ours,
    /// Held until the namespace's labels are known: a policy selects by them.
    NeedsLabels,
}

/// A namespace's labels, as far as the approver knows them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Labels<'a> {
    /// Not known yet (the namespace watch has not seen it).
    Unknown,
    /// The namespace does not exist.
    Absent,
    /// Its labels.
    Known(&'a BTreeMap<String, String>),
}

/// Whether a request is the approver's: not when it names certwright's group without a
/// kind (cert-manager refuses any decision on it), not when its signer is not one the
/// controller may approve, and, under `--policy-unmatched=ignore`, not when no policy
/// selects its issuer and namespace (another approver's, until a policy does).
pub(crate) fn scope(
    issuer_ref: &IssuerRef,
    namespace: &str,
    own_group: &str,
    signer_approved: impl FnOnce(&Issuer) -> bool,
    unmatched: Unmatched,
    policies: &PolicySet,
    labels: Labels<'_>,
) -> Scope {
    if issuer_ref.kind.is_empty() && issuer_ref.group == own_group {
        return Scope::Others;
    }
    let issuer = Issuer::of(issuer_ref);
    if !signer_approved(&issuer) {
        return Scope::Others;
    }
    if unmatched == Unmatched::Deny {
        return Scope::Ours;
    }
    let mut needs_labels = false;
    for policy in policies.iter().filter(|p| p.selects_issuer(&issuer)) {
        let selects = match labels {
            Labels::Unknown if policy.uses_labels() => {
                needs_labels = true;
                false
            }
            Labels::Unknown | Labels::Absent => policy.selects_namespace(namespace, None),
            Labels::Known(labels) => policy.selects_namespace(namespace, Some(labels)),
        };
        if selects {
            return Scope::Ours;
        }
    }
    if needs_labels {
        Scope::NeedsLabels
    } else {
        Scope::Others
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use certwright_api::IssuancePolicySpec;
    use certwright_policy::Policy;
    use std::sync::Arc;

    fn policies(specs: &[(&str, &str)]) -> PolicySet {
        PolicySet::new(specs.iter().map(|(name, yaml)| {
            let spec: IssuancePolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
            Arc::new(Policy::compile(name, &spec))
        }))
    }

    fn issuer_ref(name: &str, kind: &str, group: &str) -> IssuerRef {
        IssuerRef {
            name: name.to_string(),
            kind: kind.to_string(),
            group: group.to_string(),
        }
    }

    #[test]
    fn scope_leaves_what_is_not_certwrights_to_decide() {
        let corp = issuer_ref("corp", "ClusterIssuer", "cert-manager.io");
        let none = PolicySet::default();
        let yes = |_: &Issuer| true;
        let scope_of = |issuer: &IssuerRef, unmatched, set: &PolicySet, labels| {
            scope(
                issuer,
                "payments",
                "pki.certwright.io",
                yes,
                unmatched,
                set,
                labels,
            )
        };
        // An empty kind with certwright's group: cert-manager refuses any decision.
        let empty_kind = issuer_ref("corp", "", "pki.certwright.io");
        assert_eq!(
            scope_of(&empty_kind, Unmatched::Deny, &none, Labels::Unknown),
            Scope::Others
        );
        // A signer the controller may not approve.
        assert_eq!(
            scope(
                &corp,
                "payments",
                "pki.certwright.io",
                |issuer: &Issuer| issuer.kind != "ClusterIssuer",
                Unmatched::Deny,
                &none,
                Labels::Unknown
            ),
            Scope::Others
        );
        // Default-deny: every other request is certwright's, to deny if no policy applies.
        assert_eq!(
            scope_of(&corp, Unmatched::Deny, &none, Labels::Unknown),
            Scope::Ours
        );
        // Ignore: only a request some policy selects.
        assert_eq!(
            scope_of(&corp, Unmatched::Ignore, &none, Labels::Unknown),
            Scope::Others
        );
        let by_name = policies(&[(
            "payments",
            "selector: { issuerRef: { name: corp }, namespace: { matchNames: [pay*] } }",
        )]);
        assert_eq!(
            scope_of(&corp, Unmatched::Ignore, &by_name, Labels::Unknown),
            Scope::Ours
        );
        let other_issuer = issuer_ref("other", "ClusterIssuer", "cert-manager.io");
        assert_eq!(
            scope_of(&other_issuer, Unmatched::Ignore, &by_name, Labels::Unknown),
            Scope::Others
        );
    }

    #[test]
    fn scope_waits_for_labels_a_policy_selects_by() {
        let corp = issuer_ref("corp", "ClusterIssuer", "cert-manager.io");
        let set = policies(&[(
            "pci",
            "selector: { namespace: { matchLabels: { pci: \"true\" } } }",
        )]);
        let scope_of = |labels| {
            scope(
                &corp,
                "payments",
                "pki.certwright.io",
                |_: &Issuer| true,
                Unmatched::Ignore,
                &set,
                labels,
            )
        };
        assert_eq!(scope_of(Labels::Unknown), Scope::NeedsLabels);
        let pci: BTreeMap<String, String> = [("pci".to_string(), "true".to_string())].into();
        assert_eq!(scope_of(Labels::Known(&pci)), Scope::Ours);
        let none = BTreeMap::new();
        assert_eq!(scope_of(Labels::Known(&none)), Scope::Others);
        assert_eq!(scope_of(Labels::Absent), Scope::Others);
    }
}
