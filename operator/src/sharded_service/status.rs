//! The status a ShardedService should show, computed without IO from its children as
//! applied and what the routers answered: shards and routers ready, the ring's members and
//! version, the shards joining or leaving it and what they wait for, and after a change of
//! members the share of the key space that moved.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rigging_crds::sharded_service::RouterMode;
use rigging_crds::sidecar::shard::ring::{ServerSpec, moved_share};
use rigging_crds::{FieldErrors, ShardedService, ShardedServiceStatus};

use super::desired::{ring_version, router_name, shard_name, statefulset_names};
use super::reshard;
use crate::controller::conditions;
use crate::controller::conditions::{Cond, cond};
use crate::controller::rollouts::Rollout;
use crate::controller::{Answers, Applied, Note};
use crate::sidecars;

/// How soon a ShardedService whose shards wait to leave is looked at again: no watch event
/// says that a router loaded a new ring, so the routers are asked again this often.
pub const LEAVING_RECHECK: Duration = Duration::from_secs(5);

/// What the ring ConfigMap as applied says.
struct Ring {
    version: String,
    members: Vec<String>,
}

fn applied_ring(ss: &ShardedService, applied: &Applied) -> Option<Ring> {
    let name = sidecars::ring_config_map(&ss.name_any());
    let file = reshard::ring_file(applied.get::<ConfigMap>(&name)?)?;
    // The operator wrote this file; if it no longer parses, the members are unknown.
    Some(Ring {
        version: ring_version(file),
        members: reshard::ring_members(file)?,
    })
}

/// The shards beyond the spec's count whose pods are still applied: those leaving.
fn leaving(ss: &ShardedService, applied: &Applied) -> Vec<String> {
    let want = ss.spec.shards;
    if ss.spec.replicas_per_shard == 1 {
        let running = applied
            .get::<StatefulSet>(&ss.name_any())
            .and_then(|s| s.spec.as_ref()?.replicas)
            .unwrap_or(want);
        reshard::names(ss, want, running)
    } else {
        (want..)
            .map(|i| shard_name(ss, i))
            .take_while(|name| applied.get::<StatefulSet>(name).is_some())
            .collect()
    }
}

/// What the pods that route keys are called in messages.
fn routers(ss: &ShardedService) -> &'static str {
    match ss.spec.router.mode {
        RouterMode::Router => "router",
        RouterMode::Ambassador => "client pod's ambassador",
    }
}

/// The Progressing condition while shards join or leave the ring, if they do.
fn resharding(
    ss: &ShardedService,
    ring: Option<&Ring>,
    leaving: &[String],
    ready_shards: i32,
    answers: Option<&Answers>,
) -> Option<Cond> {
    let routers = routers(ss);
    if !leaving.is_empty() {
        let version = ring.map_or("?", |r| r.version.as_str());
        let waiting = match answers {
            None => format!("no {routers} has been asked yet"),
            Some(answers) => {
                let lagging: Vec<String> = answers
                    .0
                    .iter()
                    .filter_map(|a| {
                        let why = reshard::serves(&a.reply, version).err()?;
                        Some(format!("{} {why}", a.pod))
                    })
                    .collect();
                if lagging.is_empty() {
                    format!("every {routers} serves it")
                } else {
                    lagging.join("; ")
                }
            }
        };
        let message = format!(
            "the ring no longer names {} (version {version}); its pods are removed once every {routers} serves that version: {waiting}",
            leaving.join(", ")
        );
        return Some(cond("Progressing", true, "ShardsLeaving", &message));
    }
    let members = i32::try_from(ring?.members.len()).unwrap_or(i32::MAX);
    (members < ss.spec.shards).then(|| {
        let message = format!(
            "the ring names {} once every shard pod is ready ({ready_shards}/{} shards ready)",
            reshard::names(ss, members, ss.spec.shards).join(", "),
            ss.spec.shards
        );
        cond("Progressing", true, "ShardsJoining", &message)
    })
}

