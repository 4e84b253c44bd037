//! The chart's operator as users run it — two replicas, its RBAC, probes and
//! securityContext, the webhook behind its Service — seen through what it does for pods on
//! the node: injected pods that run, a rollout of the operator that refuses no pod, and a
//! deleted leader whose successor takes over without rewriting what is settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::node::{
    ClientPod, OPERATOR_DISRUPTION, POD_SETTLE, RELEASE, RELEASE_NAMESPACE, all_pods_ready,
    node_cluster, wait_for_condition,
};
use crate::support::{Cluster, eventually};

/// The label selector of the chart's operator pods.
const OPERATOR_PODS: &str =
    "app.kubernetes.io/name=rigging-operator,app.kubernetes.io/instance=rigging";

/// The Deployment of docs/webhook.md: Redis with the health monitor and the metrics
/// adapter injected by the webhook.
fn injected_redis() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cache"},
        "spec": {
            "selector": {"matchLabels": {"app": "cache"}},
            "template": {
                "metadata": {
                    "labels": {"app": "cache", "rigging.dev/inject": "enabled"},
                    "annotations": {
                        "rigging.dev/sidecars": "health,metrics",
                        "rigging.dev/health-checks": "redis://127.0.0.1:6379",
                        "rigging.dev/metrics-source": "redis://127.0.0.1:6379",
                    },
                },
                "spec": {"containers": [{"name": "redis", "image": "redis:7"}]},
            },
        },
    })
}

#[tokio::test]
async fn a_labelled_deployments_pods_run_with_the_injected_sidecars() {
    let Some(cluster) =
        node_cluster("a_labelled_deployments_pods_run_with_the_injected_sidecars").await
    else {
        return;
    };
    let ns = cluster.namespace("inject").await;
    cluster.kubectl_with_input(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&injected_redis().to_string()),
    );
    wait_for_condition(&cluster, &ns.name, "deployment/cache", "Available");
    let names = all_pods_ready(&cluster, &ns.name, "app=cache", 1).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pod = pods.get(&names[0]).await.expect("the pod");
    let spec = pod.spec.as_ref().expect("spec");

    // Native sidecars: init containers that keep running, the app alone in `containers`.
    let sidecars: Vec<(&str, Option<&str>)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.restart_policy.as_deref()))
        .collect();
    assert_eq!(
        sidecars,
        [
            ("rigging-metrics", Some("Always")),
            ("rigging-health", Some("Always"))
        ]
    );
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["redis"]);
    // Running and ready: each sidecar started, and the app's readiness (the monitor's
    // /readyz, which PINGs Redis) passes.
    let status = pod.status.as_ref().expect("status");
    for c in status.init_container_statuses.iter().flatten() {
        assert!(
            c.started == Some(true)
                && c.ready
                && c.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
            "{c:?}"
        );
    }
    let probe = spec.containers[0].readiness_probe.as_ref().expect("probe");
    assert_eq!(
        probe.http_get.as_ref().and_then(|g| g.path.as_deref()),
        Some("/readyz"),
        "the app's readiness is the health monitor's"
    );

    // Serving: the metrics adapter's port gives Prometheus text with Redis's own figures,
    // and the monitor answers on its port, from another pod.
    let ip = status.pod_ip.clone().expect("pod IP");
    let client = ClientPod::start(&cluster, &ns.name, "client", "curlimages/curl:8.10.1").await;
    let metrics = client.exec_ok(&[
        "curl",
        "-fsS",
        "--max-time",
        "10",
        &format!("http://{ip}:9121/metrics"),
    ]);
    assert!(
        metrics.contains("# TYPE redis_up gauge") && metrics.contains("redis_up 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redis_connected_clients"),
        "Redis INFO figures: {metrics}"
    );
    let ready = client.exec_ok(&[
        "curl",
        "-fsS",
        "--max-time",
        "10",
        &format!("http://{ip}:9102/readyz"),
    ]);
    assert!(!ready.is_empty());
}

