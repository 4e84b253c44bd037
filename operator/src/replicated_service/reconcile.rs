//! The IO half of the ReplicatedService controller: apply what [`desired`] computed, write
//! the status, publish Events. Nothing here decides what the objects look like.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use rigging_crds::{ReplicatedService, ReplicatedServiceStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::desired::{self, HANDOVER_MANAGER, MANAGER};
use super::status;
use crate::context::Context;
use crate::drift;
use crate::error::{Error, Result};

/// The `kind` label of this controller's metrics.
pub const KIND: &str = "ReplicatedService";

/// How often a healthy object is looked at again even when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one ReplicatedService: counts and times it, then does the work.
pub async fn reconcile(rs: Arc<ReplicatedService>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciliations.with_label_values(&[KIND]).inc();
    let result = reconcile_object(&rs, &ctx).await;
    ctx.metrics
        .duration
        .with_label_values(&[KIND])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_backoff(&ObjectRef::from_obj(&*rs));
    }
    result
}

/// Retries a failed reconcile with exponential backoff (5 s … 5 min) per object.
pub fn error_policy(rs: Arc<ReplicatedService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_error(KIND, error);
    let delay = ctx.next_backoff(ObjectRef::from_obj(&*rs));
    tracing::warn!(
        name = %rs.name_any(),
        namespace = rs.namespace().unwrap_or_default(),
        error = %error,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_object(rs: &ReplicatedService, ctx: &Context) -> Result<Action> {
    let name = rs.name_any();
    let namespace = rs.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: KIND,
        name: name.clone(),
    })?;
    let now = Timestamp::now();
    let children = match desired::desired(rs, &ctx.config.render) {
        Ok(children) => children,
        Err(errors) => {
            let status = status::invalid(rs, &errors, now);
            if !status::is_current(rs.status.as_ref(), &status) {
                tracing::info!(%name, %namespace, %errors, "invalid spec");
                publish(
                    ctx,
                    rs,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    errors.to_string(),
                )
                .await;
                patch_status(ctx, rs, &namespace, &status).await?;
            }
            // Nothing to retry: the next edit of the spec triggers a reconcile.
            return Ok(Action::await_change());
        }
    };

    let stores = &ctx.stores;
    stores.wait_until_ready().await;
    let handed_over =
        hand_over_replicas(ctx, rs, &stores.deployments, &children.deployment).await?;
    apply(
        ctx,
        rs,
        &stores.deployments,
        &children.deployment,
        "Deployment",
        handed_over,
    )
    .await?;
    apply(
        ctx,
        rs,
        &stores.services,
        &children.service,
        "Service",
        false,
    )
    .await?;
    match &children.pdb {
        Some(pdb) => apply(ctx, rs, &stores.pdbs, pdb, "PodDisruptionBudget", false).await?,
        None => {
            remove_owned(
                ctx,
                rs,
                &stores.pdbs,
                &name,
                &namespace,
                "PodDisruptionBudget",
            )
            .await?
        }
    }
    match &children.hpa {
        Some(hpa) => apply(ctx, rs, &stores.hpas, hpa, "HorizontalPodAutoscaler", false).await?,
        None => {
            remove_owned(
                ctx,
                rs,
                &stores.hpas,
                &name,
                &namespace,
                "HorizontalPodAutoscaler",
            )
            .await?
        }
    }

    let deployment = stores
        .deployments
        .get(&ObjectRef::new(&name).within(&namespace));
    let status = status::observed(rs, deployment.as_deref(), now);
    if !status::is_current(rs.status.as_ref(), &status) {
        patch_status(ctx, rs, &namespace, &status).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Server-side applies `desired` unless the watch cache shows that the live child already
/// holds every field of it ([`drift::holds`]), in which case no request is made at all.
/// `always` applies even then (after a hand-over, to give up the fields handed over).
async fn apply<K>(
    ctx: &Context,
    rs: &ReplicatedService,
    store: &Store<K>,
    desired: &K,
    kind: &'static str,
    always: bool,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let key = ObjectRef::new(&name).within(&namespace);
    if !always && store.get(&key).is_some_and(|live| holds(&*live, desired)) {
        ctx.metrics
            .applies
            .with_label_values(&[KIND, kind, "unchanged"])
            .inc();
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(MANAGER).force();
    if let Err(source) = api.patch(&name, &params, &Patch::Apply(desired)).await {
        let error = Error::Apply {
            kind,
            namespace,
            name,
            source,
        };
        publish(
            ctx,
            rs,
            EventType::Warning,
            "ApplyFailed",
            "Apply",
            error.to_string(),
        )
        .await;
        return Err(error);
    }
    ctx.metrics
        .applies
        .with_label_values(&[KIND, kind, "applied"])
        .inc();
    Ok(())
}

fn holds<K: Serialize>(live: &K, desired: &K) -> bool {
    match (serde_json::to_value(live), serde_json::to_value(desired)) {
        (Ok(live), Ok(desired)) => drift::holds(&live, &desired),
        _ => false,
    }
}

/// Hands `spec.replicas` of the Deployment over before the operator stops applying it
/// (autoscaling was turned on). Under server-side apply, a field that its only manager
/// stops applying is removed, and the Deployment would fall back to 1 replica until the
/// autoscaler acts. So the live count is first applied under a second field manager,
/// [`HANDOVER_MANAGER`], which keeps owning it until the autoscaler's own writes take it.
/// Returns whether a hand-over happened (the Deployment must then be applied, so that the
/// operator's manager lets go of the field).
async fn hand_over_replicas(
    ctx: &Context,
    rs: &ReplicatedService,
    store: &Store<Deployment>,
    desired: &Deployment,
) -> Result<bool> {
    if desired.spec.as_ref().is_none_or(|s| s.replicas.is_some()) {
        return Ok(false);
    }
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let Some(live) = store.get(&ObjectRef::new(&name).within(&namespace)) else {
        return Ok(false);
    };
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(false);
    };
    if !applies_replicas(&live, MANAGER) {
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
        let error = Error::Apply {
            kind: "Deployment",
            namespace,
            name,
            source,
        };
        publish(
            ctx,
            rs,
            EventType::Warning,
            "ApplyFailed",
            "HandOverReplicas",
            error.to_string(),
        )
        .await;
        return Err(error);
    }
    tracing::info!(%name, %namespace, replicas, "handed spec.replicas over to the autoscaler");
    Ok(true)
}

/// Whether `manager` owns `spec.replicas` of `deployment` through server-side apply.
fn applies_replicas(deployment: &Deployment, manager: &str) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|fields| fields.0.pointer("/f:spec/f:replicas").is_some())
}

/// Deletes a child the spec no longer asks for, if the cache shows one this object owns.
async fn remove_owned<K>(
    ctx: &Context,
    rs: &ReplicatedService,
    store: &Store<K>,
    name: &str,
    namespace: &str,
    kind: &'static str,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let Some(cached) = store.get(&ObjectRef::new(name).within(namespace)) else {
        return Ok(());
    };
    let owned = cached
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == rs.metadata.uid.as_ref());
    if !owned {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Apply {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }),
    }
}

async fn patch_status(
    ctx: &Context,
    rs: &ReplicatedService,
    namespace: &str,
    status: &ReplicatedServiceStatus,
) -> Result<()> {
    let api: Api<ReplicatedService> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": KIND,
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    api.patch_status(&rs.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::StatusPatch {
            namespace: namespace.to_owned(),
            name: rs.name_any(),
            source,
        })?;
    Ok(())
}

/// Publishes an Event about `rs`. A failure to publish is logged, not returned: the
/// condition carries the same message and must not be held up by the events API.
async fn publish(
    ctx: &Context,
    rs: &ReplicatedService,
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
    if let Err(error) = ctx.recorder.publish(&event, &rs.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish event");
    }
}
