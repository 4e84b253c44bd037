//! Writing children: server-side apply under one field manager, skipped when the watch
//! cache shows the child already as desired; the hand-over of `replicas` to an autoscaler;
//! removal of children the spec no longer asks for; Events.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::children::{ChildKind, controlled_by};
use super::rollouts::{self, Slot, Workload};
use super::{Child, Context, HANDOVER_MANAGER, Kind, MANAGER};
use crate::drift;
use crate::error::{Error, Result};

/// Server-side applies `desired` unless the watch cache shows that the live child already
/// holds every field of it ([`drift::holds`]), in which case no request is made at all.
/// `always` applies even then (after a hand-over, to give up the fields handed over).
/// Returns the child as the API server (or the cache) has it.
pub async fn apply<K: Kind, C: ChildKind>(
    ctx: &Context,
    owner: &K,
    desired: &C,
    always: bool,
) -> Result<C> {
    let (name, namespace) = (desired.name_any(), desired.namespace().unwrap_or_default());
    if let Some(live) = cached::<K, C>(ctx, desired, |live| !always && holds(live, desired)) {
        return Ok(live);
    }
    let api: Api<C> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(desired)).await {
        Ok(applied) => {
            // Writes are rare once children settle: each one is worth a line, and the
            // reconcile's span names the owner.
            tracing::info!(child = C::KIND, %name, %namespace, "applied");
            Ok(counted::<K, C>(ctx, "applied", applied))
        }
        Err(source) => Err(failed(ctx, owner, C::KIND, namespace, name, "Apply", source).await),
    }
}

/// The cached child of `desired`'s name, counted as unchanged, if there is one and `good`
/// says it will do.
fn cached<K: Kind, C: ChildKind>(
    ctx: &Context,
    desired: &C,
    good: impl Fn(&C) -> bool,
) -> Option<C> {
    let key = ObjectRef::new(&desired.name_any()).within(&desired.namespace().unwrap_or_default());
    let live = C::store(&ctx.stores).get(&key).filter(|live| good(live))?;
    Some(counted::<K, C>(ctx, "unchanged", C::clone(&live)))
}

/// Counts one write (or skipped write) of a child in the metrics, passing the child on.
fn counted<K: Kind, C: ChildKind>(ctx: &Context, outcome: &str, child: C) -> C {
    ctx.metrics
        .applies
        .with_label_values(&[K::KIND, C::KIND, outcome])
        .inc();
    child
}

/// Whether `live` holds `desired` and nothing the operator applied before and `desired`
/// leaves out (which only an apply removes).
fn holds<C: ChildKind>(live: &C, desired: &C) -> bool {
    let (Ok(live_value), Ok(desired)) = (serde_json::to_value(live), serde_json::to_value(desired))
    else {
        return false;
    };
    let dropped =
        drift::own_field_sets(live.meta()).any(|owned| drift::drops_owned(&owned, &desired));
    !dropped && drift::holds(&live_value, &desired)
}

/// Every child as applied, and whether a workload's rollout was held back
/// ([`super::rollouts`]), in which case the object is to be reconciled again soon.
pub struct Written {
    /// The children, as the API server (or the cache) has them.
    pub children: Vec<Child>,
    /// Whether a template change waits for a rollout slot.
    pub held: bool,
}

/// Applies every child in order; returns them as applied.
pub async fn apply_all<K: Kind>(ctx: &Context, owner: &K, children: &[Child]) -> Result<Written> {
    let mut applied = Vec::with_capacity(children.len());
    let mut held = false;
    for child in children {
        let waiting = match child {
            Child::Deployment(c) => wait_for_slot(ctx, owner, c).await,
            Child::StatefulSet(c) => wait_for_slot(ctx, owner, c).await,
            _ => None,
        };
        if let Some(live) = waiting {
            held = true;
            applied.push(live);
            continue;
        }
        applied.push(match child {
            Child::Deployment(d) => {
                let handed_over = hand_over_replicas(ctx, owner, d).await?;
                apply(ctx, owner, d, handed_over).await?.into_child()
            }
            Child::Job(c) => create_once(ctx, owner, c).await?.into_child(),
            Child::WorkQueue(c) => create_once(ctx, owner, c).await?.into_child(),
            Child::StatefulSet(c) => apply(ctx, owner, c, false).await?.into_child(),
            Child::Service(c) => apply(ctx, owner, c, false).await?.into_child(),
            // An immutable ConfigMap (a WorkQueue's results) is written once, like a Job.
            Child::ConfigMap(c) if c.immutable == Some(true) => {
                create_once(ctx, owner, c).await?.into_child()
            }
            Child::ConfigMap(c) => apply(ctx, owner, c, false).await?.into_child(),
            Child::NetworkPolicy(c) => apply(ctx, owner, c, false).await?.into_child(),
            Child::PodDisruptionBudget(c) => apply(ctx, owner, c, false).await?.into_child(),
            Child::HorizontalPodAutoscaler(c) => apply(ctx, owner, c, false).await?.into_child(),
            Child::ServiceAccount(c) => apply(ctx, owner, c, false).await?.into_child(),
            Child::Role(c) => apply(ctx, owner, c, false).await?.into_child(),
            Child::RoleBinding(c) => apply(ctx, owner, c, false).await?.into_child(),
        });
    }
    Ok(Written {
        children: applied,
        held,
    })
}

