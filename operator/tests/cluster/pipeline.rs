//! Pipelines on a real API server, with an operator of the test's own on the host: the
//! examples are accepted, every rule of the CRD refuses its bad case with the words
//! `render` gives, and the operator makes the broker and the stages, owned by the
//! pipeline, or says in the status and an Event why it cannot. (Pods, traffic and the
//! admission webhook are `node::pipeline`'s.)

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use rigging_crds::Pipeline;
use serde_json::{Value, json};

use crate::crds::{
    assert_examples_accepted_and_bad_ones_refused, assert_invalid_spec_said, kind_cluster,
};
use crate::support::{SETTLE, eventually};

/// A valid pipeline of one filter stage, `change` laid over it.
fn pipeline(name: &str, namespace: &str, change: &Value) -> Value {
    let mut object = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"stages": [
            {"name": "keep", "from": ["in"], "filter": {"if": "message.n > 1", "to": "out"}}
        ]},
    });
    crate::support::merge(&mut object, change);
    object
}

/// One bad case per rule: what is changed, and the words of the rule's message.
fn bad_cases() -> Vec<(&'static str, Value, &'static str)> {
    let stage = |extra: Value| {
        let mut s = json!({"name": "keep", "from": ["in"]});
        crate::support::merge(&mut s, &extra);
        json!({"spec": {"stages": [s]}})
    };
    vec![
        (
            "two-things",
            stage(json!({"copy": {"to": ["a"]}, "merge": {"to": "b"}})),
            "a stage does exactly one thing",
        ),
        (
            "nothing",
            stage(json!({})),
            "a stage does exactly one thing",
        ),
        (
            "merge-of-one",
            stage(json!({"merge": {"to": "b"}})),
            "merge joins several topics into one",
        ),
        (
            "bad-topic",
            stage(json!({"from": ["In"], "copy": {"to": ["a"]}})),
            "from: a topic is 1 to 63 characters",
        ),
        (
            "bad-output",
            stage(json!({"copy": {"to": ["a.b"]}})),
            "copy.to: a topic is 1 to 63 characters",
        ),
        (
            "replicas-and-autoscale",
            stage(json!({"copy": {"to": ["a"]}, "replicas": 2, "autoscale": {"max": 3}})),
            "set replicas or autoscale, not both",
        ),
        (
            "autoscale-min-over-max",
            stage(json!({"copy": {"to": ["a"]}, "autoscale": {"min": 4, "max": 3}})),
            "autoscale.min must not exceed autoscale.max",
        ),
        (
            "bad-timeout",
            stage(json!({"copy": {"to": ["a"]}, "deliveryTimeout": "soon"})),
            "deliveryTimeout must be a duration",
        ),
        (
            "same-name-twice",
            json!({"spec": {"stages": [
                {"name": "keep", "from": ["in"], "copy": {"to": ["a"]}},
                {"name": "keep", "from": ["a"], "copy": {"to": ["b"]}}
            ]}}),
            "each stage's name must be unique",
        ),
        (
            "url-and-secret",
            json!({"spec": {"broker": {"url": "nats://n:4222", "urlSecret": {"name": "s", "key": "k"}}}}),
            "give an existing NATS server as url, or as urlSecret",
        ),
        (
            "credentials-in-url",
            json!({"spec": {"broker": {"url": "nats://me:secret@n:4222"}}}),
            "url must be nats://HOST:PORT",
        ),
        (
            "two-brokers",
            json!({"spec": {"broker": {"replicas": 2}}}),
            "replicas of the managed broker must be 1, or 3",
        ),
        (
            "storage-for-an-existing-broker",
            json!({"spec": {"broker": {"url": "nats://n:4222", "storage": "5Gi"}}}),
            "replicas, storage and image configure the broker the operator runs",
        ),
        (
            "long-name",
            json!({"metadata": {"name": "a-pipeline-name-longer-than-thirty"}}),
            "metadata.name must be a DNS-1035 label of at most 30 characters",
        ),
    ]
}

#[tokio::test]
async fn the_examples_are_accepted_and_each_pipeline_rule_refuses_its_bad_case() {
    let Some(cluster) = kind_cluster::<Pipeline>("pipeline-rules").await else {
        return;
    };
    let ns = cluster.namespace("pipeline-rules").await;
    let bad = bad_cases()
        .into_iter()
        .map(|(name, change, words)| (name, pipeline(name, &ns.name, &change), words));
    assert_examples_accepted_and_bad_ones_refused::<Pipeline>(&cluster, &ns.name, "pipeline", bad)
        .await;
}

#[tokio::test]
async fn the_operator_runs_a_broker_and_a_deployment_per_stage_or_says_why_it_cannot() {
    let Some(cluster) = kind_cluster::<Pipeline>("pipeline-children").await else {
        return;
    };
    let ns = cluster.namespace("pipeline-children").await;
    let _operator = cluster.operator(&ns.name);
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/pipeline/banking.yaml",
    ]);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let names = eventually("five stage Deployments", SETTLE, || async {
        let mut names: Vec<String> = deployments
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|d| d.metadata.name)
            .collect();
        names.sort();
        (names.len() == 5).then_some(names)
    })
    .await;
    assert_eq!(
        names,
        [
            "banking-audit",
            "banking-fraud-review",
            "banking-ledger",
            "banking-notify",
            "banking-validate"
        ]
    );
    let sts: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    let broker = eventually("the broker", SETTLE, || async {
        sts.get("banking-broker").await.ok()
    })
    .await;
    let owner = &broker.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Pipeline", "banking")
    );
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let service = services.get("banking-broker").await.unwrap();
    assert_eq!(
        service.spec.unwrap().cluster_ip.as_deref(),
        Some("None"),
        "headless: each server by name"
    );

    // What only the operator refuses (a chart release's admission webhook may be up in the
    // cluster, and it would refuse a bad predicate first): a handler on the queue
    // sidecar's port. The status and an Event say why, naming the stage and the field.
    let bad = pipeline(
        "bad",
        &ns.name,
        &json!({"spec": {"stages": [
            {"name": "keep", "from": ["in"], "handler": {"port": 9127, "template": {"spec": {
                "containers": [{"name": "app", "image": "busybox:1.36"}]
            }}}}
        ]}}),
    );
    assert_invalid_spec_said::<Pipeline>(&cluster, &ns.name, &bad, "spec.stages[0].handler.port")
        .await;
    assert!(
        deployments.get("bad-keep").await.is_err(),
        "nothing made of it"
    );
}
