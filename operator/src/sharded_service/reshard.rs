//! Resharding with no request sent to a shard that cannot answer it, computed without IO
//! from what the watch caches hold and what the routers answered.
//!
//! - **A shard joins** the ring only once it can serve: the StatefulSet gets its pods at
//!   once, and the ring names the new shards once all the pods of the StatefulSet (or of
//!   the new shards' own StatefulSets) are ready. Until then the routers keep the ring
//!   they have, and no key is sent to a pod that is still starting.
//! - **A shard leaves** the ring first. Its pods keep running until every router (mode
//!   `Router`) or every client pod's ambassador (mode `Ambassador`) reports, on its admin
//!   port, that the ring it serves is the one the operator wrote ([`ring_version`]): the
//!   kubelet brings a new ConfigMap to the pods in its own time, and a router that has not
//!   loaded the ring yet still sends keys to the leaving shard. A router that cannot be
//!   asked (starting, down, too slow) holds the removal until it answers: it may still
//!   serve the old ring. The keys on a removed shard are not copied anywhere.
//!
//! The members are always the first shards, `<name>-0` up to the ring's size, so a ring
//! and a set of pods are each described by a count.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use rigging_crds::ShardedService;
use rigging_crds::sharded_service::RouterMode;
use rigging_crds::sidecar::shard::ring::ServerSpec;
use rigging_crds::sidecar::shard::{RING_PATH, RingReport, ShardConfig};

use super::desired::{Component, selector_labels, shard_name};
use crate::controller::{Answers, Inquiry, Observed};
use crate::sidecars;

/// The admin port of the sharding ambassador, by the name its container gives it.
pub const ADMIN_PORT_NAME: &str = "shard-admin";

/// What a reshard depends on besides the spec, as the watch caches show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// The members of the ring ConfigMap; `None` before there is one.
    pub ring: Option<i32>,
    /// The shards that have pods (or are to have them): the StatefulSet's `replicas`, or
    /// the number of shard StatefulSets; `None` before there are any.
    pub running: Option<i32>,
    /// The first `ready` shards have every pod ready.
    pub ready: i32,
}

/// What to apply at this step: the ring names shards `0..ring`, and shards `0..shards`
/// have pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The ring's size.
    pub ring: i32,
    /// The shards with pods.
    pub shards: i32,
}

impl Plan {
    /// Nothing in between: the ring and the pods as the spec says (what `render` prints,
    /// and what a new ShardedService starts with).
    pub fn settled(ss: &ShardedService) -> Plan {
        Plan {
            ring: ss.spec.shards,
            shards: ss.spec.shards,
        }
    }
}

/// The members of a ring file: the name each server is hashed as.
pub fn ring_members(file: &str) -> Option<Vec<String>> {
    let config: ShardConfig = serde_norway::from_str(file).ok()?;
    Some(
        config
            .servers
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.parse::<ServerSpec>().ok())
            .map(|s| s.ring_name())
            .collect(),
    )
}

/// The ring file a ring ConfigMap holds.
pub fn ring_file(config_map: &ConfigMap) -> Option<&str> {
    config_map
        .data
        .as_ref()?
        .get(sidecars::RING_KEY)
        .map(String::as_str)
}

/// Whether every pod `sts` asks for exists, runs its current spec's count and is ready,
/// and no other pod of it is left.
pub fn all_pods_ready(sts: &StatefulSet) -> bool {
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = sts.status.as_ref() else {
        return false;
    };
    status.observed_generation >= sts.metadata.generation
        && status.ready_replicas.unwrap_or(0) >= want
        && status.replicas <= want
}

