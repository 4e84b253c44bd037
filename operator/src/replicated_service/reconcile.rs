//! The IO half of the ReplicatedService controller: apply what [`desired`] computed, write
//! the status, publish Events. Nothing here decides what the objects look like.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use rigging_crds::{ReplicatedService, ReplicatedServiceStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::desired::{self, MANAGER};
use super::status;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fingerprint;

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
    apply(
        ctx,
        rs,
        &stores.deployments,
        &children.deployment,
        "Deployment",
    )
    .await?;
    apply(ctx, rs, &stores.services, &children.service, "Service").await?;
    match &children.pdb {
        Some(pdb) => apply(ctx, rs, &stores.pdbs, pdb, "PodDisruptionBudget").await?,
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
        Some(hpa) => apply(ctx, rs, &stores.hpas, hpa, "HorizontalPodAutoscaler").await?,
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

/// Server-side applies `desired` unless the watch cache shows it already applied (same
/// fingerprint), in which case no request is made at all.
async fn apply<K>(
    ctx: &Context,
    rs: &ReplicatedService,
    store: &Store<K>,
    desired: &K,
    kind: &'static str,
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
    let cached = store.get(&key);
    if cached.is_some_and(|c| fingerprint::of(c.meta()) == fingerprint::of(desired.meta())) {
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