/// The live workload, left as it is, when applying `desired` would start a rollout that
/// the budget does not allow now ([`super::rollouts`]); `None` when it may be applied.
/// The first time a workload waits, an Event on `owner` says so.
async fn wait_for_slot<K: Kind, C: ChildKind + Workload>(
    ctx: &Context,
    owner: &K,
    desired: &C,
) -> Option<Child> {
    let max = usize::try_from(ctx.config.max_rollouts).unwrap_or(usize::MAX);
    if max == 0 {
        return None;
    }
    let key = ObjectRef::new(&desired.name_any()).within(&desired.namespace().unwrap_or_default());
    let live = C::store(&ctx.stores).get(&key)?;
    if !rollouts::changes_template(&*live, desired) {
        return None;
    }
    let seen = rollouts::workloads(&ctx.stores);
    let slot = ctx.rollouts.claim(
        &rollouts::key(C::KIND, desired),
        live.meta().generation,
        &seen,
        max,
    );
    let Slot::Held { in_flight, first } = slot else {
        return None;
    };
    tracing::info!(
        child = C::KIND,
        name = %desired.name_any(),
        in_flight,
        max,
        "rollout held: too many rolling"
    );
    if first {
        let note = format!(
            "{} {} waits to roll out its new pod template: {in_flight} of the operator's workloads are rolling, and at most {max} roll at once (--max-rollouts)",
            C::KIND,
            desired.name_any()
        );
        let regarding = owner.object_ref(&());
        publish(
            ctx,
            &regarding,
            EventType::Normal,
            "RolloutQueued",
            "Rollout",
            note,
        )
        .await;
    }
    Some(counted::<K, C>(ctx, "held", C::clone(&live)).into_child())
}

/// Creates `desired` unless a child of that name exists: never updated, never deleted and
/// created again. A Job's template is immutable, and a second Job of the same name would
/// run its work twice; an immutable ConfigMap cannot change either.
///
/// A `desired` that carries a `resourceVersion` names a child the kind found in the cache
/// and keeps: it is never created. For a child that exists, `desired` itself is returned,
/// not a copy of the cached one: a kind that creates its children once reads them from
/// the caches ([`super::children::CacheView`]), and copying thousands of finished Jobs on
/// every reconcile would cost more than all the rest.
///
/// A cached child of that name that `owner` does not control is never taken as its own
/// (it is left alone, and the create fails as a conflict naming it); the kind's desired
/// state should have left it out. A stale cache only costs a create that the API server
/// refuses as a conflict (`409 AlreadyExists`), which counts as done: the child then shows
/// up in the cache, where its controller is checked.
pub async fn create_once<K: Kind, C: ChildKind>(
    ctx: &Context,
    owner: &K,
    desired: &C,
) -> Result<C> {
    let (name, namespace) = (desired.name_any(), desired.namespace().unwrap_or_default());
    let live = C::store(&ctx.stores).get(&ObjectRef::new(&name).within(&namespace));
    let owner_uid = owner.meta().uid.as_deref().unwrap_or_default();
    match live {
        Some(live) if controlled_by(&*live, &namespace, owner_uid) => {
            return Ok(counted::<K, C>(ctx, "unchanged", desired.clone()));
        }
        Some(live) => {
            let holder = live
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map_or("no controller".to_owned(), |o| {
                    format!("controller {} {}", o.kind, o.name)
                });
            let status = kube::core::Status {
                code: 409,
                reason: "AlreadyExists".into(),
                message: format!(
                    "{} {name} exists with {holder}, not this {}: it is left alone",
                    C::KIND,
                    K::KIND
                ),
                ..kube::core::Status::default()
            };
            let source = kube::Error::Api(Box::new(status));
            return Err(failed(ctx, owner, C::KIND, namespace, name, "Create", source).await);
        }
        // Kept, but gone since the kind looked: nothing to create (the next reconcile sees).
        None if desired.meta().resource_version.is_some() => return Ok(desired.clone()),
        None => {}
    }
    let api: Api<C> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, desired).await {
        Ok(created) => Ok(counted::<K, C>(ctx, "created", created)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(desired.clone()),
        Err(source) => Err(failed(ctx, owner, C::KIND, namespace, name, "Create", source).await),
    }
}

