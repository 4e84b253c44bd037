//! Every example in `examples/` reaches Ready on the node, with every pod Running and
//! Ready, and does what its README says, seen from a client pod.

use crate::node::{ClientPod, all_pods_ready, node_cluster, wait_for_condition};

#[tokio::test]
async fn the_minimal_replicated_service_serves_through_its_service() {
    let Some(cluster) =
        node_cluster("the_minimal_replicated_service_serves_through_its_service").await
    else {
        return;
    };
    let ns = cluster.namespace("ex-minimal").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/replicated-service/minimal.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "replicatedservice/hello", "Ready");
    all_pods_ready(&cluster, &ns.name, "app.kubernetes.io/name=hello", 1).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", "curlimages/curl:8.10.1").await;
    let page = client.exec_ok(&["curl", "-fsS", "--max-time", "10", "http://hello:8080/"]);
    assert!(page.contains("Welcome to nginx"), "{page}");
}
