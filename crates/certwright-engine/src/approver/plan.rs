//! The approver's pure decisions: from a [`Verdict`] to what is written on the request,
//! and from the ticket system's answers to approve, deny or wait.

use certwright_api::CertificateRequest;
use certwright_api::certificate_request::{CONDITION_APPROVED, CONDITION_DENIED};
use certwright_api::condition::{Condition, ConditionStatus};
use certwright_policy::ticket::{TicketState, check_ticket_id};
use certwright_policy::{Evaluation, RequestFacts, TicketDue, Verdict, Violation};

use crate::config::Unmatched;

/// The reason of the Approved and Denied conditions certwright writes (the convention
/// of cert-manager's approvers: the approver's domain).
pub(crate) const REASON_POLICY: &str = "policy.certwright.io";
/// The `certwright_policy_decisions_total` label of a request no policy applies to.
pub(crate) const NO_POLICY: &str = "";

/// An Event on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventReason {
    /// Approved by policy (and ticket).
    PolicyApproved,
    /// Denied by policy, by a rejected ticket, or for want of a policy.
    PolicyDenied,
    /// Allowed, waiting for a person.
    ManualApprovalRequired,
    /// Allowed, waiting for the ticket named in its annotation to be approved.
    TicketPending,
    /// Allowed under a Ticket policy, but names no ticket.
    TicketRequired,
    /// The ticket system could not be asked or answered something unreadable.
    TicketCheckFailed,
    /// The API server refused the decision (the controller may not approve the signer).
    PolicyDecisionRefused,
    /// A request with no duration waits for its certwright issuer to be known.
    IssuerUnknown,
}

impl EventReason {
    /// The Event's reason.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventReason::PolicyApproved => "PolicyApproved",
            EventReason::PolicyDenied => "PolicyDenied",
            EventReason::ManualApprovalRequired => "ManualApprovalRequired",
            EventReason::TicketPending => "TicketPending",
            EventReason::TicketRequired => "TicketRequired",
            EventReason::TicketCheckFailed => "TicketCheckFailed",
            EventReason::PolicyDecisionRefused => "PolicyDecisionRefused",
            EventReason::IssuerUnknown => "PolicyIssuerUnknown",
        }
    }

    /// Whether the Event is a warning.
    pub(crate) fn warning(self) -> bool {
        matches!(
            self,
            EventReason::PolicyDenied
                | EventReason::TicketCheckFailed
                | EventReason::PolicyDecisionRefused
        )
    }
}

/// Which kind of wait a request is in, for the awaiting gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Waiting {
    /// For a person.
    Manual,
    /// For a change ticket (or an annotation naming one).
    Ticket,
}

impl Waiting {
    /// The `approval` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Waiting::Manual => "manual",
            Waiting::Ticket => "ticket",
        }
    }
}

/// What to do with an undecided request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Write `Approved`.
    Approve {
        /// The condition message, naming the policies (and ticket).
        message: String,
        /// The policies, for the metric.
        policies: Vec<String>,
    },
    /// Write `Denied`.
    Deny {
        /// The condition message: every violation.
        message: String,
        /// The policies that denied it, for the metric.
        policies: Vec<String>,
    },
    /// Leave it untouched (no policy, and unmatched requests are ignored).
    Leave,
    /// Leave it for a person or a ticket, telling the owner once.
    Wait {
        /// The kind of wait.
        waiting: Waiting,
        /// The Event.
        reason: EventReason,
        /// The Event's note.
        note: String,
    },
    /// Ask the ticket system about these tickets.
    CheckTickets {
        /// Each check with the ticket it asks about.
        checks: Vec<(TicketDue, String)>,
        /// Whether all must approve (or one).
        all: bool,
        /// The policies that allowed the request.
        policies: Vec<String>,
    },
}

/// The resource (plural) and scope of an issuer kind that is not the engine's own, as
/// cert-manager names signers: `Issuer` → `issuers`, `ClusterIssuer` →
/// `clusterissuers`; a kind whose name starts with `Cluster` or holds `ClusterIssuer`
/// (external issuers' convention) is taken to be cluster-scoped.
pub(crate) fn resource_of(kind: &str) -> (String, bool) {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let cluster = kind.starts_with("Cluster") || kind.contains("ClusterIssuer");
    (plural, cluster)
}