/// The ring members as servers of weight 1: all the continuum depends on.
fn as_servers(members: &[String]) -> Vec<ServerSpec> {
    members
        .iter()
        .map(|name| ServerSpec {
            host: name.clone(),
            port: 1,
            weight: 1,
            name: Some(name.clone()),
        })
        .collect()
}

/// Status of a ShardedService whose children are applied, from the children as the apply
/// returned them and what the routers answered, when they were asked.
pub fn observed(
    ss: &ShardedService,
    applied: &Applied,
    answers: Option<&Answers>,
    now: Timestamp,
) -> ShardedServiceStatus {
    let spec = &ss.spec;
    let generation = ss.metadata.generation;
    let previous = ss.status.clone().unwrap_or_default();
    let statefulsets: Vec<Option<Rollout>> = statefulset_names(ss)
        .iter()
        .map(|name| {
            applied
                .get::<StatefulSet>(name)
                .map(Rollout::of_statefulset)
        })
        .collect();
    let seen = statefulsets.iter().all(Option::is_some);
    let statefulsets: Vec<Rollout> = statefulsets.into_iter().flatten().collect();
    // One pod per shard, or one StatefulSet per shard whose pods must all be ready.
    let ready_shards = if spec.replicas_per_shard == 1 {
        statefulsets.first().map_or(0, |s| s.ready.min(spec.shards))
    } else {
        statefulsets.iter().filter(|s| s.ready >= s.want).count() as i32
    };
    let router = match spec.router.mode {
        RouterMode::Router => Some(
            applied
                .get::<Deployment>(&router_name(ss))
                .map(Rollout::of_deployment),
        ),
        RouterMode::Ambassador => None,
    };
    let shards_ready = seen && ready_shards >= spec.shards;
    let routers_ready = match &router {
        None => true,
        Some(None) => false,
        Some(Some(r)) => r.ready >= r.want,
    };
    let mut summary = format!("{ready_shards}/{} shards ready", spec.shards);
    if let Some(Some(r)) = &router {
        summary.push_str(&format!(", {}/{} routers ready", r.ready, r.want));
    }
    let ready = if !seen || router.as_ref().is_some_and(Option::is_none) {
        cond(
            "Ready",
            false,
            "Pending",
            "the shards and routers have not been observed yet",
        )
    } else if !shards_ready {
        cond("Ready", false, "ShardsNotReady", &summary)
    } else if !routers_ready {
        cond("Ready", false, "RouterNotReady", &summary)
    } else {
        cond("Ready", true, "ShardsReady", &summary)
    };
    let rolled_out = seen
        && statefulsets.iter().all(|s| s.rolled_out)
        && router
            .as_ref()
            .is_none_or(|r| r.as_ref().is_some_and(|r| r.rolled_out));
    let ring = applied_ring(ss, applied);
    let leaving = leaving(ss, applied);
    let progressing =
        if let Some(resharding) = resharding(ss, ring.as_ref(), &leaving, ready_shards, answers) {
            resharding
        } else if rolled_out {
            cond(
                "Progressing",
                false,
                "RolloutComplete",
                "every shard and router pod runs the current template",
            )
        } else {
            cond(
                "Progressing",
                true,
                "RollingOut",
                "the shards or routers are rolling out",
            )
        };
    let degraded = cond(
        "Degraded",
        false,
        "Reconciled",
        "the spec is valid and its objects are applied",
    );
    let members = ring
        .as_ref()
        .map_or(previous.members.clone(), |r| r.members.clone());
    // Measured against the members the status showed before: a first ring moved nothing
    // anywhere, and an unchanged one keeps the share of its last change.
    let moved_key_share = if previous.members.is_empty() || previous.members == members {
        previous.moved_key_share
    } else {
        Some(moved_share(
            &as_servers(&previous.members),
            &as_servers(&members),
        ))
    };
    ShardedServiceStatus {
        observed_generation: generation,
        ready_shards: Some(ready_shards),
        members,
        leaving_shards: leaving,
        ring_version: ring.map(|r| r.version).or(previous.ring_version),
        moved_key_share,
        conditions: conditions::of(ss, [ready, progressing, degraded], now),
    }
}

