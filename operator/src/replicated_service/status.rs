//! The status a ReplicatedService should show, computed without IO from what the watch
//! caches hold.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, ReplicatedService, ReplicatedServiceStatus};

/// Status of a ReplicatedService whose children are applied, given its Deployment as last
/// seen (`None` before the first watch event for it arrives).
pub fn observed(
    rs: &ReplicatedService,
    deployment: Option<&Deployment>,
    now: Timestamp,
) -> ReplicatedServiceStatus {
    let generation = rs.metadata.generation;
    let (replicas, ready_replicas, ready, progressing) = match deployment {
        None => (
            None,
            None,
            cond(
                "Ready",
                false,
                "Pending",
                "the Deployment has not been observed yet",
            ),
            cond("Progressing", true, "Creating", "creating the Deployment"),
        ),
        Some(d) => {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            let ready_n = st.ready_replicas.unwrap_or(0);
            let current = st.observed_generation >= d.metadata.generation;
            let rolled_out = current
                && st.updated_replicas.unwrap_or(0) >= want
                && st.replicas.unwrap_or(0) <= want
                && st.available_replicas.unwrap_or(0) >= want;
            let ready = if ready_n >= want && current {
                cond(
                    "Ready",
                    true,
                    "ReplicasReady",
                    &format!("{ready_n}/{want} replicas ready"),
                )
            } else {
                cond(
                    "Ready",
                    false,
                    "ReplicasNotReady",
                    &format!("{ready_n}/{want} replicas ready"),
                )
            };
            let progressing = if rolled_out {
                cond(
                    "Progressing",
                    false,
                    "RolloutComplete",
                    "every replica runs the current template",
                )
            } else {
                cond(
                    "Progressing",
                    true,
                    "RollingOut",
                    "the Deployment is rolling out",
                )
            };
            (st.replicas.or(Some(0)), Some(ready_n), ready, progressing)
        }
    };
    let degraded = cond(
        "Degraded",
        false,
        "Reconciled",
        "the spec is valid and its objects are applied",
    );
    ReplicatedServiceStatus {
        observed_generation: generation,
        replicas,
        ready_replicas,
        conditions: finish(rs, [ready, progressing, degraded], generation, now),
    }
}

/// Status of a ReplicatedService whose spec is invalid: nothing is applied until it is
/// fixed, and the conditions say why.
pub fn invalid(
    rs: &ReplicatedService,
    errors: &FieldErrors,
    now: Timestamp,
) -> ReplicatedServiceStatus {
    let generation = rs.metadata.generation;
    let message = errors.to_string();
    let previous = rs.status.clone().unwrap_or_default();
    ReplicatedServiceStatus {
        observed_generation: generation,
        replicas: previous.replicas,
        ready_replicas: previous.ready_replicas,
        conditions: finish(
            rs,
            [
                cond("Ready", false, "InvalidSpec", &message),
                cond(
                    "Progressing",
                    false,
                    "InvalidSpec",
                    "waiting for the spec to be fixed",
                ),
                cond("Degraded", true, "InvalidSpec", &message),
            ],
            generation,
            now,
        ),
    }
}

/// Whether `current` already says what `desired` says. Transition times are ignored:
/// they only move when a condition's status does.
pub fn is_current(
    current: Option<&ReplicatedServiceStatus>,
    desired: &ReplicatedServiceStatus,
) -> bool {
    let Some(current) = current else {
        return false;
    };
    let strip = |s: &ReplicatedServiceStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        s
    };
    strip(current) == strip(desired)
}

struct Cond {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

fn cond(type_: &'static str, status: bool, reason: &'static str, message: &str) -> Cond {
    Cond {
        type_,
        status,
        reason,
        message: message.to_owned(),
    }
}

/// Builds conditions, keeping the previous transition time of a condition whose status
/// did not change.
fn finish(
    rs: &ReplicatedService,
    conds: [Cond; 3],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let previous = rs
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
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
