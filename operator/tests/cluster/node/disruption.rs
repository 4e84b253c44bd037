//! Drains against a ReplicatedService's PodDisruptionBudget, through the eviction API that
//! `kubectl drain` calls (a real drain would empty the node of every other test's pods):
//! a pod that is not ready can always be evicted, whatever the ready ones leave, and a
//! budget that could never let a drain through is refused before it is applied.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams};
use rigging_crds::ReplicatedService;
use serde_json::json;

use crate::node::{POD_SETTLE, node_cluster};
use crate::support::{SETTLE, create, eventually, replicated_service};

/// Whether the eviction API took `pod` (or `Err` with its answer).
async fn evict(pods: &Api<Pod>, pod: &str) -> Result<(), String> {
    match pods.evict(pod, &EvictParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err(format!("{} {}", e.code, e.message)),
        Err(e) => panic!("evict {pod}: {e}"),
    }
}

#[tokio::test]
async fn a_pod_that_is_not_ready_can_be_evicted_whatever_the_budget_keeps() {
    let Some(cluster) =
        node_cluster("a_pod_that_is_not_ready_can_be_evicted_whatever_the_budget_keeps").await
    else {
        return;
    };
    let ns = cluster.namespace("drain").await;
    // Three pods, ready only once the test says so: one is, two are not. The budget keeps
    // two available, which the ready pod alone falls short of.
    let object = replicated_service(
        "batch",
        &ns.name,
        json!({
            "replicas": 3,
            "disruptionBudget": {"maxUnavailable": 1},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "app",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                    "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]},
                                       "periodSeconds": 1}
                }]
            }}
        }),
    );
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(&services, object).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let running = eventually("three Running pods", POD_SETTLE, || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=batch"))
            .await
            .ok()?
            .items;
        let names: Vec<String> = list
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (names.len() == 3).then_some(names)
    })
    .await;
    cluster.kubectl_ok(&[
        "exec",
        "-n",
        &ns.name,
        &running[0],
        "--",
        "touch",
        "/tmp/ready",
    ]);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually(
        "the budget counting one healthy pod of three",
        SETTLE,
        || async {
            let status = pdbs.get("batch").await.ok()?.status?;
            (status.expected_pods == 3
                && status.current_healthy == 1
                && status.desired_healthy == 2)
                .then_some(())
        },
    )
    .await;

    // The ready pod is what the budget protects; a pod that is not serving is not.
    let refused = evict(&pods, &running[0]).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("429")),
        "the only ready pod evicted: {refused:?}"
    );
    evict(&pods, &running[1])
        .await
        .expect("a pod that is not ready is evicted (unhealthyPodEvictionPolicy: AlwaysAllow)");
}

#[tokio::test]
async fn an_active_passive_budget_that_would_block_every_drain_is_refused() {
    let Some(cluster) =
        node_cluster("an_active_passive_budget_that_would_block_every_drain_is_refused").await
    else {
        return;
    };
    let ns = cluster.namespace("drain-ap").await;
    let yaml = std::fs::read_to_string(
        crate::support::root().join("examples/replicated-service/active-passive.yaml"),
    )
    .unwrap();
    let mut object: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    object["spec"]["disruptionBudget"] = json!({"maxUnavailable": 1});
    object["metadata"]["namespace"] = json!(ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(&services, object).await;
    let degraded = eventually("a Degraded condition", SETTLE, || async {
        let status = services.get("scheduler").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
    })
    .await;
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded
            .message
            .contains("spec.disruptionBudget.maxUnavailable")
            && degraded.message.contains("only the leader's pod"),
        "{}",
        degraded.message
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(pdbs.get_opt("scheduler").await.unwrap().is_none());
}
