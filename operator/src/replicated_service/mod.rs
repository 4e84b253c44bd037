//! The ReplicatedService controller (book ch. 5): a Deployment behind a Service, with an
//! optional PodDisruptionBudget, HorizontalPodAutoscaler and TLS terminator.
//!
//! [`desired`] and [`status`] are pure; [`reconcile`] does the IO.

pub mod desired;
pub mod reconcile;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use rigging_crds::ReplicatedService;

use crate::context::{ChildStores, Config, Context};
use crate::metrics::Metrics;

/// Label selector of every child the operator manages: its watches see nothing else.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=rigging-operator";

/// Runs the controller until a shutdown signal: watches ReplicatedServices in `namespace`
/// (every namespace when `None`) and the children it manages, and reconciles each change.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Metrics,
    instance: Option<String>,
    namespace: Option<String>,
) {
    let namespace = namespace.as_deref();
    let children = watcher::Config::default().labels(MANAGED_SELECTOR);
    let (deployments, deployments_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (pdbs, pdbs_writer) = reflector::store();
    let (hpas, hpas_writer) = reflector::store();
    let deployment_events = reflector(
        deployments_writer,
        watcher(api::<Deployment>(&client, namespace), children.clone()),
    )
    .default_backoff()
    .touched_objects();
    let service_events = reflector(
        services_writer,
        watcher(api::<Service>(&client, namespace), children.clone()),
    )
    .default_backoff()
    .touched_objects();
    let pdb_events = reflector(
        pdbs_writer,
        watcher(
            api::<PodDisruptionBudget>(&client, namespace),
            children.clone(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let hpa_events = reflector(
        hpas_writer,
        watcher(api::<HorizontalPodAutoscaler>(&client, namespace), children),
    )
    .default_backoff()
    .touched_objects();

    let stores = ChildStores {
        deployments,
        services,
        pdbs,
        hpas,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        metrics,
        stores,
        instance,
    ));
    Controller::new(
        api::<ReplicatedService>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .owns_stream(deployment_events)
    .owns_stream(service_events)
    .owns_stream(pdb_events)
    .owns_stream(hpa_events)
    .shutdown_on_signal()
    .run(reconcile::reconcile, reconcile::error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
            Err(error) => tracing::debug!(%error, "reconcile did not complete"),
        }
    })
    .await;
}

/// The API of `K` in one namespace, or in all of them.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}
