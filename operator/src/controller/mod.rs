//! The layer every Rigging kind shares: the Controller wiring with shared watches on the
//! child kinds, reconcile and error policy with backoff, server-side apply of children
//! under one field manager, removal of children the spec no longer asks for, the status
//! patch, Events and metrics.
//!
//! A kind supplies only what is its own, by implementing [`Kind`]: its pure desired state,
//! its status summary and its validation (inside `desired`). Everything that does IO is
//! here, written once.

pub mod apply;
pub mod children;
pub mod conditions;
pub mod context;
pub mod inquiry;
pub mod reconcile;
pub mod rollouts;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::core::object::HasStatus;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};

use rigging_crds::FieldErrors;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use children::{Applied, Child, ChildStores, ChildWatches, Observed};
pub use context::{Config, Context};
pub use inquiry::{Answers, Inquiry, PodAnswer};
pub use reconcile::{RESYNC, error_policy, reconcile};

/// The field manager of every server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "rigging-operator";
/// The field manager that holds a Deployment's `spec.replicas` while it passes from the
/// operator to a HorizontalPodAutoscaler (see [`apply::hand_over_replicas`]).
pub const HANDOVER_MANAGER: &str = "rigging-operator-handover";

/// What the pure halves need to know that is not in the object they render.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderConfig {
    /// Image of `rigging-sidecar`, for the sidecars the operator adds.
    pub sidecar_image: String,
    /// Whether the cluster runs native sidecars (init containers with `restartPolicy:
    /// Always`, Kubernetes 1.29 and later). Without them sidecars go in as plain
    /// containers, and kinds whose pods run to completion refuse them.
    pub native_sidecars: bool,
    /// How the operator comes to hold the Lease rights it writes into an election's Role
    /// (`run --elect-grant-role`); `None`: it holds them already (and `render` shows no
    /// binding of its own).
    pub elect_grant: Option<crate::sidecars::elect::ElectGrant>,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self {
            sidecar_image: default_sidecar_image(),
            native_sidecars: true,
            elect_grant: None,
        }
    }
}

/// `rigging-sidecar:<version of this operator>`: the sidecar released with it.
pub fn default_sidecar_image() -> String {
    format!("rigging-sidecar:{}", env!("CARGO_PKG_VERSION"))
}

/// `labels` plus who manages them: the labels of every child and pod.
pub fn with_managed(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert("app.kubernetes.io/part-of".into(), "rigging".into());
    labels
}

/// The metadata of `owner`'s child `name`: its namespace, `labels`, and the controller
/// owner reference.
pub fn child_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        owner_references: owner_references(owner),
        ..ObjectMeta::default()
    }
}

/// Grants the Role named in `meta` (`role`) to the ServiceAccount `account` of its
/// namespace: the binding of the pods that need API rights of their own.
pub fn bind_role(meta: ObjectMeta, role: String, account: String) -> RoleBinding {
    let namespace = meta.namespace.clone();
    RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: role,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account,
            namespace,
            ..Subject::default()
        }]),
    }
}

/// The owner reference every child carries: controlled by `owner`, and blocking its
/// deletion until the child is gone, as the built-in controllers' children do, so that a
/// foreground deletion of the owner waits for its children.
pub fn owner_references<K: Resource<DynamicType = ()>>(owner: &K) -> Option<Vec<OwnerReference>> {
    let reference = owner.controller_owner_ref(&())?;
    Some(vec![OwnerReference {
        block_owner_deletion: Some(true),
        ..reference
    }])
}

