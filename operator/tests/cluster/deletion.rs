//! An object being deleted gets nothing from the operator. In a foreground deletion (Argo
//! CD's default) the object stays, marked, while the garbage collector deletes its
//! children; an operator that still reconciled it would create again what the collector
//! just removed, and a work queue would start Jobs for items nobody wants any more.
//!
//! Each test holds one child with a finalizer of its own, so that the deletion stays in
//! that state for as long as the test looks, and the operator resyncs every second.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use rigging_crds::{ReplicatedService, WorkQueue};
use serde_json::{Value, json};

use crate::node::POD_SETTLE;
use crate::support::{Cluster, Operator, SETTLE, cluster, create, eventually, replicated_service};

const HOLD: &str = "test.rigging.dev/hold";
/// How long the deletion is watched while held: several resyncs of the operator.
const WATCH: Duration = Duration::from_secs(6);

fn operator(cluster: &Cluster, namespace: &str) -> Operator {
    Operator::start_with(
        cluster,
        namespace,
        "operator",
        &["--no-leader-election", "--resync-period", "1s"],
    )
}

async fn set_hold<K>(api: &Api<K>, name: &str, held: bool)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let finalizers: Value = if held { json!([HOLD]) } else { json!(null) };
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
    )
    .await
    .unwrap_or_else(|e| panic!("finalizer on {name}: {e}"));
}

#[tokio::test]
async fn a_service_being_deleted_gets_none_of_its_children_back() {
    let Some(cluster) = cluster("a_service_being_deleted_gets_none_of_its_children_back").await
    else {
        return;
    };
    let ns = cluster.namespace("deleting-rsvc").await;
    let _operator = operator(&cluster, &ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(cluster.client.clone(), &ns.name);
    let object = replicated_service("web", &ns.name, json!({}));
    create(&services, object).await;
    eventually("the Deployment and the Service", SETTLE, || async {
        let both = deployments.get_opt("web").await.ok()??;
        svcs.get_opt("web").await.ok()?.map(|_| both)
    })
    .await;
    set_hold(&deployments, "web", true).await;

    services
        .delete("web", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("the Service garbage-collected", SETTLE, || async {
        matches!(svcs.get_opt("web").await, Ok(None)).then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + WATCH;
    while tokio::time::Instant::now() < deadline {
        let rs = services.get("web").await.expect("held by the Deployment");
        assert!(rs.metadata.deletion_timestamp.is_some());
        assert!(
            svcs.get_opt("web").await.unwrap().is_none(),
            "the operator created the Service again while its owner is being deleted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    set_hold(&deployments, "web", false).await;
    eventually("the ReplicatedService gone", SETTLE, || async {
        matches!(services.get_opt("web").await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_queue_being_deleted_starts_no_job() {
    let Some(cluster) = cluster("a_queue_being_deleted_starts_no_job").await else {
        return;
    };
    let ns = cluster.namespace("deleting-queue").await;
    let _operator = operator(&cluster, &ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Two of four items run at a time, and none finishes on its own.
    let queue = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "WorkQueue",
        "metadata": {"name": "held", "namespace": ns.name},
        "spec": {
            "items": ["a", "b", "c", "d"],
            "parallelism": 2,
            "worker": {"template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "worker", "image": "busybox:1.36",
                                "command": ["sleep", "3600"]}]
            }}}
        }
    });
    create(&queues, queue).await;
    let list = || async {
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| o.kind == "WorkQueue" && o.name == "held")
            })
            .collect::<Vec<_>>()
    };
    let running = eventually("two Jobs", SETTLE, || async {
        let running = list().await;
        (running.len() == 2).then_some(running)
    })
    .await;
    let before: BTreeSet<String> = running.iter().map(|j| j.uid().unwrap()).collect();
    let held = running[0].name_any();
    set_hold(&jobs, &held, true).await;

    queues
        .delete("held", &DeleteParams::foreground())
        .await
        .unwrap();
    let other = running[1].uid().unwrap();
    // Deleted in the foreground too, the Job goes only once its pod is gone from the node:
    // the bound of pods finishing, not of API calls.
    eventually("the other Job garbage-collected", POD_SETTLE, || async {
        let live = list().await;
        (!live.iter().any(|j| j.uid().as_ref() == Some(&other))).then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + WATCH;
    while tokio::time::Instant::now() < deadline {
        let queue = queues.get("held").await.expect("held by its Job");
        assert!(queue.metadata.deletion_timestamp.is_some());
        let started: Vec<String> = list()
            .await
            .iter()
            .filter(|j| !before.contains(&j.uid().unwrap()))
            .map(ResourceExt::name_any)
            .collect();
        assert!(
            started.is_empty(),
            "the operator started {started:?} for a queue being deleted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    set_hold(&jobs, &held, false).await;
    eventually("the WorkQueue gone", SETTLE, || async {
        matches!(queues.get_opt("held").await, Ok(None)).then_some(())
    })
    .await;
}
