//! MapReduces on a real API server, with an operator of the test's own on the host: the
//! examples are accepted, every rule of the CRD refuses its bad case, the operator makes a
//! run's WorkQueue (its worker storing its output through the output sidecar), the broker
//! and the reducer's narrow rights, all owned by the MapReduce; and what only the operator
//! can check (a cron schedule, a time zone) is refused in the status and an Event. (Runs
//! to their result are `node::map_reduce`'s.)

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::Role;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use rigging_crds::map_reduce::RUN_NOW_ANNOTATION;
use rigging_crds::{MapReduce, WorkQueue};
use rigging_operator::controller::RenderConfig;
use rigging_operator::map_reduce::desired::{reduce_job, run_of, run_queue};
use serde_json::{Value, json};

use crate::crds::{
    assert_examples_accepted_and_bad_ones_refused, assert_invalid_spec_said, kind_cluster,
};
use crate::support::{Cluster, SETTLE, eventually};

/// Starts a run of the MapReduce `name` at once: a new value of `rigging.dev/run-now`.
pub fn run_now(cluster: &Cluster, namespace: &str, name: &str, value: &str) {
    cluster.kubectl_ok(&[
        "annotate",
        "-n",
        namespace,
        &format!("mapreduce/{name}"),
        &format!("{RUN_NOW_ANNOTATION}={value}"),
        "--overwrite",
    ]);
}

/// A valid MapReduce of two items, `change` laid over it.
fn map_reduce(name: &str, namespace: &str, change: &Value) -> Value {
    let mut object = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "MapReduce",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "map": {
                "items": ["a", "b"],
                "worker": {"template": {"spec": {"containers": [{
                    "name": "count", "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo '{\"n\": 1}' > \"$WORK_OUTPUT_FILE\""]
                }]}}},
            },
            "reduce": {"reducer": "sum"},
        },
    });
    crate::support::merge(&mut object, change);
    object
}

/// One bad case per rule: what is changed, and the words of the rule's message.
fn bad_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "buckets-without-histogram",
            json!({"spec": {"reduce": {"buckets": [1.0, 2.0]}}}),
            "reduce.buckets are the histogram's bucket bounds",
        ),
        (
            "histogram-without-buckets",
            json!({"spec": {"reduce": {"reducer": "histogram", "path": "n"}}}),
            "reduce.buckets are the histogram's bucket bounds",
        ),
        (
            "count-without-path",
            json!({"spec": {"reduce": {"reducer": "count"}}}),
            "reduce.path names the field a count or a histogram reads",
        ),
        (
            "concat-with-path",
            json!({"spec": {"reduce": {"reducer": "concat", "path": "n"}}}),
            "reduce.path is a count's, a sum's or a histogram's",
        ),
        (
            "container-reducer-without-container",
            json!({"spec": {"reduce": {"reducer": "container"}}}),
            "reduce.container is your own reducer",
        ),
        (
            "container-with-a-built-in-reducer",
            json!({"spec": {"reduce": {"container": {"name": "mine", "image": "busybox:1.36"}}}}),
            "reduce.container is your own reducer",
        ),
        (
            "pipeline-broker-fields",
            json!({"spec": {"broker": {"stream": "outputs"}}}),
            "broker.stream and broker.dedupWindow are a Pipeline's",
        ),
        (
            "bad-percent",
            json!({"spec": {"join": {"minSucceeded": "150%"}}}),
            "join.minSucceeded is a number of items (0 or more) or a percentage",
        ),
        (
            "negative-min",
            json!({"spec": {"join": {"minSucceeded": -1}}}),
            "join.minSucceeded is a number of items (0 or more) or a percentage",
        ),
        (
            "no-items-and-no-source",
            json!({"spec": {"map": {"items": null}}}),
            "set exactly one of items (a static list) or source",
        ),
        (
            "long-name",
            json!({"metadata": {"name": "a-map-reduce-name-too-long"}}),
            "metadata.name must be a DNS-1035 label of at most 21 characters",
        ),
    ]
}

#[tokio::test]
async fn the_examples_are_accepted_and_each_map_reduce_rule_refuses_its_bad_case() {
    let Some(cluster) = kind_cluster::<MapReduce>("map-reduce-rules").await else {
        return;
    };
    let ns = cluster.namespace("mr-rules").await;
    let bad = bad_cases()
        .into_iter()
        .map(|(name, change, words)| (name, map_reduce(name, &ns.name, &change), words));
    assert_examples_accepted_and_bad_ones_refused::<MapReduce>(
        &cluster,
        &ns.name,
        "vote-tally",
        bad,
    )
    .await;
}

