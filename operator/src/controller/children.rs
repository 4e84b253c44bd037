//! The child kinds Rigging's controllers own, their watch caches, and the watches that fill
//! them: one reflector per child kind, shared by every controller; and one more of the pods
//! those children's Jobs run, for what only a pod shows (that it cannot start).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rigging_crds::WorkQueue;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// Label selector of every child the operator manages: its watches see nothing else.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=rigging-operator";

/// Label selector of the pods of the Jobs the operator owns: the Job controller labels each
/// pod with its Job's name, and the pod template carries the operator's `managed-by` label.
pub const JOB_POD_SELECTOR: &str =
    "app.kubernetes.io/managed-by=rigging-operator,batch.kubernetes.io/job-name";

/// Field selector of the same watch: only pods that have not finished. A pod that finishes
/// leaves the cache (the watch reports it deleted), so the cache holds at most the pods of
/// the Jobs that run now, however many finished Jobs are kept.
pub const UNFINISHED_POD_FIELDS: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// How many changes a shared watch buffers for each controller that subscribed to it.
const SUBSCRIBER_BUFFER: usize = 256;

/// Every child kind, once: the [`Child`] variant, the type, and its cache field. The enum,
/// the caches, the shared watches and orphan removal are generated from this list, so a
/// new child kind is one line here (and its RBAC in the chart).
macro_rules! child_kinds {
    ($($(#[$doc:meta])* $variant:ident($type:ty) => $field:ident),+ $(,)?) => {
        /// One child object a kind asks for.
        // An object has a handful of children, built once per reconcile: boxing the large
        // variants would add indirection and buy nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Child {
            $($(#[$doc])* $variant($type),)+
        }

        impl Child {
            /// The child's kind, as [`ChildKind::KIND`] names it.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Child::$variant(_) => stringify!($variant),)+
                }
            }

            /// The child's metadata.
            pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                match self {
                    $(Child::$variant(c) => &c.metadata,)+
                }
            }

            /// The child as JSON, as it is applied and rendered.
            pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self {
                    $(Child::$variant(c) => serde_json::to_value(c),)+
                }
            }
        }

        $(
            impl ChildKind for $type {
                const KIND: &'static str = stringify!($variant);
                fn from_child(child: &Child) -> Option<&Self> {
                    match child {
                        Child::$variant(c) => Some(c),
                        _ => None,
                    }
                }
                fn into_child(self) -> Child {
                    Child::$variant(self)
                }
                fn store(stores: &ChildStores) -> &Store<Self> {
                    &stores.$field
                }
            }
        )+

        /// Watch caches of the children the operator owns (only those labelled
        /// [`MANAGED_SELECTOR`]). Comparing against them is what lets an unchanged object
        /// cost no API request.
        #[derive(Clone)]
        pub struct ChildStores {
            $(#[doc = concat!("The cached ", stringify!($variant), "s.")] pub $field: Store<$type>,)+
            /// The unfinished pods of the Jobs above ([`JOB_POD_SELECTOR`],
            /// [`UNFINISHED_POD_FIELDS`]): not children, but what a status reads to tell a
            /// pod that cannot start.
            pub job_pods: Store<Pod>,
        }

        impl ChildStores {
            /// Waits until every cache holds its initial list, so that the first reconciles
            /// after a start (or a change of leader) compare against what exists instead of
            /// re-applying every child. Returns early if a cache's writer is gone (the
            /// controller is stopping).
            pub async fn wait_until_ready(&self) {
                $(let _ = self.$field.wait_until_ready().await;)+
                let _ = self.job_pods.wait_until_ready().await;
            }
        }

        struct Writers {
            $($field: Writer<$type>,)+
            job_pods: Writer<Pod>,
        }

        /// The writers of caches made by [`ChildStores::unfilled`].
        pub struct CacheFill {
            $($field: Writer<$type>,)+
            job_pods: Writer<Pod>,
        }

        impl CacheFill {
            /// Gives every cache its initial list: `children`, each in the cache of its kind,
            /// and no pods.
            pub fn fill(self, children: impl IntoIterator<Item = Child>) {
                self.fill_with_pods(children, []);
            }

            /// [`CacheFill::fill`], with `pods` as the pods of the Jobs.
            pub fn fill_with_pods(
                mut self,
                children: impl IntoIterator<Item = Child>,
                pods: impl IntoIterator<Item = Pod>,
            ) {
                $(self.$field.apply_watcher_event(&watcher::Event::Init);)+
                self.job_pods.apply_watcher_event(&watcher::Event::Init);
                for child in children {
                    match child {
                        $(Child::$variant(c) => {
                            self.$field.apply_watcher_event(&watcher::Event::InitApply(c))
                        })+
                    }
                }
                for pod in pods {
                    self.job_pods.apply_watcher_event(&watcher::Event::InitApply(pod));
                }
                $(self.$field.apply_watcher_event(&watcher::Event::InitDone);)+
                self.job_pods.apply_watcher_event(&watcher::Event::InitDone);
            }
        }

        impl ChildStores {
            /// Caches whose initial list has not arrived yet, and what fills them: a
            /// controller as it starts, for tests.
            pub fn unfilled() -> (Self, CacheFill) {
                $(let $field = reflector::store();)+
                let job_pods = reflector::store();
                (
                    Self { $($field: $field.0,)+ job_pods: job_pods.0 },
                    CacheFill { $($field: $field.1,)+ job_pods: job_pods.1 },
                )
            }

            /// Caches that hold `children` as their initial list, for tests.
            pub fn prefilled(children: impl IntoIterator<Item = Child>) -> Self {
                Self::prefilled_with_pods(children, [])
            }

            /// Caches that hold `children` and the Jobs' `pods` as their initial lists, for
            /// tests.
            pub fn prefilled_with_pods(
                children: impl IntoIterator<Item = Child>,
                pods: impl IntoIterator<Item = Pod>,
            ) -> Self {
                let (stores, fill) = Self::unfilled();
                fill.fill_with_pods(children, pods);
                stores
            }
        }

        impl ChildWatches {
            /// Watches of the managed children in `namespace` (every namespace when
            /// `None`). Nothing is watched until [`run`](ChildWatches::run).
            pub fn new(client: Client, namespace: Option<&str>) -> Self {
                $(let $field = reflector::store_shared(SUBSCRIBER_BUFFER);)+
                let job_pods = reflector::store_shared(SUBSCRIBER_BUFFER);
                Self {
                    client,
                    namespace: namespace.map(str::to_owned),
                    stores: ChildStores { $($field: $field.0,)+ job_pods: job_pods.0 },
                    writers: Writers { $($field: $field.1,)+ job_pods: job_pods.1 },
                    deleted: broadcast::channel(SUBSCRIBER_BUFFER).0,
                }
            }

            /// Makes a change of any child reconcile its owner in `controller`.
            pub fn trigger<K>(&self, controller: Controller<K>) -> Controller<K>
            where
                K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
            {
                let mut controller = controller;
                // Subscribing cannot fail on a shared writer.
                $(if let Some(s) = self.writers.$field.subscribe() {
                    controller = controller.owns_shared_stream(s);
                })+
                // A pod's owner is its Job, whose owner is the object: a pod that cannot
                // start changes nothing in its Job, so only the pod's own change tells.
                let jobs = self.stores.jobs.clone();
                if let Some(s) = self.writers.job_pods.subscribe() {
                    controller = controller
                        .watches_shared_stream(s, move |pod| owner_of_job_of::<K>(&jobs, &pod));
                }
                controller.reconcile_on(owners_of_deleted::<K>(self.deleted.subscribe()))
            }

            /// Runs the watches; never returns on its own.
            pub fn run(self) -> impl Future<Output = ()> + Send {
                let Self { client, namespace, writers, deleted, .. } = self;
                let ns = namespace.as_deref();
                let watches = vec![
                    $(watch(api::<$type>(&client, ns), writers.$field, deleted.clone()).boxed(),)+
                    watch_job_pods(api::<Pod>(&client, ns), writers.job_pods).boxed(),
                ];
                async move {
                    futures::future::join_all(watches).await;
                }
            }
        }

        /// Deletes every child of `owner` that `children` no longer holds, of every kind.
        pub async fn remove_all_orphans<K: super::Kind>(
            ctx: &super::Context,
            owner: &K,
            children: &[Child],
        ) -> crate::error::Result<()> {
            $(super::apply::remove_orphans::<K, $type>(ctx, owner, children).await?;)+
            Ok(())
        }
    };
}