/// cert-manager's name of a request's signer, which its webhook checks the approver
/// may `approve`.
pub(crate) fn signer_name(
    plural: &str,
    issuer: &certwright_policy::Issuer,
    namespace: &str,
    cluster: bool,
) -> String {
    if cluster {
        format!("{plural}.{}/{}", issuer.group, issuer.name)
    } else {
        format!("{plural}.{}/{namespace}.{}", issuer.group, issuer.name)
    }
}

/// The most violations a Denied message lists; the count of the rest follows.
const MAX_LISTED: usize = 50;

/// What a request that cannot be read gets: denied, naming why.
pub(crate) fn unreadable(error: &certwright_policy::FactsError) -> Step {
    Step::Deny {
        message: format!("The request cannot be evaluated against IssuancePolicies: {error}"),
        policies: vec![NO_POLICY.to_string()],
    }
}

/// The step for a verdict.
pub(crate) fn plan(
    verdict: Verdict,
    facts: &RequestFacts,
    unmatched: Unmatched,
    evaluation: Evaluation,
) -> Step {
    match verdict {
        Verdict::Unmatched => match unmatched {
            Unmatched::Ignore => Step::Leave,
            Unmatched::Deny => Step::Deny {
                message: format!(
                    "No IssuancePolicy {}covers namespace {} and issuer {}: certwright denies requests no policy allows",
                    match evaluation {
                        Evaluation::All => "",
                        Evaluation::Any => "that the requester may use ",
                    },
                    facts.namespace,
                    facts.issuer.describe()
                ),
                policies: vec![NO_POLICY.to_string()],
            },
        },
        Verdict::Denied { violations } => {
            let listed = &violations[..violations.len().min(MAX_LISTED)];
            let mut message = format!(
                "Denied by IssuancePolicy: {}",
                Verdict::denial_message(listed)
            );
            if violations.len() > listed.len() {
                message.push_str(&format!("; and {} more", violations.len() - listed.len()));
            }
            Step::Deny {
                message,
                policies: policies_of(&violations),
            }
        }
        Verdict::Approved { policies } => Step::Approve {
            message: format!("Approved by IssuancePolicies {}", policies.join(", ")),
            policies,
        },
        Verdict::Manual {
            policies,
            approvers,
        } => {
            let who = if approvers.is_empty() {
                "a person allowed to approve its signer".to_string()
            } else {
                approvers.join("; ")
            };
            Step::Wait {
                waiting: Waiting::Manual,
                reason: EventReason::ManualApprovalRequired,
                note: format!(
                    "Allowed by policy, but IssuancePolicy {} requires approval by a person: {who}. Approve with `kubectl cert-manager approve -n {} {} --reason \"...\"`",
                    policies.join(", "),
                    facts.namespace,
                    facts.name
                ),
            }
        }
        Verdict::Ticket {
            checks,
            all,
            policies,
        } => {
            let mut named = Vec::new();
            let mut missing = Vec::new();
            let mut refused = Vec::new();
            for due in checks {
                match due.config.ticket_of(&facts.annotations) {
                    Ok(Some(ticket)) => {
                        let ticket = ticket.to_string();
                        named.push((due, ticket));
                    }
                    Ok(None) => missing.push(due),
                    Err(why) => refused.push((due, why)),
                }
            }
            // A ticket a policy refuses (not an id, or not of its project) denies under
            // all; under any, only when no policy accepts the ticket named.
            if !refused.is_empty() && (all || named.is_empty()) {
                let reasons: Vec<String> = refused
                    .iter()
                    .map(|(due, why)| {
                        format!(
                            "{}: metadata.annotations[{}] {why}",
                            due.policy, due.config.annotation
                        )
                    })
                    .collect();
                return Step::Deny {
                    message: format!("Denied by IssuancePolicy: {}", reasons.join("; ")),
                    policies: refused.into_iter().map(|(due, _)| due.policy).collect(),
                };
            }
            // Under all, every ticket must be named; under any, one is enough.
            let enough = if all {
                missing.is_empty()
            } else {
                !named.is_empty()
            };
            if !enough {
                let wanted: Vec<String> = missing
                    .iter()
                    .map(|d| format!("{} (IssuancePolicy {})", d.config.annotation, d.policy))
                    .collect();
                return Step::Wait {
                    waiting: Waiting::Ticket,
                    reason: EventReason::TicketRequired,
                    note: format!(
                        "Allowed by policy, but approval needs an approved change ticket named in the annotation {} (cert-manager copies a Certificate's annotations to its requests), or approval by a person",
                        wanted.join(", ")
                    ),
                };
            }
            Step::CheckTickets {
                checks: named,
                all,
                policies,
            }
        }
    }
}

