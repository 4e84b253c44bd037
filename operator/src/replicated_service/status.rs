//! The status a ReplicatedService should show, computed without IO from its Deployment as
//! applied.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, ReplicatedService, ReplicatedServiceStatus};

use crate::controller::conditions;
use crate::controller::conditions::{Cond, cond, finish};

/// Status of a ReplicatedService whose children are applied, given its Deployment as the
/// apply returned it (`None` if there is none to look at).
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
        conditions: conditions(rs, [ready, progressing, degraded], generation, now),
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
        conditions: conditions(rs, conditions::invalid(&message), generation, now),
    }
}

fn conditions(
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
    finish(previous, conds, generation, now)
}