child_kinds! {
    /// Runs stateless pods.
    Deployment(Deployment) => deployments,
    /// Runs pods with stable names and storage.
    StatefulSet(StatefulSet) => statefulsets,
    /// Load-balances over pods, or names them (headless).
    Service(Service) => services,
    /// Configuration that sidecars read, and state a kind keeps.
    ConfigMap(ConfigMap) => configmaps,
    /// Limits voluntary disruptions.
    PodDisruptionBudget(PodDisruptionBudget) => pdbs,
    /// Scales a Deployment.
    HorizontalPodAutoscaler(HorizontalPodAutoscaler) => hpas,
    /// Limits which pods may reach a pod (clients must go through a router).
    NetworkPolicy(NetworkPolicy) => networkpolicies,
    /// Runs work to completion. Created once, never updated: a Job's template is
    /// immutable, and re-creating one would run its work twice.
    Job(Job) => jobs,
    /// The identity of pods that need API access of their own (the election sidecar's).
    ServiceAccount(ServiceAccount) => serviceaccounts,
    /// What such pods may do, in their namespace: the election sidecar's Leases.
    Role(Role) => roles,
    /// Grants a Role to the pods' ServiceAccount.
    RoleBinding(RoleBinding) => rolebindings,
    /// One run of a MapReduce. Created once, never updated: a run keeps the spec it
    /// started with.
    WorkQueue(WorkQueue) => workqueues,
}