fn policies_of(violations: &[Violation]) -> Vec<String> {
    let mut policies: Vec<String> = violations.iter().map(|v| v.policy.clone()).collect();
    policies.sort();
    policies.dedup();
    policies
}

/// One ticket's answer: what the ticket system said, or why it could not be asked.
pub(crate) type TicketAnswer = Result<TicketState, String>;

/// The step once the ticket system has answered for each check.
pub(crate) fn after_tickets(
    answers: &[(TicketDue, String, TicketAnswer)],
    all: bool,
    policies: &[String],
) -> Step {
    let describe = |due: &TicketDue, ticket: &str, state: &str| {
        format!(
            "change ticket {ticket} ({state:?} in the ticket system of IssuancePolicy {})",
            due.policy
        )
    };
    let approved: Vec<String> = answers
        .iter()
        .filter_map(|(due, ticket, answer)| match answer {
            Ok(TicketState::Approved(state)) => Some(describe(due, ticket, state)),
            _ => None,
        })
        .collect();
    // A rejected ticket, or one raised for something else, is a final no: under all
    // it denies the request; under any, only when every ticket is one.
    let final_no =
        |a: &TicketAnswer| matches!(a, Ok(TicketState::Rejected(_) | TicketState::NotForThis(_)));
    let denial = answers.iter().find(|(_, _, a)| final_no(a));
    let denied = if all {
        denial.is_some()
    } else {
        approved.is_empty() && answers.iter().all(|(_, _, a)| final_no(a))
    };
    if denied && let Some((due, ticket, answer)) = denial {
        let message = match answer {
            Ok(TicketState::Rejected(state)) => {
                format!("Denied: {} is rejected", describe(due, ticket, state))
            }
            Ok(TicketState::NotForThis(why)) => format!(
                "Denied: change ticket {ticket} (IssuancePolicy {}) does not approve this request: {why}",
                due.policy
            ),
            _ => String::new(),
        };
        return Step::Deny {
            message,
            policies: vec![due.policy.clone()],
        };
    }
    let done = if all {
        approved.len() == answers.len()
    } else {
        !approved.is_empty()
    };
    if done {
        return Step::Approve {
            message: format!(
                "Approved by {}; allowed by IssuancePolicies {}",
                approved.join(" and "),
                policies.join(", ")
            ),
            policies: policies.to_vec(),
        };
    }
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(due, ticket, answer)| match answer {
            Err(why) => Some(format!(
                "ticket {ticket} (IssuancePolicy {}): {why}",
                due.policy
            )),
            Ok(TicketState::Unreadable(why)) => Some(format!(
                "ticket {ticket} (IssuancePolicy {}): {why}",
                due.policy
            )),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return Step::Wait {
            waiting: Waiting::Ticket,
            reason: EventReason::TicketCheckFailed,
            note: format!(
                "The ticket system could not confirm the change ticket; asking again later: {}",
                failed.join("; ")
            ),
        };
    }
    let open: Vec<String> = answers
        .iter()
        .filter_map(|(due, ticket, answer)| match answer {
            Ok(TicketState::Open(state)) => Some(describe(due, ticket, state)),
            _ => None,
        })
        .collect();
    Step::Wait {
        waiting: Waiting::Ticket,
        reason: EventReason::TicketPending,
        note: format!(
            "Allowed by policy; waiting for {} to be approved",
            open.join(" and ")
        ),
    }
}

/// Whether a ticket id is usable (re-exported for the ticket call).
pub(crate) fn ticket_id_ok(id: &str) -> bool {
    check_ticket_id(id).is_ok()
}

/// Whether an approver (certwright or a person) has decided the request.
pub(crate) fn decided(request: &CertificateRequest) -> bool {
    request.is_approved() || request.is_denied()
}

