//! ScatterGathers on a real API server, with an operator of the test's own on the host:
//! the example is accepted, every rule of the CRD refuses its bad case with the words
//! `render` gives, and the operator makes the leaves and the root, owned by the
//! ScatterGather, or says in the status and an Event why it cannot. (Pods and traffic are
//! `node::scatter_gather`'s.)

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::Api;
use rigging_crds::ScatterGather;
use rigging_crds::sidecar::gather::GatherConfig;
use serde_json::{Value, json};

use crate::crds::{
    assert_examples_accepted_and_bad_ones_refused, assert_invalid_spec_said, kind_cluster,
};
use crate::support::{SETTLE, eventually};

/// A valid ScatterGather of two shards, `change` laid over it.
fn scatter_gather(name: &str, namespace: &str, change: &Value) -> Value {
    let mut object = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "ScatterGather",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "shards": 2,
            "replicasPerShard": 2,
            "port": 8080,
            "merge": {"sum": {"path": "votes"}},
            "template": {"spec": {"containers": [{
                "name": "leaf", "image": "busybox:1.36",
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}
            }]}},
        },
    });
    crate::support::merge(&mut object, change);
    object
}

/// One bad case per rule: what is changed, and the words of the rule's message.
fn bad_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "merge-and-merger",
            json!({"spec": {"merger": {"container": {"name": "m", "image": "m"}, "port": 9000}}}),
            "set exactly one of merge (a built-in merge) and merger",
        ),
        (
            "two-merges",
            json!({"spec": {"merge": {"first": {}}}}),
            "set exactly one of concat, topK, sum and first",
        ),
        (
            "min-over-shards",
            json!({"spec": {"minShards": 3}}),
            "minShards cannot be more than shards",
        ),
        (
            "hedge-one-replica",
            json!({"spec": {"replicasPerShard": 1, "hedge": {"after": "p95"}}}),
            "hedge sends a backup request to another replica of the shard",
        ),
        (
            "hedge-after",
            json!({"spec": {"hedge": {"after": "soon"}}}),
            "after must be a quantile of the shard's recent latencies",
        ),
        (
            "hedge-budget",
            json!({"spec": {"hedge": {"after": "p95", "budget": "five"}}}),
            "budget must be a share of the leaf requests",
        ),
        (
            "bad-deadline",
            json!({"spec": {"deadline": "1 second"}}),
            "deadline must be a duration",
        ),
        (
            "no-probe",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "leaf", "image": "b"}]}}}}),
            "has no readinessProbe",
        ),
        (
            "long-name",
            json!({"metadata": {"name": "a-scatter-gather-name-longer-than-forty-seven-chars"}}),
            "metadata.name must be a DNS-1035 label of at most 47 characters",
        ),
    ]
}

#[tokio::test]
async fn the_example_is_accepted_and_each_scatter_gather_rule_refuses_its_bad_case() {
    let Some(cluster) = kind_cluster::<ScatterGather>("scatter-gather-rules").await else {
        return;
    };
    let ns = cluster.namespace("sg-rules").await;
    // Laid over the valid one: `merge.first` joins its `merge.sum`, a merger its merge.
    let bad = bad_cases()
        .into_iter()
        .map(|(name, change, words)| (name, scatter_gather(name, &ns.name, &change), words));
    assert_examples_accepted_and_bad_ones_refused::<ScatterGather>(
        &cluster,
        &ns.name,
        "scatter-gather",
        bad,
    )
    .await;
}

#[tokio::test]
async fn the_operator_runs_leaves_and_a_root_or_says_why_it_cannot() {
    let Some(cluster) = kind_cluster::<ScatterGather>("scatter-gather-children").await else {
        return;
    };
    let ns = cluster.namespace("sg-children").await;
    let _operator = cluster.operator(&ns.name);
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/scatter-gather/search.yaml",
    ]);
    let sts: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    let names = eventually("a StatefulSet per shard", SETTLE, || async {
        let mut names: Vec<String> = sts
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        names.sort();
        (names.len() == 4).then_some(names)
    })
    .await;
    assert_eq!(names, ["search-0", "search-1", "search-2", "search-3"]);
    let leaf = sts.get("search-2").await.unwrap();
    let owner = &leaf.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ScatterGather", "search")
    );
    let env =
        serde_json::to_value(&leaf.spec.unwrap().template.spec.unwrap().containers[0].env).unwrap();
    assert!(
        env.to_string()
            .contains(r#"{"name":"RIGGING_SHARD","value":"2"}"#),
        "{env}"
    );
    // The Service clients use is applied last, after the root.
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually("the Service clients use", SETTLE, || async {
        services.get("search").await.ok()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    deployments.get("search-root").await.expect("the root");
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    let map = maps.get("search-gather").await.unwrap();
    let file: GatherConfig =
        serde_norway::from_str(&map.data.unwrap()["gather.yaml"]).expect("the root's file");
    assert_eq!(
        file.shards[3].replicas,
        [
            format!("search-3-0.search-leaves.{}.svc:8080", ns.name),
            format!("search-3-1.search-leaves.{}.svc:8080", ns.name)
        ]
    );
    let headless = services.get("search-leaves").await.unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));

    // What only the operator refuses: a leaf timeout past the deadline (the CRD cannot
    // compare durations), named in the status and an Event.
    let bad = scatter_gather(
        "bad",
        &ns.name,
        &json!({"spec": {"deadline": "200ms", "leafTimeout": "1s"}}),
    );
    assert_invalid_spec_said::<ScatterGather>(&cluster, &ns.name, &bad, "spec.leafTimeout").await;
    assert!(sts.get("bad-0").await.is_err(), "nothing made of it");
}