/// A Kubernetes kind that can be a [`Child`]: how to wrap and unwrap it, and where its
/// watch cache is.
pub trait ChildKind: super::Object {
    /// The kind's name, for metrics, Events and errors.
    const KIND: &'static str;
    /// The child, if it is of this kind.
    fn from_child(child: &Child) -> Option<&Self>;
    /// Wraps the object as a child.
    fn into_child(self) -> Child;
    /// The watch cache of this kind.
    fn store(stores: &ChildStores) -> &Store<Self>;
}

/// The children of one object as the API server returned them from the apply (or as the
/// watch cache holds them, when nothing had to change), and the unfinished pods of its Jobs
/// as cached: what its status is computed from.
///
/// Indexed once when made: a status that looks up each of thousands of children (a
/// WorkQueue's Jobs) by name costs one hash lookup each, not a scan of the list.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    children: Vec<Child>,
    /// `(kind, name)` → position in `children`.
    by_name: HashMap<(&'static str, String), usize>,
    pods: Vec<Arc<Pod>>,
    /// The uid of a Job → positions in `pods` of the pods it controls.
    pods_by_job: HashMap<String, Vec<usize>>,
    cache: Option<CacheView>,
}

/// The watch caches as one object sees them: its namespace and its uid. What a status
/// reads for the children a kind keeps without copying them into its desired state
/// (a WorkQueue's finished Jobs).
#[derive(Clone)]
pub struct CacheView {
    stores: ChildStores,
    namespace: String,
    uid: String,
}