/// The shard number of a shard StatefulSet named `<name>-<shard>`.
fn shard_of(ss: &ShardedService, sts_name: &str) -> Option<i32> {
    sts_name
        .strip_prefix(&ss.name_any())?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// What the caches hold of `ss`'s ring and shards.
pub fn observe(ss: &ShardedService, observed: &Observed) -> Observation {
    let ring_name = sidecars::ring_config_map(&ss.name_any());
    let ring = observed
        .owned::<ConfigMap>()
        .iter()
        .find(|c| c.name_any() == ring_name)
        .and_then(|c| ring_file(c).and_then(ring_members))
        .map(|m| i32::try_from(m.len()).unwrap_or(i32::MAX));
    let statefulsets = observed.owned::<StatefulSet>();
    let (running, ready) = if ss.spec.replicas_per_shard == 1 {
        let sts = statefulsets.iter().find(|s| s.name_any() == ss.name_any());
        let running = sts.and_then(|s| s.spec.as_ref()?.replicas);
        let ready = match sts {
            Some(s) if all_pods_ready(s) => running.unwrap_or(0),
            _ => 0,
        };
        (running, ready)
    } else {
        let by_shard: BTreeMap<i32, &StatefulSet> = statefulsets
            .iter()
            .filter_map(|s| Some((shard_of(ss, &s.name_any())?, &**s)))
            .collect();
        let running = by_shard.keys().next_back().map(|last| last + 1);
        let ready = (0..)
            .take_while(|i| by_shard.get(i).is_some_and(|s| all_pods_ready(s)))
            .count();
        (running, i32::try_from(ready).unwrap_or(i32::MAX))
    };
    Observation {
        ring,
        running,
        ready,
    }
}

/// The ring's size at this step: the spec's count when it shrinks or starts, and when it
/// grows, up to the shards that are ready (never fewer than it has).
pub fn ring_size(ss: &ShardedService, observation: &Observation) -> i32 {
    let want = ss.spec.shards;
    match observation.ring {
        Some(has) if want > has => has.max(observation.ready.min(want)),
        _ => want,
    }
}

/// The shards that keep their pods at this step: the spec's count, or, while shards
/// leave, every shard that has pods until every router answered that it serves the ring
/// of version `version`.
pub fn shard_count(
    ss: &ShardedService,
    observation: &Observation,
    answers: Option<&Answers>,
    version: &str,
) -> i32 {
    let want = ss.spec.shards;
    match observation.running {
        Some(running) if running > want && !every_router_serves(answers, version) => running,
        _ => want,
    }
}

/// Whether `answers` came and every pod in them serves the ring of `version`.
fn every_router_serves(answers: Option<&Answers>, version: &str) -> bool {
    answers.is_some_and(|a| a.0.iter().all(|a| serves(&a.reply, version).is_ok()))
}

/// Whether a pod's reply says it serves the ring of `version`, or what it said instead.
pub fn serves(reply: &Result<String, String>, version: &str) -> Result<(), String> {
    let body = reply
        .as_ref()
        .map_err(|why| format!("did not answer ({why})"))?;
    let report: RingReport = serde_json::from_str(body)
        .map_err(|e| format!("did not answer with a ring ({e}): {body:.80}"))?;
    match report.version.as_deref() {
        Some(v) if v == version => Ok(()),
        Some(v) => Err(format!(
            "serves ring version {v} ({})",
            report.members.join(", ")
        )),
        None => Err(format!(
            "serves servers from flags, not the ring file ({})",
            report.members.join(", ")
        )),
    }
}

/// The labels of the pods that route keys to the shards: the routers, or in mode
/// `Ambassador` the client pods whose ambassador reads this ring. (The NetworkPolicy lets
/// exactly these reach the shards.)
pub fn clients(ss: &ShardedService) -> BTreeMap<String, String> {
    match ss.spec.router.mode {
        RouterMode::Router => selector_labels(ss, Component::Router),
        RouterMode::Ambassador => {
            BTreeMap::from([(sidecars::SHARD_CLIENT_LABEL.to_owned(), ss.name_any())])
        }
    }
}

/// Whom to ask before this step: while shards with pods are beyond the spec's count,
/// every pod that routes keys, for the ring it serves.
pub fn inquiry(ss: &ShardedService, observed: &Observed) -> Option<Inquiry> {
    let running = observe(ss, observed).running?;
    (running > ss.spec.shards).then(|| Inquiry {
        selector: clients(ss),
        port: ADMIN_PORT_NAME.to_owned(),
        path: RING_PATH.to_owned(),
    })
}

/// The names of shards `from..to`.
pub fn names(ss: &ShardedService, from: i32, to: i32) -> Vec<String> {
    (from..to).map(|i| shard_name(ss, i)).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSetStatus;

    use super::*;
    use crate::controller::{ChildStores, PodAnswer};
    use crate::sharded_service::desired;

    fn sharded(shards: i32, replicas_per_shard: i32, mode: &str) -> ShardedService {
        serde_norway::from_str(&format!(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: ShardedService
metadata: {{name: cache, namespace: shop, uid: u-1, generation: 3}}
spec:
  shards: {shards}
  replicasPerShard: {replicas_per_shard}
  protocol: redis
  port: 6379
  router: {{mode: {mode}}}
  template:
    spec:
      containers:
        - {{name: redis, image: redis:7, readinessProbe: {{tcpSocket: {{port: 6379}}}}}}
"#
        ))
        .unwrap()
    }

    /// A StatefulSet as its controller reports it: `replicas` wanted, `pods` of them
    /// existing and `ready` ready, for its current generation.
    fn with_status(mut sts: StatefulSet, replicas: i32, pods: i32, ready: i32) -> StatefulSet {
        sts.spec.as_mut().unwrap().replicas = Some(replicas);
        sts.metadata.generation = Some(2);
        sts.status = Some(StatefulSetStatus {
            observed_generation: Some(2),
            replicas: pods,
            ready_replicas: Some(ready),
            ..StatefulSetStatus::default()
        });
        sts
    }

    /// The caches once the ring of `ring` was applied, with `statefulsets` as their
    /// controller reports them.
    fn caches(ring: &ShardedService, statefulsets: Vec<StatefulSet>) -> ChildStores {
        let children = desired::desired(ring, &Default::default()).unwrap();
        let mut all = vec![crate::controller::Child::ConfigMap(children.ring)];
        all.extend(
            statefulsets
                .into_iter()
                .map(crate::controller::Child::StatefulSet),
        );
        ChildStores::prefilled(all)
    }

    fn one_statefulset(ss: &ShardedService) -> StatefulSet {
        desired::desired(ss, &Default::default())
            .unwrap()
            .statefulsets
            .remove(0)
    }

    fn observation(ss: &ShardedService, stores: &ChildStores) -> Observation {
        observe(ss, &Observed::cached(stores, "shop", "u-1"))
    }

    fn report(version: &str, members: &[&str]) -> Result<String, String> {
        Ok(serde_json::to_string(&RingReport {
            version: Some(version.into()),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        })
        .unwrap())
    }

    fn answers(replies: Vec<Result<String, String>>) -> Answers {
        Answers(
            replies
                .into_iter()
                .enumerate()
                .map(|(i, reply)| PodAnswer {
                    pod: format!("cache-router-{i}"),
                    labels: Default::default(),
                    reply,
                })
                .collect(),
        )
    }

    #[test]
    fn a_new_sharded_service_gets_its_ring_and_pods_at_once() {
        let ss = sharded(3, 1, "Router");
        let seen = observe(&ss, &Observed::nothing());
        assert_eq!(seen, Observation::default());
        assert_eq!(ring_size(&ss, &seen), 3);
        assert_eq!(shard_count(&ss, &seen, None, "v"), 3);
        assert_eq!(inquiry(&ss, &Observed::nothing()), None);
    }

    #[test]
    fn a_new_shard_joins_the_ring_only_once_every_shard_pod_is_ready() {
        let three = sharded(3, 1, "Router");
        let four = sharded(4, 1, "Router");
        // The StatefulSet asks for a fourth pod, which is starting.
        let starting = caches(&three, vec![with_status(one_statefulset(&four), 4, 4, 3)]);
        let seen = observation(&four, &starting);
        assert_eq!(
            seen,
            Observation {
                ring: Some(3),
                running: Some(4),
                ready: 0
            }
        );
        assert_eq!(ring_size(&four, &seen), 3, "the ring waits");
        assert_eq!(shard_count(&four, &seen, None, "v"), 4, "the pod starts");
        assert_eq!(
            inquiry(&four, &Observed::cached(&starting, "shop", "u-1")),
            None
        );
        // The cache still shows the StatefulSet of three, all ready: not the fourth.
        let stale = caches(&three, vec![with_status(one_statefulset(&three), 3, 3, 3)]);
        assert_eq!(ring_size(&four, &observation(&four, &stale)), 3);
        // Every pod ready: the ring names the new shard.
        let ready = caches(&three, vec![with_status(one_statefulset(&four), 4, 4, 4)]);
        assert_eq!(ring_size(&four, &observation(&four, &ready)), 4);
        // Four ready pods of five (one leaving, one restarting) tell nothing of which.
        let five = sharded(5, 1, "Router");
        let mixed = caches(&three, vec![with_status(one_statefulset(&five), 5, 5, 4)]);
        assert_eq!(ring_size(&four, &observation(&four, &mixed)), 3);
    }

    #[test]
    fn replicated_shards_join_as_far_as_their_own_statefulsets_are_ready() {
        let two = sharded(2, 2, "Router");
        let four = sharded(4, 2, "Router");
        let sts = desired::desired(&four, &Default::default())
            .unwrap()
            .statefulsets;
        let stores = caches(
            &two,
            vec![
                with_status(sts[0].clone(), 2, 2, 2),
                with_status(sts[1].clone(), 2, 2, 2),
                with_status(sts[2].clone(), 2, 2, 2),
                with_status(sts[3].clone(), 2, 2, 1),
            ],
        );
        let seen = observation(&four, &stores);
        assert_eq!((seen.ring, seen.running, seen.ready), (Some(2), Some(4), 3));
        assert_eq!(ring_size(&four, &seen), 3, "shard 2 joins, shard 3 waits");
    }

    #[test]
    fn a_leaving_shard_leaves_the_ring_at_once_and_keeps_its_pod_until_every_router_serves_it() {
        let four = sharded(4, 1, "Router");
        let three = sharded(3, 1, "Router");
        let stores = caches(&four, vec![with_status(one_statefulset(&four), 4, 4, 4)]);
        let observed = Observed::cached(&stores, "shop", "u-1");
        let seen = observation(&three, &stores);
        assert_eq!(ring_size(&three, &seen), 3, "the ring shrinks first");
        let asked = inquiry(&three, &observed).expect("the routers are asked");
        assert_eq!(asked.selector, selector_labels(&three, Component::Router));
        assert_eq!(
            (asked.port.as_str(), asked.path.as_str()),
            ("shard-admin", "/ring")
        );
        let new = "aaaaaaaaaaaa";
        let cases = [
            (None, 4, "not asked"),
            (
                Some(answers(vec![
                    report(new, &["cache-0", "cache-1", "cache-2"]),
                    report(
                        "bbbbbbbbbbbb",
                        &["cache-0", "cache-1", "cache-2", "cache-3"],
                    ),
                ])),
                4,
                "one router still serves the old ring",
            ),
            (
                Some(answers(vec![
                    report(new, &["cache-0", "cache-1", "cache-2"]),
                    Err("connect: connection refused".into()),
                ])),
                4,
                "a router that does not answer may serve the old ring",
            ),
            (
                Some(answers(vec![Ok("<html>".into())])),
                4,
                "an answer that is not a ring",
            ),
            (
                Some(answers(vec![
                    report(new, &["cache-0", "cache-1", "cache-2"]),
                    report(new, &["cache-0", "cache-1", "cache-2"]),
                ])),
                3,
                "every router serves the new ring",
            ),
            (Some(answers(vec![])), 3, "no router runs"),
        ];
        for (answers, want, why) in cases {
            assert_eq!(
                shard_count(&three, &seen, answers.as_ref(), new),
                want,
                "{why}"
            );
        }
        // Once the StatefulSet shrank, nothing is asked.
        let shrunk = caches(&three, vec![with_status(one_statefulset(&three), 3, 3, 3)]);
        assert_eq!(
            inquiry(&three, &Observed::cached(&shrunk, "shop", "u-1")),
            None
        );
    }

    #[test]
    fn growing_back_while_a_shard_leaves_keeps_its_pod_and_puts_it_back_in_the_ring() {
        // 4 → 3 is waiting for the routers; the spec says 4 again.
        let three = sharded(3, 1, "Router");
        let four = sharded(4, 1, "Router");
        let stores = caches(&three, vec![with_status(one_statefulset(&four), 4, 4, 4)]);
        let seen = observation(&four, &stores);
        assert_eq!(ring_size(&four, &seen), 4, "its pod is ready: back at once");
        assert_eq!(shard_count(&four, &seen, None, "v"), 4);
        assert_eq!(
            inquiry(&four, &Observed::cached(&stores, "shop", "u-1")),
            None
        );
        // 4 → 2 while 4 → 3 waits: the ring shrinks to 2, both pods wait.
        let two = sharded(2, 1, "Router");
        let seen = observation(&two, &stores);
        assert_eq!(ring_size(&two, &seen), 2);
        assert_eq!(shard_count(&two, &seen, None, "v"), 4);
    }

    #[test]
    fn in_ambassador_mode_the_client_pods_are_asked() {
        let four = sharded(4, 1, "Ambassador");
        let three = sharded(3, 1, "Ambassador");
        let stores = caches(&four, vec![with_status(one_statefulset(&four), 4, 4, 4)]);
        let asked = inquiry(&three, &Observed::cached(&stores, "shop", "u-1")).unwrap();
        assert_eq!(
            asked.selector,
            BTreeMap::from([("rigging.dev/shard-client".to_owned(), "cache".to_owned())])
        );
    }

    #[test]
    fn what_a_router_serves_is_said_in_words() {
        assert_eq!(serves(&report("v1", &["a"]), "v1"), Ok(()));
        assert_eq!(
            serves(&report("v0", &["a", "b"]), "v1"),
            Err("serves ring version v0 (a, b)".into())
        );
        assert_eq!(
            serves(&Err("no pod IP yet".into()), "v1"),
            Err("did not answer (no pod IP yet)".into())
        );
        let flags = Ok(r#"{"members":["10.0.0.1:6379"]}"#.to_owned());
        assert_eq!(
            serves(&flags, "v1"),
            Err("serves servers from flags, not the ring file (10.0.0.1:6379)".into())
        );
    }
}