#[tokio::test]
async fn the_operator_starts_a_run_as_a_work_queue_storing_outputs_or_says_why_it_cannot() {
    let Some(cluster) = kind_cluster::<MapReduce>("map-reduce-children").await else {
        return;
    };
    let ns = cluster.namespace("mr-children").await;
    let _operator = cluster.operator(&ns.name);
    let object = map_reduce("count", &ns.name, &json!({}));
    cluster.apply(&object);

    // Unscheduled: the first run starts at once, as the WorkQueue `count-1`.
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let run = eventually("the first run's WorkQueue", SETTLE, || async {
        queues.get("count-1").await.ok()
    })
    .await;
    let owner = &run.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("MapReduce", "count")
    );
    let pod = run.spec.worker.template.spec.as_ref().unwrap();
    let sidecar = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(sidecar.name, "rigging-output");
    let args = sidecar.args.as_ref().unwrap().join(" ");
    assert!(
        args.contains(&format!("--bucket {}_count_outputs", ns.name)) && args.contains("--run 1"),
        "{args}"
    );
    assert!(
        serde_json::to_string(&pod.containers[0].env)
            .unwrap()
            .contains("WORK_OUTPUT_FILE"),
        "the worker is told where to write"
    );
    // The broker, the result ConfigMap the reducer may patch, and nothing more.
    let sts: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    sts.get("count-broker").await.expect("the managed broker");
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    maps.get("count-result")
        .await
        .expect("the result ConfigMap");
    let roles: Api<Role> = Api::namespaced(cluster.client.clone(), &ns.name);
    let rules = roles.get("count-reduce").await.unwrap().rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["count-result".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "patch"]);
    let api: Api<MapReduce> = Api::namespaced(cluster.client.clone(), &ns.name);
    let status = eventually("the run in the status", SETTLE, || async {
        let status = api.get("count").await.ok()?.status?;
        (status.last_run == 1).then_some(status)
    })
    .await;
    assert_eq!(status.runs[0].name, "count-1");
    assert_eq!(status.runs[0].min_succeeded, 2, "every item, by default");

    // What only the operator checks: the cron schedule, named in the status and an Event.
    let bad = map_reduce(
        "bad",
        &ns.name,
        &json!({"spec": {"schedule": {"cron": "every hour", "timeZone": "UTC"}}}),
    );
    assert_invalid_spec_said::<MapReduce>(&cluster, &ns.name, &bad, "spec.schedule.cron").await;
    assert!(queues.get("bad-1").await.is_err(), "no run of it");

    // A reducer container with a readiness probe: its reduce Job, made regardless, is one
    // the API server refuses (the reducer is an init container); the operator refuses the
    // MapReduce first, naming the field.
    let probed = map_reduce(
        "probed",
        &ns.name,
        &json!({"spec": {"reduce": {"reducer": "container", "container": {
            "name": "mine", "image": "busybox:1.36",
            "readinessProbe": {"exec": {"command": ["true"]}}
        }}}}),
    );
    let typed: MapReduce = serde_json::from_value(probed.clone()).unwrap();
    let queue = run_queue(&typed, &RenderConfig::default(), 1);
    let job = reduce_job(
        &typed,
        &RenderConfig::default(),
        &run_of(&typed, 1, &queue, None),
    );
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let refused = jobs
        .create(&dry, &job)
        .await
        .expect_err("the API server refuses it");
    assert!(refused.to_string().contains("readinessProbe"), "{refused}");
    assert_invalid_spec_said::<MapReduce>(
        &cluster,
        &ns.name,
        &probed,
        "spec.reduce.container.readinessProbe",
    )
    .await;
    assert!(queues.get("probed-1").await.is_err(), "no run of it");
}

#[tokio::test]
async fn a_run_now_under_replace_deletes_the_going_run_and_starts_the_next() {
    let Some(cluster) = kind_cluster::<MapReduce>("map-reduce-replace").await else {
        return;
    };
    let ns = cluster.namespace("mr-replace").await;
    let _operator = cluster.operator(&ns.name);
    // Scheduled yearly, so nothing starts but what run-now asks for; workers that would
    // take an hour, so run 1 still goes when run 2 is asked for.
    let object = map_reduce(
        "slow",
        &ns.name,
        &json!({"spec": {
            "schedule": {"cron": "0 0 1 1 *", "timeZone": "UTC"},
            "concurrencyPolicy": "Replace",
            "map": {"worker": {"template": {"spec": {"containers": [{
                "name": "count", "image": "busybox:1.36", "command": ["sleep", "3600"]
            }]}}}},
        }}),
    );
    cluster.apply(&object);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    run_now(&cluster, &ns.name, "slow", "first");
    let first = eventually("run 1's WorkQueue", SETTLE, || async {
        queues.get("slow-1").await.ok()
    })
    .await;
    assert_eq!(
        first
            .annotations()
            .get(RUN_NOW_ANNOTATION)
            .map(String::as_str),
        Some("first"),
        "the run records what started it"
    );

    run_now(&cluster, &ns.name, "slow", "second");
    eventually("run 2 in place of run 1", SETTLE, || async {
        let second = queues.get("slow-2").await.ok()?;
        let first_gone = match queues.get_opt("slow-1").await {
            Ok(None) => true,
            // Deleted in the foreground: gone once its Jobs are.
            Ok(Some(q)) => q.metadata.deletion_timestamp.is_some(),
            Err(_) => false,
        };
        first_gone.then_some(second)
    })
    .await;
    let api: Api<MapReduce> = Api::namespaced(cluster.client.clone(), &ns.name);
    let status = eventually("run 2 in the status", SETTLE, || async {
        let status = api.get("slow").await.ok()?.status?;
        (status.last_run == 2).then_some(status)
    })
    .await;
    assert_eq!(status.last_run_now.as_deref(), Some("second"), "{status:?}");
    assert_eq!(status.runs[0].name, "slow-2", "{status:?}");
}
