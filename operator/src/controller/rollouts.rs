//! The rollout budget: how many of the operator's Deployments and StatefulSets may be
//! rolling at once when it changes their pod templates.
//!
//! An upgrade of Rigging changes the sidecar image in every pod template the operator
//! writes; applied at once, every workload in the cluster would roll together. So a
//! template change is applied only while fewer than `--max-rollouts` workloads roll;
//! otherwise the child is left as it is (its other changes wait with it), the object is
//! reconciled again shortly, and an Event says it waits. Creating a workload is not a
//! rollout and never waits.
//!
//! What counts as rolling is read from the watch caches, as `kubectl rollout status`
//! reads it. A Deployment whose rollout passed its progress deadline
//! (`ProgressDeadlineExceeded`) counts no more: a workload that cannot roll must not hold
//! up every other. Nor does one being deleted: its pods go, and none replaces them.
//! Workloads this operator started rolling count from the moment it
//! applied them, before the cache shows them rolling, so that reconciles running at once
//! never overshoot the budget.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;

use super::ChildStores;
use super::children::ChildKind;

/// How far one StatefulSet or Deployment is: ready pods, and whether every pod runs the
/// current template.
pub struct Rollout {
    /// Pods asked for.
    pub want: i32,
    /// Pods ready.
    pub ready: i32,
    /// Whether every pod runs the current template and is ready.
    pub rolled_out: bool,
}

impl Rollout {
    /// How far `sts` is.
    pub fn of_statefulset(sts: &StatefulSet) -> Rollout {
        let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = sts.status.clone().unwrap_or_default();
        let ready = st.ready_replicas.unwrap_or(0);
        let current = st.observed_generation >= sts.metadata.generation;
        let revised = st.update_revision.is_none() || st.current_revision == st.update_revision;
        Rollout {
            want,
            ready,
            rolled_out: current
                && revised
                && st.updated_replicas.unwrap_or(0) >= want
                && st.replicas <= want
                && ready >= want,
        }
    }

    /// How far `d` is.
    pub fn of_deployment(d: &Deployment) -> Rollout {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        let ready = st.ready_replicas.unwrap_or(0);
        let current = st.observed_generation >= d.metadata.generation;
        Rollout {
            want,
            ready,
            rolled_out: current
                && st.updated_replicas.unwrap_or(0) >= want
                && st.replicas.unwrap_or(0) <= want
                && st.available_replicas.unwrap_or(0) >= want,
        }
    }
}

/// Rollouts at once unless `--max-rollouts` says.
pub const DEFAULT_MAX_ROLLOUTS: u32 = 10;

/// How soon an object with a held rollout is reconciled again.
pub const RETRY: Duration = Duration::from_secs(5);

/// How long a rollout this operator started counts before the cache shows it: the watch
/// event of the applied workload comes well within this.
const START_GRACE: Duration = Duration::from_secs(30);

/// A workload kind whose pod template changes start a rollout.
pub trait Workload: ResourceExt {
    /// Its pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// Whether it is rolling now, by its status.
    fn rolling(&self) -> bool;
}

impl Workload for Deployment {
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn rolling(&self) -> bool {
        let (Some(spec), Some(status)) = (&self.spec, &self.status) else {
            return true;
        };
        let failed = status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        if failed {
            return false;
        }
        let wanted = spec.replicas.unwrap_or(1);
        let updated = status.updated_replicas.unwrap_or(0);
        status.observed_generation < self.metadata.generation
            || updated < wanted
            || status.replicas.unwrap_or(0) > updated
            || status.available_replicas.unwrap_or(0) < updated
    }
}

impl Workload for StatefulSet {
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn rolling(&self) -> bool {
        let (Some(spec), Some(status)) = (&self.spec, &self.status) else {
            return true;
        };
        let wanted = spec.replicas.unwrap_or(1);
        status.observed_generation < self.metadata.generation
            || status.updated_replicas.unwrap_or(0) < wanted
            || status.update_revision != status.current_revision
            || status.ready_replicas.unwrap_or(0) < wanted
    }
}

/// Whether applying `desired` over `live` changes its pod template.
pub fn changes_template<W: Workload>(live: &W, desired: &W) -> bool {
    let json = |w: &W| serde_json::to_value(w.template()).unwrap_or_default();
    !crate::drift::holds(&json(live), &json(desired))
}

/// The key of a workload in the budget.
pub fn key<W: Workload>(kind: &str, workload: &W) -> String {
    format!(
        "{kind}/{}/{}",
        workload.namespace().unwrap_or_default(),
        workload.name_any()
    )
}

/// What the cache shows of one workload: its generation, and whether it rolls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// [`Workload::rolling`].
    pub rolling: bool,
}

/// Every cached workload, by [`key`].
pub fn workloads(stores: &ChildStores) -> HashMap<String, Seen> {
    fn seen<W: Workload>(kind: &str, w: &W) -> (String, Seen) {
        let seen = Seen {
            generation: w.meta().generation,
            rolling: w.meta().deletion_timestamp.is_none() && w.rolling(),
        };
        (key(kind, w), seen)
    }
    let deployments = stores.deployments.state();
    let statefulsets = stores.statefulsets.state();
    deployments
        .iter()
        .map(|d| seen(Deployment::KIND, &**d))
        .chain(statefulsets.iter().map(|s| seen(StatefulSet::KIND, &**s)))
        .collect()
}