/// What the API server answered to the labelled pods created during a rollout.
#[derive(Default)]
struct Creations {
    injected: usize,
    refused: Vec<String>,
}

/// Creates labelled pods (server-side dry runs: the API server calls admission webhooks
/// for them as for any creation, and nothing is scheduled) one after another until `stop`,
/// and tells what was answered.
async fn create_labelled_pods(pods: Api<Pod>, stop: Arc<AtomicBool>) -> Creations {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "probe",
            "labels": {"rigging.dev/inject": "enabled"},
            "annotations": {
                "rigging.dev/sidecars": "metrics",
                "rigging.dev/metrics-source": "redis://127.0.0.1:6379",
            },
        },
        "spec": {"containers": [{"name": "redis", "image": "redis:7-alpine"}]},
    }))
    .expect("a pod");
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut creations = Creations::default();
    // Bounded, whatever happens to the test: a few minutes at most.
    for _ in 0..6000 {
        if stop.load(Ordering::Acquire) {
            break;
        }
        match pods.create(&params, &pod).await {
            Ok(created) => {
                let injected = created
                    .spec
                    .and_then(|s| s.init_containers)
                    .is_some_and(|c| c.iter().any(|c| c.name == "rigging-metrics"));
                if injected {
                    creations.injected += 1;
                } else {
                    creations.refused.push("created without its sidecar".into());
                }
            }
            Err(error) => creations.refused.push(error.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    creations
}

/// The names of the operator's pods, and of those among them that are terminating.
async fn operator_pods(cluster: &Cluster) -> (Vec<String>, Vec<String>) {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), RELEASE_NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels(OPERATOR_PODS))
        .await
        .expect("list the operator's pods")
        .items;
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let terminating = list
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .map(name)
        .collect();
    (list.iter().map(name).collect(), terminating)
}

#[tokio::test]
async fn no_labelled_pod_is_refused_while_the_operator_rolls_over() {
    let Some(cluster) =
        node_cluster("no_labelled_pod_is_refused_while_the_operator_rolls_over").await
    else {
        return;
    };
    let _alone = OPERATOR_DISRUPTION.lock().await;
    let ns = cluster.namespace("webhook-rollout").await;
    let (before, _) = operator_pods(&cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    // A few clients at once, as a cluster's controllers would be: a review in flight at
    // the moment a replica stops is what a careless stop fails.
    let streams: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(create_labelled_pods(
                Api::namespaced(cluster.client.clone(), &ns.name),
                stop.clone(),
            ))
        })
        .collect();

    cluster.kubectl_ok(&[
        "-n",
        RELEASE_NAMESPACE,
        "rollout",
        "restart",
        &format!("deployment/{RELEASE}"),
    ]);
    cluster.kubectl_ok(&[
        "-n",
        RELEASE_NAMESPACE,
        "rollout",
        "status",
        &format!("deployment/{RELEASE}"),
        &format!("--timeout={}s", POD_SETTLE.as_secs()),
    ]);
    // The rollout is done when the new pods are ready; the old ones stop after that, and
    // their stopping is what this is about.
    eventually("every old operator pod gone", POD_SETTLE, || async {
        let (now, terminating) = operator_pods(&cluster).await;
        (terminating.is_empty() && now.iter().all(|p| !before.contains(p))).then_some(())
    })
    .await;
    stop.store(true, Ordering::Release);
    let mut creations = Creations::default();
    for stream in streams {
        let each = stream.await.expect("the creations");
        creations.injected += each.injected;
        creations.refused.extend(each.refused);
    }
    assert!(
        creations.refused.is_empty(),
        "{} of {} labelled pods refused during the rollout: {:?}",
        creations.refused.len(),
        creations.refused.len() + creations.injected,
        creations.refused
    );
    eprintln!(
        "{} labelled pods created during the operator's rollout",
        creations.injected
    );
    assert!(creations.injected > 0, "no pod was created at all");
}