/// Deletes every child of kind `C` that `owner` controls and `children` no longer holds.
pub async fn remove_orphans<K: Kind, C: ChildKind>(
    ctx: &Context,
    owner: &K,
    children: &[Child],
) -> Result<()> {
    let Some(uid) = owner.meta().uid.as_deref() else {
        return Ok(());
    };
    let namespace = owner.namespace().unwrap_or_default();
    // A set, built once: an object may have thousands of children of one kind (a
    // WorkQueue's Jobs), and this runs over every cached child on every reconcile.
    let wanted: std::collections::HashSet<&str> = children
        .iter()
        .filter_map(C::from_child)
        .filter_map(|c| c.meta().name.as_deref())
        .collect();
    let orphans = C::store(&ctx.stores).state().into_iter().filter(|c| {
        controlled_by(&**c, &namespace, uid)
            && !wanted.contains(c.meta().name.as_deref().unwrap_or_default())
    });
    for orphan in orphans {
        let name = orphan.name_any();
        let api: Api<C> = Api::namespaced(ctx.client.clone(), &namespace);
        // Background propagation: a Job's pods, a StatefulSet's pods go with it.
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(kind = C::KIND, %name, %namespace, "deleted a child the spec no longer asks for")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(failed(ctx, owner, C::KIND, namespace, name, "Delete", source).await);
            }
        }
    }
    Ok(())
}

/// Hands `spec.replicas` of a Deployment over before the operator stops applying it
/// (autoscaling was turned on). Under server-side apply, a field that its only manager
/// stops applying is removed, and the Deployment would fall back to 1 replica until the
/// autoscaler acts. So the live count is first applied under a second field manager,
/// [`HANDOVER_MANAGER`], which keeps owning it until the autoscaler's own writes take it.
/// Returns whether a hand-over happened (the Deployment must then be applied, so that the
/// operator's manager lets go of the field).
pub async fn hand_over_replicas<K: Kind>(
    ctx: &Context,
    owner: &K,
    desired: &Deployment,
) -> Result<bool> {
    if desired.spec.as_ref().is_none_or(|s| s.replicas.is_some()) {
        return Ok(false);
    }
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let Some(live) = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&name).within(&namespace))
    else {
        return Ok(false);
    };
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(false);
    };
    if !applies_replicas(&live) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas},
    });
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(HANDOVER_MANAGER);
    if let Err(source) = api.patch(&name, &params, &Patch::Apply(&patch)).await {
        let action = "HandOverReplicas";
        return Err(failed(ctx, owner, "Deployment", namespace, name, action, source).await);
    }
    tracing::info!(%name, %namespace, replicas, "handed spec.replicas over to the autoscaler");
    Ok(true)
}

/// Whether the operator owns `spec.replicas` of `deployment` through server-side apply.
fn applies_replicas(deployment: &Deployment) -> bool {
    drift::own_field_sets(&deployment.metadata)
        .any(|fields| fields.pointer("/f:spec/f:replicas").is_some())
}

/// The error of a failed write of a child, after publishing it as a Warning Event.
async fn failed<K: Kind>(
    ctx: &Context,
    owner: &K,
    kind: &'static str,
    namespace: String,
    name: String,
    action: &str,
    source: kube::Error,
) -> Error {
    let error = Error::Apply {
        kind,
        namespace,
        name,
        source,
    };
    let note = error.to_string();
    publish(
        ctx,
        &owner.object_ref(&()),
        EventType::Warning,
        "ApplyFailed",
        action,
        note,
    )
    .await;
    error
}

/// Publishes an Event about `regarding`. A failure to publish is logged, not returned: the
/// condition carries the same message and must not be held up by the events API.
pub async fn publish(
    ctx: &Context,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    // The events API refuses notes over 1 kB.
    let note = if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &note[..end])
    } else {
        note
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, regarding).await {
        tracing::warn!(%error, reason, "could not publish event");
    }
}