/// What the budget says of one rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Go ahead.
    Granted,
    /// Wait: `in_flight` workloads roll. `first` when it did not wait before.
    Held {
        /// Workloads rolling now.
        in_flight: usize,
        /// Whether this is the first time it is held since it last rolled.
        first: bool,
    },
}

/// The rollouts this operator started and the workloads it holds back.
#[derive(Debug, Default)]
pub struct Budget {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When each rollout started, and the workload's generation just before.
    started: HashMap<String, (Instant, Option<i64>)>,
    held: HashSet<String>,
}

impl Budget {
    /// Whether the workload `key`, now at `generation`, may start rolling, with the cache
    /// showing `seen` and at most `max` rolling at once. One already rolling may change
    /// again.
    pub fn claim(
        &self,
        key: &str,
        generation: Option<i64>,
        seen: &HashMap<String, Seen>,
        max: usize,
    ) -> Slot {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // A rollout started here counts until the cache shows the change (a newer
        // generation), from then on as the cache says.
        state.started.retain(|k, (at, before)| {
            now.duration_since(*at) < START_GRACE
                && seen.get(k).is_none_or(|s| s.generation <= *before)
        });
        let rolling = |k: &str| seen.get(k).is_some_and(|s| s.rolling);
        let in_flight = seen.values().filter(|s| s.rolling).count()
            + state.started.keys().filter(|k| !rolling(k)).count();
        if rolling(key) || state.started.contains_key(key) || in_flight < max {
            state.started.insert(key.to_owned(), (now, generation));
            state.held.remove(key);
            return Slot::Granted;
        }
        let first = state.held.insert(key.to_owned());
        Slot::Held { in_flight, first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(entries: &[(&str, i64, bool)]) -> HashMap<String, Seen> {
        entries
            .iter()
            .map(|(k, generation, rolling)| {
                let seen = Seen {
                    generation: Some(*generation),
                    rolling: *rolling,
                };
                ((*k).to_owned(), seen)
            })
            .collect()
    }

    #[test]
    fn rollouts_started_count_until_the_cache_shows_them_and_none_overshoots() {
        let budget = Budget::default();
        let before = seen(&[("a", 1, false), ("b", 1, false), ("c", 1, false)]);
        assert_eq!(budget.claim("a", Some(1), &before, 2), Slot::Granted);
        assert_eq!(budget.claim("b", Some(1), &before, 2), Slot::Granted);
        let held = Slot::Held {
            in_flight: 2,
            first: true,
        };
        assert_eq!(budget.claim("c", Some(1), &before, 2), held);
        assert_eq!(
            budget.claim("c", Some(1), &before, 2),
            Slot::Held {
                in_flight: 2,
                first: false
            },
            "said once per wait"
        );
        // A workload already rolling changes again without a new slot.
        assert_eq!(budget.claim("a", Some(1), &before, 2), Slot::Granted);
        // The cache shows both rolling at their new generation: they count once.
        let rolling = seen(&[("a", 2, true), ("b", 2, true), ("c", 1, false)]);
        assert!(matches!(
            budget.claim("c", Some(1), &rolling, 2),
            Slot::Held { in_flight: 2, .. }
        ));
        // b is done: its slot is free.
        let done = seen(&[("a", 2, true), ("b", 2, false), ("c", 1, false)]);
        assert_eq!(budget.claim("c", Some(1), &done, 2), Slot::Granted);
    }

    #[test]
    fn a_workload_being_deleted_holds_no_slot() {
        use crate::controller::Child;
        let deployment = |name: &str, deleted: bool| -> Child {
            let mut d: Deployment = serde_norway::from_str(
                "metadata: {namespace: shop, generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 3, updatedReplicas: 1, availableReplicas: 2}",
            )
            .unwrap();
            d.metadata.name = Some(name.into());
            if deleted {
                d.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ));
            }
            Child::Deployment(d)
        };
        let stores =
            ChildStores::prefilled([deployment("rolling", false), deployment("going", true)]);
        let seen = workloads(&stores);
        assert!(seen["Deployment/shop/rolling"].rolling);
        assert!(!seen["Deployment/shop/going"].rolling);
    }

    #[test]
    fn a_deployment_rolls_until_every_replica_is_updated_and_available_or_its_deadline_passed() {
        let deployment = |yaml: &str| -> Deployment { serde_norway::from_str(yaml).unwrap() };
        let done = deployment(
            "metadata: {generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 2, updatedReplicas: 2, availableReplicas: 2}",
        );
        assert!(!done.rolling());
        let old_pods_left = deployment(
            "metadata: {generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 3, updatedReplicas: 2, availableReplicas: 2}",
        );
        assert!(old_pods_left.rolling());
        let unseen = deployment(
            "metadata: {generation: 3}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 2, updatedReplicas: 2, availableReplicas: 2}",
        );
        assert!(unseen.rolling());
        let stuck = deployment(
            "metadata: {generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status:
  observedGeneration: 2
  replicas: 3
  updatedReplicas: 1
  availableReplicas: 2
  conditions: [{type: Progressing, status: 'False', reason: ProgressDeadlineExceeded}]",
        );
        assert!(!stuck.rolling(), "a failed rollout holds no slot");
    }
}