/// The holder of the operator's Lease, once someone holds it.
async fn leader(leases: &Api<Lease>) -> Option<String> {
    leases
        .get(RELEASE)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// When the operator last applied `kind/name` in `namespace`, as its managedFields say.
fn applied_at(cluster: &Cluster, namespace: &str, object: &str) -> String {
    let out = cluster.kubectl_ok(&[
        "get",
        "-n",
        namespace,
        object,
        "--show-managed-fields",
        "-o",
        "json",
    ]);
    let value: Value = serde_json::from_str(&out).expect("JSON");
    value["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["manager"] == "rigging-operator" && m["operation"] == "Apply")
        .map(|m| m["time"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("{object}: not applied by rigging-operator: {out}"))
}

/// The `applied` lines (one per write of a child) of the operator pod `pod` for objects
/// named `name` in `namespace`.
fn writes(cluster: &Cluster, pod: &str, namespace: &str, name: &str) -> Vec<String> {
    let log = cluster.kubectl_ok(&["logs", "-n", RELEASE_NAMESPACE, pod]);
    log.lines()
        .filter(|line| {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                return false;
            };
            let fields = &entry["fields"];
            fields["message"] == "applied"
                && fields["namespace"] == namespace
                && fields["name"] == name
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn deleting_the_leaders_pod_hands_over_without_writing_settled_children_again() {
    let Some(cluster) =
        node_cluster("deleting_the_leaders_pod_hands_over_without_writing_settled_children_again")
            .await
    else {
        return;
    };
    let _alone = OPERATOR_DISRUPTION.lock().await;
    let ns = cluster.namespace("takeover").await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), RELEASE_NAMESPACE);
    all_pods_ready(&cluster, RELEASE_NAMESPACE, OPERATOR_PODS, 2).await;
    let old_leader = eventually("a leader", POD_SETTLE, || leader(&leases)).await;
    let (pods, _) = operator_pods(&cluster).await;
    let follower = pods
        .iter()
        .find(|p| **p != old_leader)
        .expect("a second replica")
        .clone();

    // Settled under the old leader: a ReplicatedService, Ready, its children applied.
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/replicated-service/minimal.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "replicatedservice/hello", "Ready");
    let children = ["deployment/hello", "service/hello"];
    let applied: Vec<String> = children
        .iter()
        .map(|c| applied_at(&cluster, &ns.name, c))
        .collect();

    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        RELEASE_NAMESPACE,
        &old_leader,
        "--wait=false",
    ]);
    // The stopping leader releases the Lease, and the replica that stood by takes it.
    let new_leader = eventually("another replica leading", POD_SETTLE, || async {
        leader(&leases).await.filter(|h| *h != old_leader)
    })
    .await;
    assert_eq!(new_leader, follower, "the other replica leads");

    // It reconciles what changes from now on...
    let next = std::fs::read_to_string(
        crate::support::root().join("examples/replicated-service/minimal.yaml"),
    )
    .expect("the example")
    .replace("name: hello", "name: hello-next");
    cluster.kubectl_with_input(&["apply", "-n", &ns.name, "-f", "-"], Some(&next));
    wait_for_condition(&cluster, &ns.name, "replicatedservice/hello-next", "Ready");
    let new_writes = writes(&cluster, &new_leader, &ns.name, "hello-next");
    assert!(
        !new_writes.is_empty(),
        "the new leader's log shows the children it writes"
    );

    // ...and leaves what was settled alone: its reconcile of every object at takeover
    // found the children as desired, and wrote none of them again.
    let after: Vec<String> = children
        .iter()
        .map(|c| applied_at(&cluster, &ns.name, c))
        .collect();
    assert_eq!(after, applied, "{children:?} applied again at the takeover");
    let rewrites = writes(&cluster, &new_leader, &ns.name, "hello");
    assert!(
        rewrites.is_empty(),
        "the new leader applied settled children again: {rewrites:#?}"
    );
    // The Deployment's own replacement for the deleted pod is running before the next test
    // disrupts the operator.
    all_pods_ready(&cluster, RELEASE_NAMESPACE, OPERATOR_PODS, 2).await;
}