/// A namespaced Kubernetes object the controller layer reads, applies and caches: every
/// Rigging kind and every child kind.
pub trait Object:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<T> Object for T where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// What a Rigging kind supplies to the shared controller layer. Its status, and where it
/// lives, are kube's [`HasStatus`], which `#[derive(CustomResource)]` implements.
pub trait Kind:
    Object + HasStatus<Status: Serialize + Clone + Debug + PartialEq + Send + Sync + 'static>
{
    /// The `kind` label of metrics, and the kind named in logs.
    const KIND: &'static str;

    /// Pods to ask, over HTTP, before the desired state is computed, when what they answer
    /// decides it (whether every router serves a new ring). Computed without IO from the
    /// object and its children; the answers reach [`desired`](Kind::desired) through
    /// [`Observed::answers`]. None by default.
    fn inquiry(&self, _observed: &Observed) -> Option<Inquiry> {
        None
    }

    /// The children this object stands for, computed without IO from the object, the
    /// children it already has and the answers to its [`inquiry`](Kind::inquiry), or every
    /// reason the object is invalid (named by field).
    fn desired(
        &self,
        config: &RenderConfig,
        observed: &Observed,
    ) -> Result<Vec<Child>, FieldErrors>;

    /// The status once every child is applied, from the children as the API server
    /// returned them (or as the watch cache holds them, when nothing had to change).
    fn observed_status(&self, applied: &Applied, now: Timestamp) -> Self::Status;

    /// [`observed_status`](Kind::observed_status) after the pods answered the kind's
    /// [`inquiry`](Kind::inquiry), for a status that says what they answered. By default
    /// the answers add nothing.
    fn observed_status_answered(
        &self,
        applied: &Applied,
        _answers: &Answers,
        now: Timestamp,
    ) -> Self::Status {
        self.observed_status(applied, now)
    }

    /// The status of an object whose spec is invalid.
    fn invalid_status(&self, errors: &FieldErrors, now: Timestamp) -> Self::Status;

    /// Events to publish once `next` replaces the status `self` carries (a failed work
    /// item, say). None by default.
    fn events(&self, _next: &Self::Status) -> Vec<Note> {
        Vec::new()
    }

    /// When to look at the object again although nothing changed, if sooner than the
    /// resync period (a deadline the kind keeps). None by default.
    fn requeue_after(&self, _status: &Self::Status, _now: Timestamp) -> Option<Duration> {
        None
    }
}

/// An Event a kind asks to publish about its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Whether something went wrong.
    pub warning: bool,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
}

/// The controller of `K`: watches `K` in `namespace` (every namespace when `None`), is
/// triggered by the shared child watches, and reconciles until a shutdown signal. The
/// watches must run beside it ([`ChildWatches::run`]).
pub fn controller<K: Kind>(
    ctx: Arc<Context>,
    watches: &ChildWatches,
    namespace: Option<&str>,
) -> impl Future<Output = ()> + Send + use<K> {
    let api: Api<K> = children::api(&ctx.client, namespace);
    // Listed as the API server has them now, not from its watch cache: the status is the
    // record of what is done (a work queue's finished items), and a stale one read beside
    // fresher children, after a failover, could run an item twice. A stale child cache
    // costs only a create the API server refuses.
    let (reader, writer) = reflector::store();
    let objects = watcher(api, watcher::Config::default())
        .default_backoff()
        // Nothing reads who wrote which field of the object itself, and for an object
        // applied with kubectl that is another copy of its spec, in every cached object.
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects();
    // Installed now, so that a signal before the first poll is not lost.
    let stop = crate::manager::shutdown_signal().shared();
    let stopped = drained::<K>(stop.clone(), reader.clone());
    let controller = Controller::for_stream(objects, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency),
    );
    watches
        .trigger(controller)
        .graceful_shutdown_on(stop)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .take_until(stopped)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
}

/// How long a stopping controller waits for the reconciles it has started.
const DRAIN: Duration = Duration::from_secs(10);

/// Resolves when a stopping controller stops waiting for its reconciles: once `stop` has
/// resolved, at once if its cache of `K` never filled, else after [`DRAIN`]. kube's
/// graceful shutdown alone would wait for the first list of a cache forever (the watch
/// that fills it stops with the signal), and for a reconcile stuck on an API server that
/// does not answer, past the pod's grace period.
async fn drained<K: Kind>(stop: impl Future<Output = ()>, cache: reflector::Store<K>) {
    stop.await;
    if !matches!(cache.wait_until_ready().now_or_never(), Some(Ok(()))) {
        tracing::info!(kind = %K::kind(&()), "stopping before the first list of the kind");
        return;
    }
    tokio::time::sleep(DRAIN).await;
    tracing::warn!(kind = %K::kind(&()), drain_s = DRAIN.as_secs(), "reconciles still running at shutdown: dropped");
}

/// Assertions the kinds' unit tests share.
#[cfg(test)]
pub mod testing {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// That `meta` is of a child in `namespace`, labelled as the operator's, under the
    /// controller `(kind, name, uid)`: what garbage collection and the watches follow.
    pub fn assert_child_of(meta: &ObjectMeta, namespace: &str, owner: (&str, &str, &str)) {
        let reference = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                reference.kind.as_str(),
                reference.name.as_str(),
                reference.uid.as_str()
            ),
            owner
        );
        assert_eq!(reference.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some(namespace));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            super::MANAGER
        );
    }
}