/// The condition that records a step: `Approved=True` or `Denied=True`.
pub(crate) fn condition(step: &Step, now: jiff::Timestamp) -> Option<Condition> {
    let (kind, message) = match step {
        Step::Approve { message, .. } => (CONDITION_APPROVED, message),
        Step::Deny { message, .. } => (CONDITION_DENIED, message),
        _ => return None,
    };
    let mut condition = Condition::new(kind, ConditionStatus::True, REASON_POLICY, message.clone());
    condition.last_transition_time = Some(now);
    Some(condition)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use certwright_api::{IssuancePolicySpec, TicketCheck};
    use certwright_policy::ticket::TicketConfig;
    use certwright_policy::{Issuer, Policy, PolicySet};
    use std::sync::Arc;

    fn facts() -> RequestFacts {
        RequestFacts::new(
            "payments",
            "api-1",
            Issuer {
                name: "corp".to_string(),
                kind: "ClusterIssuer".to_string(),
                group: "cert-manager.io".to_string(),
            },
        )
    }

    fn due(policy: &str) -> TicketDue {
        TicketDue {
            policy: policy.to_string(),
            config: TicketConfig::new(&TicketCheck {
                url: "https://t.corp/{ticket}".to_string(),
                id_pattern: "SEC-*".to_string(),
                status_field: "/state".to_string(),
                approved_values: vec!["approved".to_string()],
                rejected_values: vec!["rejected".to_string()],
                ..Default::default()
            })
            .unwrap(),
        }
    }

    #[test]
    fn unmatched_is_denied_or_left() {
        let step = plan(
            Verdict::Unmatched,
            &facts(),
            Unmatched::Deny,
            Evaluation::All,
        );
        let Step::Deny { message, .. } = step else {
            panic!("not denied")
        };
        assert!(message.contains("No IssuancePolicy covers namespace payments and issuer ClusterIssuer corp (cert-manager.io)"), "{message}");
        assert_eq!(
            plan(
                Verdict::Unmatched,
                &facts(),
                Unmatched::Ignore,
                Evaluation::All
            ),
            Step::Leave
        );
    }

    #[test]
    fn manual_names_who_and_how() {
        let step = plan(
            Verdict::Manual {
                policies: vec!["external".to_string()],
                approvers: vec!["the security team".to_string()],
            },
            &facts(),
            Unmatched::Deny,
            Evaluation::All,
        );
        let Step::Wait { waiting, note, .. } = step else {
            panic!("not waiting")
        };
        assert_eq!(waiting, Waiting::Manual);
        assert!(note.contains("the security team"), "{note}");
        assert!(
            note.contains("kubectl cert-manager approve -n payments api-1"),
            "{note}"
        );
    }

    #[test]
    fn a_ticket_verdict_reads_the_annotation() {
        let verdict = || Verdict::Ticket {
            checks: vec![due("change")],
            all: true,
            policies: vec!["change".to_string()],
        };
        let mut f = facts();
        assert!(matches!(
            plan(verdict(), &f, Unmatched::Deny, Evaluation::All),
            Step::Wait {
                reason: EventReason::TicketRequired,
                ..
            }
        ));
        f.annotations.insert(
            "pki.certwright.io/change-ticket".to_string(),
            "SEC-4521".to_string(),
        );
        let Step::CheckTickets { checks, .. } =
            plan(verdict(), &f, Unmatched::Deny, Evaluation::All)
        else {
            panic!("no check")
        };
        assert_eq!(checks[0].1, "SEC-4521");
        f.annotations.insert(
            "pki.certwright.io/change-ticket".to_string(),
            "SEC 4521".to_string(),
        );
        assert!(matches!(
            plan(verdict(), &f, Unmatched::Deny, Evaluation::All),
            Step::Deny { .. }
        ));
    }

    #[test]
    fn ticket_answers_approve_deny_or_wait() {
        let policies = vec!["change".to_string()];
        let one = |answer: TicketAnswer| {
            after_tickets(
                &[(due("change"), "SEC-1".to_string(), answer)],
                true,
                &policies,
            )
        };
        let Step::Approve { message, .. } = one(Ok(TicketState::Approved("approved".to_string())))
        else {
            panic!("not approved")
        };
        assert!(
            message.starts_with("Approved by change ticket SEC-1"),
            "{message}"
        );
        assert!(matches!(
            one(Ok(TicketState::Rejected("rejected".to_string()))),
            Step::Deny { .. }
        ));
        assert!(matches!(
            one(Ok(TicketState::Open("open".to_string()))),
            Step::Wait {
                reason: EventReason::TicketPending,
                ..
            }
        ));
        assert!(matches!(
            one(Ok(TicketState::NotForThis("names payments/db".to_string()))),
            Step::Deny { .. }
        ));
        assert!(matches!(
            one(Err("timed out".to_string())),
            Step::Wait {
                reason: EventReason::TicketCheckFailed,
                ..
            }
        ));
    }

    #[test]
    fn under_all_every_ticket_must_approve() {
        let answers = [
            (
                due("a"),
                "T-1".to_string(),
                Ok(TicketState::Approved("approved".to_string())),
            ),
            (
                due("b"),
                "T-2".to_string(),
                Ok(TicketState::Open("open".to_string())),
            ),
        ];
        let policies = vec!["a".to_string(), "b".to_string()];
        assert!(matches!(
            after_tickets(&answers, true, &policies),
            Step::Wait { .. }
        ));
        assert!(matches!(
            after_tickets(&answers, false, &policies),
            Step::Approve { .. }
        ));
        // Under any, one rejected ticket does not deny while another is open.
        let answers = [
            (
                due("a"),
                "T-1".to_string(),
                Ok(TicketState::Rejected("rejected".to_string())),
            ),
            (
                due("b"),
                "T-2".to_string(),
                Ok(TicketState::Open("open".to_string())),
            ),
        ];
        assert!(matches!(
            after_tickets(&answers, false, &policies),
            Step::Wait { .. }
        ));
        assert!(matches!(
            after_tickets(&answers, true, &policies),
            Step::Deny { .. }
        ));
    }

    #[test]
    fn a_denial_lists_every_violation_and_counts_each_policy() {
        let spec = |yaml: &str| -> IssuancePolicySpec { serde_yaml_ng::from_str(yaml).unwrap() };
        let set = PolicySet::new([
            Arc::new(Policy::compile(
                "base",
                &spec("selector: { namespace: {} }\nconstraints: { maxDuration: 1h }"),
            )),
            Arc::new(Policy::compile(
                "team",
                &spec("selector: { namespace: {} }"),
            )),
        ]);
        let mut f = facts();
        f.dns_names = vec!["x.other.corp".to_string()];
        let Step::Deny { message, policies } = plan(
            set.evaluate(&f, None, Evaluation::All),
            &f,
            Unmatched::Deny,
            Evaluation::All,
        ) else {
            panic!("not denied")
        };
        assert!(
            message.contains(
                "base: spec.duration unset (cert-manager's default 2160h) exceeds maxDuration 1h"
            ),
            "{message}"
        );
        assert!(
            message.contains("team: dnsNames[0] \"x.other.corp\" not allowed"),
            "{message}"
        );
        assert_eq!(policies, ["base", "team"]);
    }

    #[test]
    fn signers_are_named_as_cert_manager_names_them() {
        let issuer = |kind: &str, group: &str| certwright_policy::Issuer {
            name: "corp".to_string(),
            kind: kind.to_string(),
            group: group.to_string(),
        };
        let name = |kind: &str, group: &str| {
            let (plural, cluster) = resource_of(kind);
            signer_name(&plural, &issuer(kind, group), "team", cluster)
        };
        assert_eq!(
            name("Issuer", "cert-manager.io"),
            "issuers.cert-manager.io/team.corp"
        );
        assert_eq!(
            name("ClusterIssuer", "cert-manager.io"),
            "clusterissuers.cert-manager.io/corp"
        );
        assert_eq!(
            name("AWSPCAClusterIssuer", "awspca.cert-manager.io"),
            "awspcaclusterissuers.awspca.cert-manager.io/corp"
        );
    }

    #[test]
    fn a_long_denial_is_cut_with_a_count() {
        let violations: Vec<Violation> = (0..60)
            .map(|i| Violation {
                policy: "p".to_string(),
                field: format!("dnsNames[{i}]"),
                detail: "not allowed".to_string(),
            })
            .collect();
        let Step::Deny { message, policies } = plan(
            Verdict::Denied { violations },
            &facts(),
            Unmatched::Deny,
            Evaluation::All,
        ) else {
            panic!("not denied")
        };
        assert!(message.ends_with("; and 10 more"), "{message}");
        assert_eq!(policies, ["p"]);
    }

    #[test]
    fn conditions_are_approved_or_denied_with_our_reason() {
        let now = jiff::Timestamp::now();
        let c = condition(
            &Step::Approve {
                message: "m".to_string(),
                policies: vec![],
            },
            now,
        )
        .unwrap();
        assert_eq!(c.type_, CONDITION_APPROVED);
        assert_eq!(c.reason, REASON_POLICY);
        assert!(condition(&Step::Leave, now).is_none());
        assert!(ticket_id_ok("SEC-1"));
    }
}