impl Debug for CacheView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheView")
            .field("namespace", &self.namespace)
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl CacheView {
    /// The cached child of kind `C` named `name` in the object's namespace, whoever
    /// controls it.
    pub fn get<C: ChildKind>(&self, name: &str) -> Option<Arc<C>> {
        C::store(&self.stores).get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Whether the object controls `child`.
    pub fn controls<C: Resource>(&self, child: &C) -> bool {
        controlled_by(child, &self.namespace, &self.uid)
    }

    /// Every cached child of kind `C` in the object's namespace, whoever controls it.
    pub fn in_namespace<C: ChildKind>(&self) -> Vec<Arc<C>> {
        C::store(&self.stores)
            .state()
            .into_iter()
            .filter(|c| c.meta().namespace.as_deref() == Some(self.namespace.as_str()))
            .collect()
    }
}

/// The unfinished pods of an object's Jobs, and the caches they were read from
/// ([`Observed::job_pods`]), handed to [`Applied::with_pods`].
#[derive(Debug, Clone, Default)]
pub struct JobPods {
    pods: Vec<Arc<Pod>>,
    cache: Option<CacheView>,
}

impl From<Vec<Arc<Pod>>> for JobPods {
    fn from(pods: Vec<Arc<Pod>>) -> Self {
        Self { pods, cache: None }
    }
}

impl Applied {
    /// The applied `children`, with no pods.
    pub fn new(children: Vec<Child>) -> Self {
        let by_name = children
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.kind(), c.meta().name.clone().unwrap_or_default()), i))
            .collect();
        Self {
            children,
            by_name,
            ..Self::default()
        }
    }

    /// The same, with `pods` as the unfinished pods of its Jobs (and, from
    /// [`Observed::job_pods`], the caches).
    #[must_use]
    pub fn with_pods(mut self, pods: impl Into<JobPods>) -> Self {
        let JobPods { pods, cache } = pods.into();
        let mut pods_by_job: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, pod) in pods.iter().enumerate() {
            for o in pod.owner_references() {
                if o.controller == Some(true) {
                    pods_by_job.entry(o.uid.clone()).or_default().push(i);
                }
            }
        }
        self.pods = pods;
        self.pods_by_job = pods_by_job;
        self.cache = cache;
        self
    }

    /// The applied children, in apply order.
    pub fn into_children(self) -> Vec<Child> {
        self.children
    }

    /// The applied child of kind `K` named `name`.
    pub fn get<K: ChildKind>(&self, name: &str) -> Option<&K> {
        let i = *self.by_name.get(&(K::KIND, name.to_owned()))?;
        K::from_child(&self.children[i])
    }

    /// Every applied child of kind `K`, in apply order.
    pub fn all<K: ChildKind>(&self) -> impl Iterator<Item = &K> {
        self.children.iter().filter_map(K::from_child)
    }

    /// The caches the children were compared against; `None` where no cache was read
    /// (`render`, and unit tests that hand the children over).
    pub fn cache(&self) -> Option<&CacheView> {
        self.cache.as_ref()
    }

    /// The unfinished pods `job` controls (by its uid: a pod of an earlier Job of the same
    /// name is not its own).
    pub fn pods_of<'a>(&'a self, job: &Job) -> impl Iterator<Item = &'a Pod> {
        job.metadata
            .uid
            .as_deref()
            .and_then(|uid| self.pods_by_job.get(uid))
            .into_iter()
            .flatten()
            .map(|&i| &*self.pods[i])
    }
}

/// What a kind's desired state may depend on besides its own object: the children it
/// already has, as the watch caches hold them, and what pods answered its inquiry.
/// `render` and unit tests pass [`Observed::nothing`], which is an empty namespace.
#[derive(Clone, Copy)]
pub struct Observed<'a> {
    owner: Option<(&'a ChildStores, &'a str, &'a str)>,
    answers: Option<&'a super::Answers>,
    now: Option<Timestamp>,
}

impl<'a> Observed<'a> {
    /// Nothing exists yet: what the first reconcile in an empty namespace sees.
    pub fn nothing() -> Self {
        Self {
            owner: None,
            answers: None,
            now: None,
        }
    }

    /// The cached children of the object with `uid` in `namespace`.
    pub fn cached(stores: &'a ChildStores, namespace: &'a str, uid: &'a str) -> Self {
        Self {
            owner: Some((stores, namespace, uid)),
            answers: None,
            now: None,
        }
    }

    /// The same, at `now`: the instant the status is computed for too, so that a kind
    /// that starts work on a clock (a scheduled run) decides once, and its status says
    /// what it decided.
    #[must_use]
    pub fn at(self, now: Timestamp) -> Self {
        Self {
            now: Some(now),
            ..self
        }
    }

    /// The instant of this reconcile; `None` where no clock was given (`render`, tests).
    pub fn now(&self) -> Option<Timestamp> {
        self.now
    }

    /// The caches as the object sees them; `None` for [`Observed::nothing`].
    pub fn cache(&self) -> Option<CacheView> {
        let (stores, namespace, uid) = self.owner?;
        Some(CacheView {
            stores: stores.clone(),
            namespace: namespace.to_owned(),
            uid: uid.to_owned(),
        })
    }

