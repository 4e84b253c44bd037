//! The vote tally example on a node: a sharded Redis seeded with 3,000 write-sharded votes,
//! and a scheduled MapReduce run twice by `rigging.dev/run-now`. Each run's workers (one
//! per shard) store their counts through the output sidecar, the join waits for all three,
//! and the reduce Job's `sum` puts the exact tally in `vote-tally-result`. A run-now while
//! a run goes is skipped (`Forbid`), with an Event, and each run is reduced once. And a
//! reducer container of the user's, between the steps that give it the outputs and store
//! its result.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::map_reduce::run_now;
use crate::node::{POD_SETTLE, node_cluster, wait_for_condition};
use crate::support::{Cluster, eventually};

/// The votes `votes.yaml` casts.
const TALLY: [(&str, i64); 4] = [
    ("got", 1200),
    ("severance", 600),
    ("the-bear", 300),
    ("the-wire", 900),
];

fn map_reduce(cluster: &Cluster, namespace: &str, name: &str) -> Value {
    serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "-n",
        namespace,
        &format!("mapreduce/{name}"),
        "-o",
        "json",
    ]))
    .expect("the MapReduce as JSON")
}

/// The status of run `number` of the MapReduce `name`, once its phase is one of `phases`.
/// (A failed run ends the wait, and the test, with the status.)
async fn run_in(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    number: i64,
    phases: &[&str],
) -> Value {
    let (run, status) = eventually(
        &format!("run {number} of {name} in {phases:?}"),
        POD_SETTLE * 2,
        || {
            let status = map_reduce(cluster, namespace, name)["status"].clone();
            let run = status["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["number"] == number)
                .cloned();
            let done =
                run.filter(|r| r["phase"] == "Failed" || phases.iter().any(|p| r["phase"] == *p));
            async move { done.map(|run| (run, status)) }
        },
    )
    .await;
    assert_ne!(run["phase"], "Failed", "run {number} failed: {status}");
    run
}

/// The tally in `vote-tally-result`, and the run it is of.
fn stored_tally(cluster: &Cluster, namespace: &str) -> (String, BTreeMap<String, i64>) {
    let data: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "-n",
        namespace,
        "configmap/vote-tally-result",
        "-o",
        "jsonpath={.data}",
    ]))
    .expect("the result's data");
    let result: BTreeMap<String, i64> = serde_json::from_str(
        data["result.json"]
            .as_str()
            .unwrap_or_else(|| panic!("result.json in {data}")),
    )
    .expect("the tally as JSON");
    (data["run"].as_str().unwrap_or_default().to_owned(), result)
}

#[tokio::test]
async fn the_vote_tally_sums_every_shard_once_per_run_and_forbid_skips_a_run_now_mid_run() {
    let Some(cluster) = node_cluster("the_vote_tally_sums_every_shard").await else {
        return;
    };
    let ns = cluster.namespace("ex-vote-tally").await;
    let apply = |file: &str| cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", file]);
    apply("examples/vote-tally/votes.yaml");
    wait_for_condition(&cluster, &ns.name, "workqueue/vote-seed", "Ready");
    apply("examples/vote-tally/tally.yaml");

    // Scheduled hourly: nothing runs until the schedule or a run-now says so.
    let mr = eventually("a first status", POD_SETTLE, || {
        let mr = map_reduce(&cluster, &ns.name, "vote-tally");
        async move { mr["status"]["nextScheduleTime"].is_string().then_some(mr) }
    })
    .await;
    assert_eq!(mr["status"]["lastRun"], 0, "{}", mr["status"]);

    run_now(&cluster, &ns.name, "vote-tally", "first");
    let first = run_in(&cluster, &ns.name, "vote-tally", 1, &["Succeeded"]).await;
    assert_eq!(
        (first["succeeded"].as_i64(), first["items"].as_i64()),
        (Some(3), Some(3))
    );
    let (run, tally) = stored_tally(&cluster, &ns.name);
    let expected: BTreeMap<String, i64> =
        TALLY.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect();
    assert_eq!(
        (run.as_str(), &tally),
        ("1", &expected),
        "the exact tally of run 1"
    );
    let summary = first["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(r#""outputs":3"#),
        "every shard's output reduced: {summary}"
    );

    // A second run, and a run-now while it goes: skipped, and said so.
    run_now(&cluster, &ns.name, "vote-tally", "second");
    run_in(
        &cluster,
        &ns.name,
        "vote-tally",
        2,
        &["Mapping", "Reducing"],
    )
    .await;
    run_now(&cluster, &ns.name, "vote-tally", "third");
    cluster
        .event_containing(
            &ns.name,
            "RunSkipped",
            "vote-tally",
            "rigging.dev/run-now=third",
        )
        .await;
    run_in(&cluster, &ns.name, "vote-tally", 2, &["Succeeded"]).await;
    let (run, tally) = stored_tally(&cluster, &ns.name);
    assert_eq!(
        (run.as_str(), &tally),
        ("2", &expected),
        "the same tally from run 2"
    );
    let status = map_reduce(&cluster, &ns.name, "vote-tally")["status"].clone();
    assert_eq!(
        status["lastRun"], 2,
        "the skipped run-now started nothing: {status}"
    );
    assert_eq!(status["lastRunNow"], "third", "{status}");
    let reduces = cluster.kubectl_ok(&[
        "get",
        "jobs",
        "-n",
        &ns.name,
        "-l",
        "app.kubernetes.io/component=reduce,rigging.dev/map-reduce=vote-tally",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert_eq!(
        reduces, "vote-tally-1-reduce vote-tally-2-reduce",
        "one reduce per run"
    );
}

#[tokio::test]
async fn a_reducer_container_reads_every_stored_output_and_its_result_is_the_runs() {
    let Some(cluster) = node_cluster("a_reducer_container_reads_every_stored_output").await else {
        return;
    };
    let ns = cluster.namespace("own-reducer").await;
    // Each worker stores {"item": ITEM}; the reducer lists the items of the outputs it
    // reads, sorted: the result is every item once.
    let object = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "MapReduce",
        "metadata": {"name": "own", "namespace": ns.name},
        "spec": {
            "map": {
                "items": ["b", "c", "a"],
                "parallelism": 3,
                "worker": {"template": {"spec": {"containers": [{
                    "name": "work", "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo \"{\\\"item\\\": \\\"$WORK_ITEM\\\"}\" > \"$WORK_OUTPUT_FILE\""]
                }]}}},
            },
            "reduce": {"reducer": "container", "container": {
                "name": "collect", "image": "busybox:1.36",
                "command": ["sh", "-c",
                    "grep -o '\"item\":\"[^\"]*\"' \"$REDUCE_OUTPUTS_FILE\" | cut -d'\"' -f4 | sort > \"$REDUCE_RESULT_FILE\""]
            }},
        },
    });
    cluster.apply(&object);
    let run = run_in(&cluster, &ns.name, "own", 1, &["Succeeded"]).await;
    let summary = run["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(r#""reducer":"container""#) && summary.contains(r#""outputs":3"#),
        "{summary}"
    );
    let result = cluster.kubectl_ok(&[
        "get",
        "-n",
        &ns.name,
        "configmap/own-result",
        "-o",
        "jsonpath={.data.result}",
    ]);
    assert_eq!(
        result, "a\nb\nc\n",
        "the container's file, stored as the run's result"
    );
}
