//! Kubernetes-convention status conditions and a setter that keeps
//! `lastTransitionTime` when a condition's status does not change.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The status of a condition: `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell.
    #[default]
    Unknown,
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// One status condition, shaped as Kubernetes API conventions and cert-manager's
/// `CertificateRequestCondition` both describe it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A CamelCase machine-readable reason for the last transition.
    #[serde(default)]
    pub reason: String,
    /// A human-readable message about the last transition.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Timestamp>,
}

impl Condition {
    /// A condition with the given type, status, reason and message, without times.
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: None,
        }
    }

    /// The same condition, computed from `generation`.
    pub fn with_observed_generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    /// True when the condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Lookup and update of a list of conditions, one per type.
pub trait Conditions {
    /// The condition of this type, if any.
    fn condition(&self, type_: &str) -> Option<&Condition>;

    /// Sets `new` as the condition of its type and returns true when anything changed.
    ///
    /// `lastTransitionTime` is kept when the status did not change and set to `now`
    /// (whole seconds, as the API server stores it) when it did or the condition is new.
    fn set_condition(&mut self, new: Condition, now: Timestamp) -> bool;
}

impl Conditions for Vec<Condition> {
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.iter().find(|c| c.type_ == type_)
    }

    fn set_condition(&mut self, mut new: Condition, now: Timestamp) -> bool {
        let now = whole_seconds(now);
        match self.iter_mut().find(|c| c.type_ == new.type_) {
            Some(existing) => {
                new.last_transition_time = if existing.status == new.status {
                    existing.last_transition_time.or(Some(now))
                } else {
                    Some(now)
                };
                if *existing == new {
                    return false;
                }
                *existing = new;
                true
            }
            None => {
                new.last_transition_time = Some(now);
                self.push(new);
                true
            }
        }
    }
}

/// Truncates a timestamp to whole seconds, the precision of a Kubernetes `Time`.
pub fn whole_seconds(ts: Timestamp) -> Timestamp {
    Timestamp::from_second(ts.as_second()).unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn new_condition_gets_transition_time_in_whole_seconds() {
        let mut conditions = Vec::new();
        let now = Timestamp::from_millisecond(1_700_000_000_750).unwrap();
        assert!(conditions.set_condition(
            Condition::new("Ready", ConditionStatus::False, "Pending", "waiting"),
            now
        ));
        assert_eq!(conditions[0].last_transition_time, Some(at(1_700_000_000)));
    }

    #[test]
    fn same_status_keeps_transition_time_but_updates_message() {
        let mut conditions = Vec::new();
        conditions.set_condition(
            Condition::new("Ready", ConditionStatus::False, "Pending", "first"),
            at(100),
        );
        let changed = conditions.set_condition(
            Condition::new("Ready", ConditionStatus::False, "Pending", "second"),
            at(200),
        );
        assert!(changed);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message, "second");
        assert_eq!(conditions[0].last_transition_time, Some(at(100)));
    }

    #[test]
    fn status_change_moves_transition_time() {
        let mut conditions = Vec::new();
        conditions.set_condition(
            Condition::new("Ready", ConditionStatus::False, "Pending", "x"),
            at(100),
        );
        conditions.set_condition(
            Condition::new("Ready", ConditionStatus::True, "Issued", "y"),
            at(300),
        );
        assert_eq!(conditions[0].last_transition_time, Some(at(300)));
        assert!(conditions.condition("Ready").unwrap().is_true());
    }

    #[test]
    fn identical_condition_reports_no_change() {
        let mut conditions = Vec::new();
        let c = Condition::new("Ready", ConditionStatus::True, "Verified", "ok")
            .with_observed_generation(Some(3));
        conditions.set_condition(c.clone(), at(100));
        assert!(!conditions.set_condition(c, at(500)));
        assert_eq!(conditions[0].last_transition_time, Some(at(100)));
    }

    #[test]
    fn serializes_with_kubernetes_field_names() {
        let mut conditions = Vec::new();
        conditions.set_condition(
            Condition::new("Ready", ConditionStatus::True, "Issued", "done")
                .with_observed_generation(Some(2)),
            at(1_767_225_600),
        );
        let json = serde_json::to_value(&conditions[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "Ready",
                "status": "True",
                "reason": "Issued",
                "message": "done",
                "observedGeneration": 2,
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            })
        );
    }
}