    /// The cached unfinished pods of the Jobs the object controls, and the caches.
    pub fn job_pods(&self) -> JobPods {
        JobPods {
            pods: self.unfinished_job_pods(),
            cache: self.cache(),
        }
    }

    fn unfinished_job_pods(&self) -> Vec<Arc<Pod>> {
        let Some((stores, namespace, _)) = self.owner else {
            return Vec::new();
        };
        let jobs: std::collections::HashSet<String> = self
            .owned::<Job>()
            .iter()
            .filter_map(|j| j.metadata.uid.clone())
            .collect();
        if jobs.is_empty() {
            return Vec::new();
        }
        stores
            .job_pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && jobs.contains(&o.uid))
            })
            .collect()
    }

    /// The same, with what the pods answered the kind's inquiry.
    pub fn answered(self, answers: &'a super::Answers) -> Self {
        Self {
            answers: Some(answers),
            ..self
        }
    }

    /// What the pods answered the kind's inquiry; `None` when they were not asked.
    pub fn answers(&self) -> Option<&'a super::Answers> {
        self.answers
    }

    /// The children of kind `C` the object controls.
    pub fn owned<C: ChildKind>(&self) -> Vec<Arc<C>> {
        let Some((stores, namespace, uid)) = self.owner else {
            return Vec::new();
        };
        C::store(stores)
            .state()
            .into_iter()
            .filter(|c| controlled_by(&**c, namespace, uid))
            .collect()
    }
}

