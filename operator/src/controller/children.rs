//! The child kinds Rigging's controllers own, their watch caches, and the watches that fill
//! them: one reflector per child kind, shared by every controller.

use std::fmt::Debug;
use std::future::Future;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Label selector of every child the operator manages: its watches see nothing else.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=rigging-operator";

/// How many changes a shared watch buffers for each controller that subscribed to it.
const SUBSCRIBER_BUFFER: usize = 256;

/// One child object a kind asks for.
// An object has a handful of children, built once per reconcile: boxing the large
// variants would add indirection and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    /// Runs stateless pods.
    Deployment(Deployment),
    /// Load-balances over pods.
    Service(Service),
    /// Limits voluntary disruptions.
    PodDisruptionBudget(PodDisruptionBudget),
    /// Scales a Deployment.
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
}

impl Child {
    /// The child as JSON, as it is applied and rendered.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Child::Deployment(c) => serde_json::to_value(c),
            Child::Service(c) => serde_json::to_value(c),
            Child::PodDisruptionBudget(c) => serde_json::to_value(c),
            Child::HorizontalPodAutoscaler(c) => serde_json::to_value(c),
        }
    }
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

macro_rules! child_kind {
    ($type:ty, $variant:ident, $field:ident) => {
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
    };
}

child_kind!(Deployment, Deployment, deployments);
child_kind!(Service, Service, services);
child_kind!(PodDisruptionBudget, PodDisruptionBudget, pdbs);
child_kind!(HorizontalPodAutoscaler, HorizontalPodAutoscaler, hpas);

/// The children of one object as the API server returned them from the apply (or as the
/// watch cache holds them, when nothing had to change): what its status is computed from.
#[derive(Debug, Clone, Default)]
pub struct Applied(pub Vec<Child>);

impl Applied {
    /// The applied child of kind `K` named `name`.
    pub fn get<K: ChildKind>(&self, name: &str) -> Option<&K> {
        self.0
            .iter()
            .filter_map(K::from_child)
            .find(|c| c.name_any() == name)
    }
}

/// Watch caches of the children the operator owns. Comparing against them is what lets an
/// unchanged object cost no API request.
#[derive(Clone)]
pub struct ChildStores {
    /// Deployments labelled [`MANAGED_SELECTOR`].
    pub deployments: Store<Deployment>,
    /// Services with that label.
    pub services: Store<Service>,
    /// PodDisruptionBudgets with that label.
    pub pdbs: Store<PodDisruptionBudget>,
    /// HorizontalPodAutoscalers with that label.
    pub hpas: Store<HorizontalPodAutoscaler>,
}

impl ChildStores {
    /// Waits until every cache holds its initial list, so that the first reconciles after
    /// a start (or a change of leader) compare against what exists instead of re-applying
    /// every child. Returns early if a cache's writer is gone (the controller is stopping).
    pub async fn wait_until_ready(&self) {
        let _ = tokio::join!(
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.hpas.wait_until_ready(),
        );
    }
}

/// The shared watches of the child kinds: one reflector per kind, whose changes reach
/// every controller that [`trigger`](ChildWatches::trigger)s on them.
pub struct ChildWatches {
    client: Client,
    namespace: Option<String>,
    stores: ChildStores,
    deployments: Writer<Deployment>,
    services: Writer<Service>,
    pdbs: Writer<PodDisruptionBudget>,
    hpas: Writer<HorizontalPodAutoscaler>,
}

impl ChildWatches {
    /// Watches of the managed children in `namespace` (every namespace when `None`).
    /// Nothing is watched until [`run`](ChildWatches::run).
    pub fn new(client: Client, namespace: Option<&str>) -> Self {
        let (deployments, deployments_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        let (services, services_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        let (pdbs, pdbs_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        let (hpas, hpas_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        Self {
            client,
            namespace: namespace.map(str::to_owned),
            stores: ChildStores {
                deployments,
                services,
                pdbs,
                hpas,
            },
            deployments: deployments_writer,
            services: services_writer,
            pdbs: pdbs_writer,
            hpas: hpas_writer,
        }
    }

    /// The caches the watches fill.
    pub fn stores(&self) -> ChildStores {
        self.stores.clone()
    }

    /// Makes a change of any child reconcile its owner in `controller`.
    pub fn trigger<K>(&self, controller: Controller<K>) -> Controller<K>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    {
        // Subscribing cannot fail on a shared writer.
        let mut controller = controller;
        if let Some(s) = self.deployments.subscribe() {
            controller = controller.owns_shared_stream(s);
        }
        if let Some(s) = self.services.subscribe() {
            controller = controller.owns_shared_stream(s);
        }
        if let Some(s) = self.pdbs.subscribe() {
            controller = controller.owns_shared_stream(s);
        }
        if let Some(s) = self.hpas.subscribe() {
            controller = controller.owns_shared_stream(s);
        }
        controller
    }

    /// Runs the watches; never returns on its own.
    pub fn run(self) -> impl Future<Output = ()> + Send {
        let Self {
            client,
            namespace,
            deployments,
            services,
            pdbs,
            hpas,
            ..
        } = self;
        let ns = namespace.as_deref();
        let a = watch(api::<Deployment>(&client, ns), deployments);
        let b = watch(api::<Service>(&client, ns), services);
        let c = watch(api::<PodDisruptionBudget>(&client, ns), pdbs);
        let d = watch(api::<HorizontalPodAutoscaler>(&client, ns), hpas);
        async move {
            tokio::join!(a, b, c, d);
        }
    }
}

fn watch<K: ChildKind>(api: Api<K>, writer: Writer<K>) -> impl Future<Output = ()> + Send {
    let config = watcher::Config::default().labels(MANAGED_SELECTOR);
    watcher(api, config)
        .default_backoff()
        .reflect_shared(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(kind = K::KIND, %error, "child watch failed; retrying");
            }
        })
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
