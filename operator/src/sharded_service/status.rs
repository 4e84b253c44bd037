//! The status a ShardedService should show, computed without IO from its children as
//! applied: shards and routers ready, the ring's members and version, and after a change
//! of members the share of the key space that moved.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rigging_crds::sharded_service::RouterMode;
use rigging_crds::sidecar::shard::ShardConfig;
use rigging_crds::sidecar::shard::ring::{ServerSpec, moved_share};
use rigging_crds::{FieldErrors, ShardedService, ShardedServiceStatus};

use super::desired::{ring_version, router_name, statefulset_names};
use crate::controller::conditions;
use crate::controller::conditions::{Cond, cond, finish};
use crate::controller::{Applied, Note};
use crate::sidecars;

/// What the ring ConfigMap as applied says.
struct Ring {
    version: String,
    members: Vec<String>,
}

fn applied_ring(ss: &ShardedService, applied: &Applied) -> Option<Ring> {
    let name = sidecars::ring_config_map(&ss.name_any());
    let file = applied
        .get::<ConfigMap>(&name)?
        .data
        .as_ref()?
        .get(sidecars::RING_KEY)?;
    // The operator wrote this file; if it no longer parses, the members are unknown.
    let config: ShardConfig = serde_norway::from_str(file).ok()?;
    let members = config
        .servers
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.parse::<ServerSpec>().ok())
        .map(|s| s.ring_name())
        .collect();
    Some(Ring {
        version: ring_version(file),
        members,
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

/// How far one StatefulSet or Deployment is: ready pods, and whether every pod runs the
/// current template.
struct Rollout {
    want: i32,
    ready: i32,
    rolled_out: bool,
}

fn statefulset_rollout(sts: &StatefulSet) -> Rollout {
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

fn deployment_rollout(d: &Deployment) -> Rollout {
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

/// Status of a ShardedService whose children are applied, from the children as the apply
/// returned them.
pub fn observed(ss: &ShardedService, applied: &Applied, now: Timestamp) -> ShardedServiceStatus {
    let spec = &ss.spec;
    let generation = ss.metadata.generation;
    let previous = ss.status.clone().unwrap_or_default();
    let statefulsets: Vec<Option<Rollout>> = statefulset_names(ss)
        .iter()
        .map(|name| applied.get::<StatefulSet>(name).map(statefulset_rollout))
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
                .map(deployment_rollout),
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
    let progressing = if rolled_out {
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
    let ring = applied_ring(ss, applied);
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
        ring_version: ring.map(|r| r.version).or(previous.ring_version),
        moved_key_share,
        conditions: conditions(ss, [ready, progressing, degraded], generation, now),
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
        conditions: conditions(ss, conditions::invalid(&message), generation, now),
        ..previous
    }
}

/// A Normal Event when the ring in service changes: its versions, its members, and how
/// much of the key space moved.
pub fn events(ss: &ShardedService, next: &ShardedServiceStatus) -> Vec<Note> {
    let Some(previous) = ss.status.as_ref() else {
        return Vec::new();
    };
    let (Some(from), Some(to)) = (&previous.ring_version, &next.ring_version) else {
        return Vec::new();
    };
    if from == to {
        return Vec::new();
    }
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
    vec![Note {
        warning: false,
        reason: "RingChanged",
        message: format!("the ring changed from version {from} to {to}: {moved}"),
    }]
}

fn conditions(
    ss: &ShardedService,
    conds: [Cond; 3],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let previous = ss
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    finish(previous, conds, generation, now)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};

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
        let status = observed(&ss, &applied(&ss, 3), Timestamp::now());
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

        let status = observed(&ss, &applied(&ss, 2), Timestamp::now());
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
        let status = observed(&ss, &Applied::new(children), Timestamp::now());
        assert_eq!(status.ready_shards, Some(2));
        assert_eq!(
            condition(&status, "Ready").message,
            "2/3 shards ready, 2/2 routers ready"
        );
    }

    #[test]
    fn children_not_seen_yet_are_pending_not_ready() {
        let ss = sharded(2, 1);
        let status = observed(&ss, &Applied::default(), Timestamp::now());
        assert_eq!(condition(&status, "Ready").reason, "Pending");
        assert_eq!(status.ready_shards, Some(0));
        assert!(status.members.is_empty() && status.ring_version.is_none());
    }

    #[test]
    fn a_first_ring_reports_its_members_and_version_but_no_moved_share() {
        let ss = sharded(3, 1);
        let status = observed(&ss, &applied(&ss, 0), Timestamp::now());
        assert_eq!(status.members, ["cache-0", "cache-1", "cache-2"]);
        let file = &children(&ss).ring.data.unwrap()[crate::sidecars::RING_KEY];
        assert_eq!(status.ring_version, Some(ring_version(file)));
        assert_eq!(status.moved_key_share, None);
        assert!(events(&ss, &status).is_empty(), "nothing changed yet");
    }

    /// `ss` as it looks after a reconcile of `before` wrote its status.
    fn after(before: &ShardedService, mut ss: ShardedService) -> ShardedService {
        ss.status = Some(observed(before, &applied(before, 1), Timestamp::now()));
        ss
    }

    #[test]
    fn a_change_of_members_reports_the_exact_moved_share_and_an_event() {
        let three = sharded(3, 1);
        let four = after(&three, sharded(4, 1));
        let status = observed(&four, &applied(&four, 0), Timestamp::now());
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
        let again = observed(&settled, &applied(&settled, 0), Timestamp::now());
        assert_eq!(again.moved_key_share, Some(want));
        assert!(events(&settled, &again).is_empty());
    }

    #[test]
    fn new_addresses_for_the_same_members_are_a_new_ring_that_moved_no_key() {
        let one_pod_per_shard = sharded(3, 1);
        let replicated = after(&one_pod_per_shard, sharded(3, 2));
        let status = observed(&replicated, &applied(&replicated, 2), Timestamp::now());
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
