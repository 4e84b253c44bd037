//! Settled objects cost no write. Every example of every kind is applied, its pods run on
//! the node, and once the operator has converged its resyncs (every second here) apply
//! nothing: what the API server stores holds what the operator applies, defaults and
//! dropped zero values included. A field the server drops on every apply would show here
//! as an apply per resync, forever.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use rigging_crds::ReplicatedService;
use serde_json::json;

use crate::support::{Operator, SETTLE, cluster, create, eventually, examples, replicated_service};

/// How long the operator may take to converge on an example folder, pods included.
const CONVERGE: Duration = Duration::from_secs(180);
/// A window of several resyncs in which a settled operator must apply nothing.
const QUIET: Duration = Duration::from_secs(5);

async fn every_example_settles(test: &str, folder: &str) {
    let Some(cluster) = cluster(test).await else {
        return;
    };
    let ns = cluster.namespace(&format!("steady-{folder}")).await;
    let operator = Operator::start_with(
        &cluster,
        &ns.name,
        "operator",
        &["--no-leader-election", "--resync-period", "1s"],
    );
    for (path, _) in examples(folder) {
        cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", &path]);
    }
    assert_settles(&operator, folder).await;
}

/// Waits for a window of [`QUIET`] in which `operator` applies nothing; fails after
/// [`CONVERGE`] naming the children it still applied in the last window.
async fn assert_settles(operator: &Operator, folder: &str) {
    let deadline = Instant::now() + CONVERGE;
    let mut before = eventually(
        &format!("{folder}: the operator's first writes"),
        SETTLE,
        || async {
            operator
                .applied()
                .await
                .filter(|applied| applied.values().sum::<f64>() > 0.0)
        },
    )
    .await;
    loop {
        tokio::time::sleep(QUIET).await;
        let after = operator.applied().await.unwrap_or_default();
        let moved: Vec<String> = after
            .iter()
            .filter(|(labels, value)| before.get(*labels) != Some(value))
            .map(|(labels, value)| {
                format!(
                    "{labels}: {} -> {value}",
                    before.get(labels).unwrap_or(&0.0)
                )
            })
            .collect();
        if moved.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{folder}: still applying after {CONVERGE:?}: {moved:?}"
        );
        before = after;
    }
}

#[tokio::test]
async fn every_replicated_service_example_settles_with_no_writes() {
    every_example_settles(
        "every_replicated_service_example_settles_with_no_writes",
        "replicated-service",
    )
    .await;
}

#[tokio::test]
async fn every_sharded_redis_example_settles_with_no_writes() {
    every_example_settles(
        "every_sharded_redis_example_settles_with_no_writes",
        "sharded-redis",
    )
    .await;
}

#[tokio::test]
async fn every_sharded_http_example_settles_with_no_writes() {
    every_example_settles(
        "every_sharded_http_example_settles_with_no_writes",
        "sharded-http",
    )
    .await;
}

#[tokio::test]
async fn every_work_queue_example_settles_with_no_writes() {
    every_example_settles(
        "every_work_queue_example_settles_with_no_writes",
        "work-queue",
    )
    .await;
}

#[tokio::test]
async fn every_scatter_gather_example_settles_with_no_writes() {
    every_example_settles(
        "every_scatter_gather_example_settles_with_no_writes",
        "scatter-gather",
    )
    .await;
}

#[tokio::test]
async fn a_new_autoscaled_service_writes_its_status_once_while_its_pods_are_made_and_scaled() {
    let Some(cluster) = cluster(
        "a_new_autoscaled_service_writes_its_status_once_while_its_pods_are_made_and_scaled",
    )
    .await
    else {
        return;
    };
    let ns = cluster.namespace("status-writes").await;
    let operator = Operator::start_with(
        &cluster,
        &ns.name,
        "operator",
        &["--no-leader-election", "--resync-period", "1s"],
    );
    // Pods that never get ready (nothing listens on 9999), so that no condition changes:
    // what moves is the Deployment, its ReplicaSet and its pods.
    let spec = json!({
        "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
        "template": {"spec": {"containers": [{
            "name": "app",
            "image": crate::support::APP_IMAGE,
            "readinessProbe": {"tcpSocket": {"port": 9999}}
        }]}}
    });
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(&services, replicated_service("web", &ns.name, spec)).await;
    // The Deployment is made with the API server's default of one replica; its controller
    // makes a ReplicaSet, which makes a pod; the autoscaler scales it to its minimum of 2;
    // the ReplicaSet makes the second pod. Each of these changed the status before.
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    // CONVERGE, not SETTLE: the autoscaler acts on its 15 s sync period, and pods come
    // slower than that on a loaded node.
    eventually("the autoscaler's 2 pods of web", CONVERGE, || async {
        let d = deployments.get_opt("web").await.ok()??;
        let status = d.status.as_ref()?;
        (d.spec.as_ref()?.replicas == Some(2)
            && status.observed_generation == d.metadata.generation
            && status.replicas == Some(2))
        .then_some(())
    })
    .await;
    // Several resyncs (one a second) after the last of them.
    tokio::time::sleep(QUIET).await;
    let status = services.get_status("web").await.unwrap().status.unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (Some(2), Some(0)));
    assert_eq!(
        operator.status_writes("ReplicatedService").await,
        Some(1.0),
        "one status write: {status:?}"
    );
}
