//! The status of a ScatterGather: which shards a request can reach (at least one ready
//! leaf), whether the root serves, and the conditions and Events that say so.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::jiff::Timestamp;
use rigging_crds::{FieldErrors, ScatterGather, ScatterGatherStatus};

use super::desired::{leaves, root_name};
use crate::controller::conditions::{self, cond};
use crate::controller::rollouts::Rollout;
use crate::controller::{Applied, Note};

/// Status of a ScatterGather whose children are applied, from the children as the apply
/// returned them.
pub fn observed(sg: &ScatterGather, applied: &Applied, now: Timestamp) -> ScatterGatherStatus {
    let spec = &sg.spec;
    let generation = sg.metadata.generation;
    let set = leaves(sg);
    let shards: Vec<(String, Option<Rollout>)> = (0..spec.shards)
        .map(|i| {
            let name = set.shard_name(i);
            let rollout = applied
                .get::<StatefulSet>(&name)
                .map(Rollout::of_statefulset);
            (name, rollout)
        })
        .collect();
    let root = applied
        .get::<Deployment>(&root_name(sg))
        .map(Rollout::of_deployment);
    let seen = root.is_some() && shards.iter().all(|(_, r)| r.is_some());
    let unready: Vec<String> = shards
        .iter()
        .filter(|(_, r)| r.as_ref().is_none_or(|r| r.ready < 1))
        .map(|(name, _)| name.clone())
        .collect();
    let ready_shards = spec.shards - unready.len() as i32;
    let ready_roots = root.as_ref().map_or(0, |r| r.ready);
    let summary = format!(
        "{ready_shards}/{} shards have a ready leaf, {ready_roots}/{} roots ready",
        spec.shards, spec.root.replicas
    );
    let ready = if !seen {
        cond(
            "Ready",
            false,
            "Pending",
            "the leaves and roots have not been observed yet",
        )
    } else if ready_roots < 1 {
        cond("Ready", false, "RootNotReady", &summary)
    } else if !unready.is_empty() {
        cond("Ready", false, "ShardsNotReady", &summary)
    } else {
        cond("Ready", true, "ShardsReady", &summary)
    };
    let rolled_out = seen
        && shards
            .iter()
            .all(|(_, r)| r.as_ref().is_some_and(|r| r.rolled_out))
        && root.as_ref().is_some_and(|r| r.rolled_out);
    let progressing = if rolled_out {
        cond(
            "Progressing",
            false,
            "RolloutComplete",
            "every leaf and root pod runs the current template",
        )
    } else {
        cond(
            "Progressing",
            true,
            "RollingOut",
            "the leaves or roots are rolling out",
        )
    };
    let degraded = if seen && !unready.is_empty() {
        cond(
            "Degraded",
            true,
            "ShardsWithoutLeaf",
            &format!(
                "no ready leaf in {}: requests answer without them while minShards allows, with their coverage",
                unready.join(", ")
            ),
        )
    } else {
        cond(
            "Degraded",
            false,
            "Reconciled",
            "the spec is valid and its objects are applied",
        )
    };
    ScatterGatherStatus {
        observed_generation: generation,
        ready_shards: Some(ready_shards),
        unready_shards: if seen { unready } else { Vec::new() },
        ready_roots: Some(ready_roots),
        conditions: conditions::of(sg, [ready, progressing, degraded], now),
    }
}

/// Status of a ScatterGather whose spec is invalid: nothing is applied until it is fixed,
/// and the conditions say why.
pub fn invalid(sg: &ScatterGather, errors: &FieldErrors, now: Timestamp) -> ScatterGatherStatus {
    let generation = sg.metadata.generation;
    let previous = sg.status.clone().unwrap_or_default();
    ScatterGatherStatus {
        observed_generation: generation,
        conditions: conditions::of(sg, conditions::invalid(&errors.to_string()), now),
        ..previous
    }
}

/// A Warning when shards lose their last ready leaf, a Normal one when they have one
/// again.
pub fn events(sg: &ScatterGather, next: &ScatterGatherStatus) -> Vec<Note> {
    let Some(previous) = sg.status.as_ref() else {
        return Vec::new();
    };
    let lost: Vec<&str> = next
        .unready_shards
        .iter()
        .filter(|s| !previous.unready_shards.contains(s))
        .map(String::as_str)
        .collect();
    let back: Vec<&str> = previous
        .unready_shards
        .iter()
        .filter(|s| !next.unready_shards.contains(s))
        .map(String::as_str)
        .collect();
    let mut notes = Vec::new();
    if !lost.is_empty() {
        notes.push(Note {
            warning: true,
            reason: "ShardWithoutLeaf",
            message: format!(
                "no ready leaf in {}: answers are partial until one is ready",
                lost.join(", ")
            ),
        });
    }
    if !back.is_empty() {
        notes.push(Note {
            warning: false,
            reason: "ShardServing",
            message: format!("{} has a ready leaf again", back.join(", ")),
        });
    }
    notes
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;
    use crate::controller::RenderConfig;
    use crate::scatter_gather::desired::{self, tests::scatter_gather};

    /// The children as the API server returns them, with `ready[i]` leaves ready in shard
    /// `i` and every root ready.
    fn applied(sg: &ScatterGather, ready: &[i32]) -> Applied {
        let mut children = desired::desired(sg, &RenderConfig::default()).unwrap();
        for (sts, ready) in children.statefulsets.iter_mut().zip(ready) {
            let want = sts.spec.as_ref().unwrap().replicas.unwrap();
            sts.metadata.generation = Some(1);
            sts.status = Some(StatefulSetStatus {
                observed_generation: Some(1),
                replicas: want,
                ready_replicas: Some(*ready),
                updated_replicas: Some(want),
                ..StatefulSetStatus::default()
            });
        }
        children.root.metadata.generation = Some(1);
        children.root.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(2),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            updated_replicas: Some(2),
            ..DeploymentStatus::default()
        });
        Applied::new(children.into_vec())
    }

    fn condition<'a>(status: &'a ScatterGatherStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_shard_without_a_ready_leaf_is_named_degraded_and_announced() {
        let sg = scatter_gather("  merge: {sum: {}}\n");
        let now = Timestamp::now();
        let all = observed(&sg, &applied(&sg, &[2, 1, 2]), now);
        assert_eq!(all.ready_shards, Some(3));
        assert_eq!(condition(&all, "Ready").status, "True");
        assert_eq!(condition(&all, "Degraded").status, "False");

        let mut was = sg.clone();
        was.status = Some(all);
        let one_down = observed(&was, &applied(&was, &[2, 0, 2]), now);
        assert_eq!(one_down.ready_shards, Some(2));
        assert_eq!(one_down.unready_shards, ["search-1"]);
        assert_eq!(condition(&one_down, "Ready").reason, "ShardsNotReady");
        let degraded = condition(&one_down, "Degraded");
        assert_eq!(degraded.status, "True");
        assert!(
            degraded.message.contains("search-1"),
            "{}",
            degraded.message
        );
        let notes = events(&was, &one_down);
        assert!(
            notes[0].warning && notes[0].message.contains("search-1"),
            "{notes:?}"
        );

        was.status = Some(one_down);
        let back = observed(&was, &applied(&was, &[2, 1, 2]), now);
        let notes = events(&was, &back);
        assert_eq!(notes[0].reason, "ShardServing", "{notes:?}");
    }
}
