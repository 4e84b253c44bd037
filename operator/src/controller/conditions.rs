//! Standard `metav1.Condition`s, the same way for every kind: a transition time that moves
//! only when a condition's status does, and "is the status already current" without
//! looking at those times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use rigging_crds::{
    MapReduceStatus, PipelineStatus, ReplicatedServiceStatus, ScatterGatherStatus,
    ShardedServiceStatus, WorkQueueStatus,
};
use serde::Serialize;
use serde_json::Value;

use super::Kind;

/// One condition a kind wants to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `Ready`, `Progressing`, `Degraded`, …
    pub type_: &'static str,
    /// Whether the condition holds.
    pub status: bool,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
}

/// A condition of type `type_`.
pub fn cond(type_: &'static str, status: bool, reason: &'static str, message: &str) -> Cond {
    Cond {
        type_,
        status,
        reason,
        message: message.to_owned(),
    }
}

/// The conditions of an object whose spec is invalid, for every kind: not ready, not
/// progressing until the spec is fixed, degraded, each saying why.
pub fn invalid(message: &str) -> [Cond; 3] {
    [
        cond("Ready", false, "InvalidSpec", message),
        cond(
            "Progressing",
            false,
            "InvalidSpec",
            "waiting for the spec to be fixed",
        ),
        cond("Degraded", true, "InvalidSpec", message),
    ]
}

/// A kind's status, which carries the standard conditions.
pub trait Conditioned {
    /// The conditions it carries.
    fn conditions(&self) -> &[Condition];
}

macro_rules! conditioned {
    ($($status:ty),+ $(,)?) => {
        $(impl Conditioned for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
        })+
    };
}

conditioned!(
    ReplicatedServiceStatus,
    ShardedServiceStatus,
    WorkQueueStatus,
    PipelineStatus,
    ScatterGatherStatus,
    MapReduceStatus,
);

/// The conditions `conds` of `obj`, for its generation, each keeping the transition time
/// its status carries while the condition's status did not change.
pub fn of<K: Kind>(obj: &K, conds: impl IntoIterator<Item = Cond>, now: Timestamp) -> Vec<Condition>
where
    K::Status: Conditioned,
{
    let previous = obj
        .status()
        .map(Conditioned::conditions)
        .unwrap_or_default();
    finish(previous, conds, obj.meta().generation, now)
}

/// The conditions for `generation`, keeping the previous transition time of a condition
/// whose status did not change.
pub fn finish(
    previous: &[Condition],
    conds: impl IntoIterator<Item = Cond>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    conds
        .into_iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map_or(Time(now), |p| p.last_transition_time.clone());
            Condition {
                type_: c.type_.into(),
                status: status.into(),
                reason: c.reason.into(),
                message: c.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// `text` cut to at most `max` bytes (at a character boundary) and marked `…` when cut: a
/// message or an item quoted in a status, whose size must stay bounded.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Whether `current` already says what `desired` says. Transition times are ignored: they
/// only move when a condition's status does, and the order of conditions does not count.
pub fn is_current<S: Serialize>(current: Option<&S>, desired: &S) -> bool {
    let Some(current) = current else {
        return false;
    };
    comparable(current) == comparable(desired)
}

fn comparable<S: Serialize>(status: &S) -> Option<Value> {
    let mut value = serde_json::to_value(status).ok()?;
    if let Some(conditions) = value.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions.iter_mut() {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
        conditions.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_transition_time_moves_only_with_the_status() {
        let then = Timestamp::UNIX_EPOCH;
        let now = Timestamp::now();
        let before = finish(&[], [cond("Ready", false, "Waiting", "0/1")], Some(1), then);
        let same = finish(
            &before,
            [cond("Ready", false, "Waiting", "still 0/1")],
            Some(2),
            now,
        );
        assert_eq!(same[0].last_transition_time, Time(then));
        let flipped = finish(&same, [cond("Ready", true, "Ready", "1/1")], Some(2), now);
        assert_eq!(flipped[0].last_transition_time, Time(now));
    }

    #[test]
    fn current_ignores_transition_times_and_order_but_not_content() {
        let a = json!({"observedGeneration": 2, "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Degraded", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]});
        let b = json!({"observedGeneration": 2, "conditions": [
            {"type": "Degraded", "status": "False", "lastTransitionTime": "2026-02-02T00:00:00Z"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-02-02T00:00:00Z"}
        ]});
        assert!(is_current(Some(&a), &b));
        let mut c = b.clone();
        c["observedGeneration"] = json!(3);
        assert!(!is_current(Some(&a), &c));
        assert!(!is_current(None, &a));
    }
}