/// Status of a ShardedService whose spec is invalid: nothing is applied until it is fixed
/// (the ring in service stays as it was), and the conditions say why.
pub fn invalid(ss: &ShardedService, errors: &FieldErrors, now: Timestamp) -> ShardedServiceStatus {
    let generation = ss.metadata.generation;
    let message = errors.to_string();
    let previous = ss.status.clone().unwrap_or_default();
    ShardedServiceStatus {
        observed_generation: generation,
        conditions: conditions::of(ss, conditions::invalid(&message), now),
        ..previous
    }
}

/// Normal Events when the ring changes (its versions, its members, and how much of the
/// key space moved), when shards leave it and wait for the routers, and when their pods
/// are removed.
pub fn events(ss: &ShardedService, next: &ShardedServiceStatus) -> Vec<Note> {
    let Some(previous) = ss.status.as_ref() else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    if let (Some(from), Some(to)) = (&previous.ring_version, &next.ring_version)
        && from != to
    {
        let moved = if previous.members == next.members {
            "the same members, so no key moved".to_owned()
        } else {
            let share = next.moved_key_share.unwrap_or_default();
            format!(
                "{} → {} members, {:.1}% of the key space moved to another shard",
                previous.members.len(),
                next.members.len(),
                share * 100.0
            )
        };
        notes.push(Note {
            warning: false,
            reason: "RingChanged",
            message: format!("the ring changed from version {from} to {to}: {moved}"),
        });
    }
    let version = next.ring_version.as_deref().unwrap_or("?");
    let routers = routers(ss);
    let started: Vec<&str> = next
        .leaving_shards
        .iter()
        .filter(|s| !previous.leaving_shards.contains(s))
        .map(String::as_str)
        .collect();
    if !started.is_empty() {
        notes.push(Note {
            warning: false,
            reason: "ShardsLeaving",
            message: format!(
                "the ring no longer names {} (version {version}); its pods are removed once every {routers} serves that version",
                started.join(", ")
            ),
        });
    }
    let removed: Vec<&str> = previous
        .leaving_shards
        .iter()
        .filter(|s| !next.leaving_shards.contains(s) && !next.members.contains(s))
        .map(String::as_str)
        .collect();
    if !removed.is_empty() {
        notes.push(Note {
            warning: false,
            reason: "ShardsRemoved",
            message: format!(
                "{} removed: every {routers} serves ring version {version}, which does not name it; its keys were not copied to another shard",
                removed.join(", ")
            ),
        });
    }
    notes
}

