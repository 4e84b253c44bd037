//! The reconcile every kind shares: ask the pods the kind wants asked, validate and compute
//! the children (the kind's pure half), apply them, remove what the spec dropped, write
//! the status, and on failure back off per object. Nothing here decides what the objects
//! look like.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::Instrument;

use super::apply::{apply_all, publish};
use super::children::{Observed, remove_all_orphans};
use super::conditions::is_current;
use super::inquiry::ask;
use super::{Applied, Context, Kind, MANAGER};
use crate::error::{Error, Result};

/// How often a healthy object is looked at again even when nothing changed, unless
/// `run --resync-period` says otherwise: what sets back drift no watch event reported.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one object in a span of its own: counts and times it, then does the work.
pub async fn reconcile<K: Kind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!(
        "reconcile",
        kind = K::KIND,
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
    );
    async {
        let started = Instant::now();
        ctx.metrics
            .reconciliations
            .with_label_values(&[K::KIND])
            .inc();
        let result = reconcile_object(&*obj, &ctx).await;
        ctx.metrics
            .duration
            .with_label_values(&[K::KIND])
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            ctx.reset_backoff(&*obj);
        }
        result
    }
    .instrument(span)
    .await
}

/// Retries a failed reconcile with exponential backoff (5 s … 5 min) per object.
pub fn error_policy<K: Kind>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_error(K::KIND, error);
    let delay = ctx.next_backoff(&*obj);
    tracing::warn!(
        kind = K::KIND,
        name = %obj.name_any(),
        namespace = obj.namespace().unwrap_or_default(),
        error = %error,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_object<K: Kind>(obj: &K, ctx: &Context) -> Result<Action> {
    let name = obj.name_any();
    let namespace = obj.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: K::KIND,
        name: name.clone(),
    })?;
    // Being deleted: the garbage collector is removing the children (in the foreground,
    // before the object itself), so applying them again would fight it, and a work queue
    // would start Jobs for items nobody wants any more. Nothing to do until it is gone.
    if obj.meta().deletion_timestamp.is_some() {
        tracing::debug!("being deleted: nothing to reconcile");
        return Ok(Action::await_change());
    }
    let own_view = ctx.own_view(obj);
    let obj = own_view.as_ref().unwrap_or(obj);
    let now = Timestamp::now();
    // Desired state may depend on the children that exist: read them once the caches hold
    // their initial lists. (`run` waits for that before it starts any controller, so this
    // returns at once there; it guards callers that did not.)
    ctx.stores.wait_until_ready().await;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let observed = Observed::cached(&ctx.stores, &namespace, &uid).at(now);
    let answers = match obj.inquiry(&observed) {
        Some(inquiry) => Some(ask(ctx, &namespace, &inquiry).await?),
        None => None,
    };
    let observed = match &answers {
        Some(answers) => observed.answered(answers),
        None => observed,
    };
    let children = match obj.desired(&ctx.config.render, &observed) {
        Ok(children) => children,
        Err(errors) => {
            let status = obj.invalid_status(&errors, now);
            if !is_current(obj.status(), &status) {
                tracing::info!(%errors, "invalid spec");
                let note = errors.to_string();
                let regarding = obj.object_ref(&());
                publish(
                    ctx,
                    &regarding,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    note,
                )
                .await;
                patch_status(ctx, obj, &namespace, &status).await?;
            }
            // Nothing to retry: the next edit of the spec triggers a reconcile.
            return Ok(Action::await_change());
        }
    };

    let written = apply_all(ctx, obj, &children).await?;
    let applied = Applied::new(written.children).with_pods(observed.job_pods());
    remove_all_orphans(ctx, obj, &children).await?;

    let status = match &answers {
        Some(answers) => obj.observed_status_answered(&applied, answers, now),
        None => obj.observed_status(&applied, now),
    };
    if !is_current(obj.status(), &status) {
        patch_status(ctx, obj, &namespace, &status).await?;
        let regarding = obj.object_ref(&());
        for note in obj.events(&status) {
            let type_ = if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(
                ctx,
                &regarding,
                type_,
                note.reason,
                "Reconcile",
                note.message,
            )
            .await;
        }
    }
    let mut next = ctx.config.resync;
    if let Some(after) = obj.requeue_after(&status, now) {
        next = next.min(after);
    }
    if written.held {
        next = next.min(super::rollouts::RETRY);
    }
    Ok(Action::requeue(next))
}

async fn patch_status<K: Kind>(
    ctx: &Context,
    obj: &K,
    namespace: &str,
    status: &K::Status,
) -> Result<()> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    let written = api
        .patch_status(&obj.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::StatusPatch {
            namespace: namespace.to_owned(),
            name: obj.name_any(),
            source,
        })?;
    ctx.metrics
        .status_writes
        .with_label_values(&[K::KIND])
        .inc();
    ctx.wrote_status(obj, status, written.resource_version().as_deref());
    Ok(())
}