/// Whether `child` lives in `namespace` under the controller with `uid`.
pub fn controlled_by<C: Resource>(child: &C, namespace: &str, uid: &str) -> bool {
    child.meta().namespace.as_deref() == Some(namespace)
        && child
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// The shared watches of the child kinds: one reflector per kind, whose changes reach
/// every controller that [`trigger`](ChildWatches::trigger)s on them.
pub struct ChildWatches {
    client: Client,
    namespace: Option<String>,
    stores: ChildStores,
    writers: Writers,
    /// The controller owner of each child the watches saw deleted, with the child's
    /// namespace. A shared reflector tells its subscribers of new and changed objects
    /// only, so a deleted child reaches its owner's controller this way, to be made again.
    deleted: broadcast::Sender<(String, OwnerReference)>,
}

/// The owner reference of `obj`'s controller, if it has one.
fn controller_of(obj: &impl Resource) -> Option<&OwnerReference> {
    obj.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
}

/// The objects of kind `K` whose children were deleted, as `deleted` tells them. A
/// controller that falls more than [`SUBSCRIBER_BUFFER`] deletions behind misses some;
/// the resync period sets those back.
fn owners_of_deleted<K: Resource<DynamicType = ()>>(
    deleted: broadcast::Receiver<(String, OwnerReference)>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static {
    futures::stream::unfold(deleted, |mut deleted| async move {
        loop {
            match deleted.recv().await {
                Ok(owner) => return Some((owner, deleted)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        kind = K::kind(&()).as_ref(),
                        missed,
                        "missed deleted children; the resync sets them back"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter_map(|(namespace, owner)| async move {
        ObjectRef::from_owner_ref(Some(&namespace), &owner, ())
    })
}

impl ChildWatches {
    /// The caches the watches fill.
    pub fn stores(&self) -> ChildStores {
        self.stores.clone()
    }
}

fn watch<K: ChildKind>(
    api: Api<K>,
    writer: Writer<K>,
    deleted: broadcast::Sender<(String, OwnerReference)>,
) -> impl Future<Output = ()> + Send {
    let config = watcher::Config::default().labels(MANAGED_SELECTOR);
    watcher(api, config)
        .default_backoff()
        .modify(keep_own_fields)
        .reflect_shared(writer)
        .for_each(move |event| {
            match event {
                // A child deleted while the watch was down is gone from the relisted cache
                // without an event; the resync sets that one back.
                Ok(watcher::Event::Delete(child)) => {
                    if let (Some(namespace), Some(owner)) =
                        (child.namespace(), controller_of(&child))
                    {
                        // No receiver: no controller runs yet, and none needs telling.
                        let _ = deleted.send((namespace, owner.clone()));
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(kind = K::KIND, %error, "child watch failed; retrying")
                }
            }
            futures::future::ready(())
        })
}

/// Takes out of a cached child what no controller reads: every `managedFields` entry but
/// the operator's own applied set, which drift detection reads ([`crate::drift::drops_owned`]),
/// and that one it keeps as its JSON text ([`crate::drift::own_field_sets`] parses it
/// when read). As a tree of maps, a Deployment's field set takes many times the memory of its
/// text; the other entries (kube-controller-manager's status writes, a person's edits) are
/// never read. A cache holds every child in the cluster (docs/benchmarks.md has what
/// this saves).
pub fn keep_own_fields<K: Resource>(child: &mut K) {
    if let Some(entries) = child.meta_mut().managed_fields.as_mut() {
        entries.retain(crate::drift::is_own_apply);
        for fields in entries.iter_mut().filter_map(|m| m.fields_v1.as_mut()) {
            if !fields.0.is_string() {
                fields.0 = serde_json::Value::String(fields.0.to_string());
            }
        }
    }
}

/// The watch of the unfinished pods of the operator's Jobs.
fn watch_job_pods(api: Api<Pod>, writer: Writer<Pod>) -> impl Future<Output = ()> + Send {
    let config = watcher::Config::default()
        .labels(JOB_POD_SELECTOR)
        .fields(UNFINISHED_POD_FIELDS);
    watcher(api, config)
        .default_backoff()
        // Nothing reads who wrote which field of a pod (the operator never writes one), and
        // that is most of a cached pod.
        .modify(|pod| pod.metadata.managed_fields = None)
        .reflect_shared(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(kind = "Pod", %error, "pod watch failed; retrying");
            }
        })
}

/// The object of kind `K` that controls the Job that controls `pod`, if the Job is cached.
fn owner_of_job_of<K: Resource<DynamicType = ()>>(
    jobs: &Store<Job>,
    pod: &Pod,
) -> Option<ObjectRef<K>> {
    let namespace = pod.namespace()?;
    let job = ObjectRef::<Job>::from_owner_ref(Some(&namespace), controller_of(pod)?, ())?;
    let job = jobs.get(&job)?;
    ObjectRef::from_owner_ref(Some(&namespace), controller_of(&*job)?, ())
}

/// The API of `K` in one namespace, or in all of them.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    use super::keep_own_fields;
    use crate::drift;

    #[test]
    fn a_cached_child_keeps_only_the_operators_field_set_as_text_and_drift_still_reads_it() {
        let mut live: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "managedFields": [
                {"manager": "rigging-operator", "operation": "Apply",
                 "fieldsV1": {"f:spec": {"f:replicas": {}, "f:paused": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update",
                 "subresource": "status", "fieldsV1": {"f:status": {"f:replicas": {}}}},
                {"manager": "kubectl-edit", "operation": "Update",
                 "fieldsV1": {"f:spec": {"f:minReadySeconds": {}}}}
            ]},
            "spec": {"replicas": 2, "paused": false, "minReadySeconds": 5,
                     "selector": {}, "template": {}}
        }))
        .unwrap();
        keep_own_fields(&mut live);
        let entries = live.metadata.managed_fields.as_ref().unwrap();
        assert_eq!(entries.len(), 1);
        let fields = entries[0].fields_v1.as_ref().unwrap();
        assert!(fields.0.is_string(), "{fields:?}");
        let owned: Vec<_> = drift::own_field_sets(&live.metadata).collect();
        assert_eq!(owned.len(), 1);
        let owned = &owned[0];
        assert_eq!(
            **owned,
            json!({"f:spec": {"f:replicas": {}, "f:paused": {}}})
        );
        // What the operator no longer applies (replicas, under an autoscaler) is drift.
        assert!(drift::drops_owned(
            owned,
            &json!({"spec": {"paused": false}})
        ));
        assert!(!drift::drops_owned(
            owned,
            &json!({"spec": {"paused": false, "replicas": 2}})
        ));
        // Trimming twice changes nothing.
        let once = live.clone();
        keep_own_fields(&mut live);
        assert_eq!(live, once);
    }
}