/// While shards wait to leave, soon: the routers are asked again.
pub fn requeue_after(status: &ShardedServiceStatus) -> Option<Duration> {
    (!status.leaving_shards.is_empty()).then_some(LEAVING_RECHECK)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;
    use crate::controller::{Child, RenderConfig};
    use crate::sharded_service::desired::{self, Children};

    fn sharded(shards: i32, replicas_per_shard: i32) -> ShardedService {
        serde_norway::from_str(&format!(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: ShardedService
metadata: {{name: cache, namespace: shop, uid: u-1, generation: 4}}
spec:
  shards: {shards}
  replicasPerShard: {replicas_per_shard}
  protocol: redis
  port: 6379
  template:
    spec:
      containers:
        - {{name: redis, image: redis:7, readinessProbe: {{tcpSocket: {{port: 6379}}}}}}
"#
        ))
        .unwrap()
    }

    fn children(ss: &ShardedService) -> Children {
        desired::desired(ss, &RenderConfig::default()).unwrap()
    }

    /// The children as the API server returns them once their controllers caught up, with
    /// `ready` pods ready in every StatefulSet and every router ready.
    fn applied(ss: &ShardedService, ready: i32) -> Applied {
        let mut c = children(ss);
        for sts in &mut c.statefulsets {
            let want = sts.spec.as_ref().unwrap().replicas.unwrap();
            sts.metadata.generation = Some(1);
            sts.status = Some(StatefulSetStatus {
                observed_generation: Some(1),
                replicas: want,
                ready_replicas: Some(ready.min(want)),
                updated_replicas: Some(want),
                current_revision: Some("r1".into()),
                update_revision: Some("r1".into()),
                ..StatefulSetStatus::default()
            });
        }
        if let Some(d) = &mut c.router {
            d.metadata.generation = Some(1);
            d.status = Some(DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(2),
                ready_replicas: Some(2),
                updated_replicas: Some(2),
                available_replicas: Some(2),
                ..DeploymentStatus::default()
            });
        }
        Applied::new(c.into_vec())
    }

    fn condition<'a>(status: &'a ShardedServiceStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_once_every_shard_and_router_is_ready_for_this_generation() {
        let ss = sharded(3, 1);
        let status = observed(&ss, &applied(&ss, 3), None, Timestamp::now());
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.ready_shards, Some(3));
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "ShardsReady")
        );
        assert_eq!(ready.message, "3/3 shards ready, 2/2 routers ready");
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(condition(&status, "Progressing").status, "False");
        assert_eq!(condition(&status, "Degraded").status, "False");

        let status = observed(&ss, &applied(&ss, 2), None, Timestamp::now());
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ShardsNotReady")
        );
        assert_eq!(condition(&status, "Progressing").reason, "RollingOut");
    }

    #[test]
    fn a_replicated_shard_is_ready_when_all_its_pods_are() {
        let ss = sharded(3, 2);
        let mut children = applied(&ss, 2).into_children();
        // Shard 1 has one of its two pods ready.
        for child in &mut children {
            if let Child::StatefulSet(sts) = child
                && sts.metadata.name.as_deref() == Some("cache-1")
            {
                sts.status.as_mut().unwrap().ready_replicas = Some(1);
            }
        }
        let status = observed(&ss, &Applied::new(children), None, Timestamp::now());
        assert_eq!(status.ready_shards, Some(2));
        assert_eq!(
            condition(&status, "Ready").message,
            "2/3 shards ready, 2/2 routers ready"
        );
    }

    #[test]
    fn children_not_seen_yet_are_pending_not_ready() {
        let ss = sharded(2, 1);
        let status = observed(&ss, &Applied::default(), None, Timestamp::now());
        assert_eq!(condition(&status, "Ready").reason, "Pending");
        assert_eq!(status.ready_shards, Some(0));
        assert!(status.members.is_empty() && status.ring_version.is_none());
    }

    #[test]
    fn a_first_ring_reports_its_members_and_version_but_no_moved_share() {
        let ss = sharded(3, 1);
        let status = observed(&ss, &applied(&ss, 0), None, Timestamp::now());
        assert_eq!(status.members, ["cache-0", "cache-1", "cache-2"]);
        let file = &children(&ss).ring.data.unwrap()[crate::sidecars::RING_KEY];
        assert_eq!(status.ring_version, Some(ring_version(file)));
        assert_eq!(status.moved_key_share, None);
        assert!(events(&ss, &status).is_empty(), "nothing changed yet");
    }

    /// `ss` as it looks after a reconcile of `before` wrote its status.
    fn after(before: &ShardedService, mut ss: ShardedService) -> ShardedService {
        ss.status = Some(observed(
            before,
            &applied(before, 1),
            None,
            Timestamp::now(),
        ));
        ss
    }

    #[test]
    fn a_change_of_members_reports_the_exact_moved_share_and_an_event() {
        let three = sharded(3, 1);
        let four = after(&three, sharded(4, 1));
        let status = observed(&four, &applied(&four, 0), None, Timestamp::now());
        let want = moved_share(
            &as_servers(&desired::members(&three)),
            &as_servers(&desired::members(&four)),
        );
        assert_eq!(status.moved_key_share, Some(want));
        assert!((0.15..0.35).contains(&want), "about a quarter: {want}");
        let previous = four.status.as_ref().unwrap().ring_version.clone().unwrap();
        let now = status.ring_version.clone().unwrap();
        assert_ne!(previous, now);
        let notes = events(&four, &status);
        assert_eq!(notes.len(), 1);
        assert_eq!((notes[0].warning, notes[0].reason), (false, "RingChanged"));
        assert_eq!(
            notes[0].message,
            format!(
                "the ring changed from version {previous} to {now}: 3 → 4 members, {:.1}% of the key space moved to another shard",
                want * 100.0
            )
        );

        // The next reconcile sees the same ring: the share of the last change stays.
        let settled = after(&four, four.clone());
        let again = observed(&settled, &applied(&settled, 0), None, Timestamp::now());
        assert_eq!(again.moved_key_share, Some(want));
        assert!(events(&settled, &again).is_empty());
    }

    #[test]
    fn new_addresses_for_the_same_members_are_a_new_ring_that_moved_no_key() {
        let one_pod_per_shard = sharded(3, 1);
        let replicated = after(&one_pod_per_shard, sharded(3, 2));
        let status = observed(
            &replicated,
            &applied(&replicated, 2),
            None,
            Timestamp::now(),
        );
        assert_eq!(status.members, replicated.status.as_ref().unwrap().members);
        assert_eq!(status.moved_key_share, None, "the members never changed");
        let notes = events(&replicated, &status);
        assert!(
            notes[0]
                .message
                .ends_with(": the same members, so no key moved"),
            "{:?}",
            notes[0]
        );
    }

    #[test]
    fn shards_leaving_and_removed_are_told_once_and_a_shard_that_came_back_is_not_removed() {
        let three = sharded(3, 1);
        let mut waiting = after(&three, sharded(3, 1));
        let mut next = waiting.status.clone().unwrap();
        next.leaving_shards = vec!["cache-3".into()];
        let version = next.ring_version.clone().unwrap();
        let notes = events(&waiting, &next);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].reason, "ShardsLeaving");
        assert_eq!(
            notes[0].message,
            format!(
                "the ring no longer names cache-3 (version {version}); its pods are removed once every router serves that version"
            )
        );
        assert_eq!(requeue_after(&next), Some(LEAVING_RECHECK));
        // Still waiting: nothing new to tell.
        waiting.status = Some(next.clone());
        assert!(events(&waiting, &next).is_empty());
        // Its pod went.
        let mut removed = next.clone();
        removed.leaving_shards.clear();
        let notes = events(&waiting, &removed);
        assert_eq!(
            (notes.len(), notes[0].reason),
            (1, "ShardsRemoved"),
            "{notes:?}"
        );
        assert_eq!(requeue_after(&removed), None);
        // Or the spec grew back first: cache-3 is in the ring again, not removed.
        let mut back = removed;
        back.members.push("cache-3".into());
        assert!(
            events(&waiting, &back)
                .iter()
                .all(|n| n.reason != "ShardsRemoved")
        );
    }

    #[test]
    fn an_invalid_spec_keeps_the_ring_in_service_in_the_status() {
        let three = sharded(3, 1);
        let broken = after(&three, sharded(3, 1));
        let errors = FieldErrors(vec![rigging_crds::FieldError::new("spec.port", "taken")]);
        let status = invalid(&broken, &errors, Timestamp::now());
        let before = broken.status.clone().unwrap();
        assert_eq!(status.members, before.members);
        assert_eq!(status.ring_version, before.ring_version);
        assert_eq!(status.ready_shards, before.ready_shards);
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert_eq!(degraded.message, "spec.port: taken");
    }
}
