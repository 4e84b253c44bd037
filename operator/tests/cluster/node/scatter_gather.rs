//! The scatter/gather example on a node: leaves and roots reach Ready; a search through
//! the Service `search` answers the ten best documents of all four shards, as the leaves
//! themselves rank them; a leaf pod deleted mid-load is covered by its replica; and a
//! shard with no ready leaf gives partial answers that say their coverage, while the
//! status names the shard. Clients are pods.

use serde_json::Value;

use crate::node::{ClientPod, POD_SETTLE, all_pods_ready, node_cluster, wait_for_condition};
use crate::support::{Cluster, eventually};

const CURL: &str = "curlimages/curl:8.10.1";
const SEARCH: &str = "http://search:8080/cgi-bin/search?q=apple";

/// `(doc, score)` of every hit of a search answer.
fn hits(answer: &Value) -> Vec<(String, i64)> {
    answer["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("an answer with hits: {answer}"))
        .iter()
        .map(|h| {
            (
                h["doc"].as_str().expect("a doc").to_owned(),
                h["score"].as_i64().expect("a score"),
            )
        })
        .collect()
}

/// The shard a document is on: `doc-D` is on shard D mod 4, as the leaves make them.
fn shard_of(doc: &str) -> u32 {
    doc.strip_prefix("doc-")
        .and_then(|n| n.parse::<u32>().ok())
        .map_or(u32::MAX, |n| n % 4)
}

/// The headers and JSON body of `curl -i` output.
fn split_answer(out: &str) -> (String, Value) {
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("headers and a body: {out}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (head.to_ascii_lowercase(), body)
}

/// Runs `script` in the leaf container of both leaves of shard 2: the example's leaves
/// are drained by removing their `index.html`, and back when it is there again.
fn in_both_leaves_of_shard_two(cluster: &Cluster, namespace: &str, script: &str) {
    for pod in ["search-2-0", "search-2-1"] {
        cluster.kubectl_ok(&[
            "exec", "-n", namespace, pod, "-c", "leaf", "--", "sh", "-c", script,
        ]);
    }
}

fn scatter_gather(cluster: &Cluster, namespace: &str) -> Value {
    serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "-n",
        namespace,
        "scattergather/search",
        "-o",
        "json",
    ]))
    .expect("the ScatterGather as JSON")
}

fn condition(sg: &Value, type_: &str) -> (String, String) {
    let c = sg["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn the_search_example_merges_every_shard_covers_a_lost_leaf_and_says_a_lost_shard() {
    let Some(cluster) = node_cluster("the_search_example_merges_every_shard").await else {
        return;
    };
    let ns = cluster.namespace("ex-search").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/scatter-gather/search.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "scattergather/search", "Ready");
    // Four shards of two leaves, and two roots.
    all_pods_ready(&cluster, &ns.name, "app.kubernetes.io/name=search", 10).await;
    let client = ClientPod::start(&cluster, &ns.name, "client", CURL).await;

    // The merged answer is the ten best of what the leaves answer themselves.
    let out = client
        .exec_until_ok(&["curl", "-fsS", "-i", "--max-time", "10", SEARCH])
        .await;
    let (head, merged) = split_answer(&out);
    assert!(head.contains("rigging-coverage: 4/4"), "{head}");
    let mut everything = Vec::new();
    for shard in 0..4 {
        let leaf = format!("http://search-{shard}-0.search-leaves:8080/cgi-bin/search?q=apple");
        let answer = client.exec_ok(&["curl", "-fsS", "--max-time", "10", &leaf]);
        let hits = hits(&serde_json::from_str(&answer).expect("a leaf's JSON"));
        assert!(
            hits.iter().all(|(doc, _)| shard_of(doc) == shard),
            "shard {shard} holds only its own documents: {hits:?}"
        );
        everything.extend(hits);
    }
    let merged_hits = hits(&merged);
    let mut best: Vec<i64> = everything.iter().map(|(_, s)| *s).collect();
    best.sort_unstable_by(|a, b| b.cmp(a));
    best.truncate(10);
    let scores: Vec<i64> = merged_hits.iter().map(|(_, s)| *s).collect();
    assert_eq!(scores, best, "the ten best scores, best first: {merged}");
    assert!(
        merged_hits.iter().all(|h| everything.contains(h)),
        "every merged hit is a leaf's: {merged}"
    );
    assert_eq!(merged["coverage"]["answered"], 4, "{merged}");

    // A leaf deleted while searches run: its replica answers for the shard.
    let load = client.spawn(&[
        "sh",
        "-c",
        &format!(
            "end=$(($(date +%s) + 25)); while [ $(date +%s) -lt $end ]; do curl -sS -o /dev/null --max-time 5 -w '%{{http_code}} %header{{rigging-coverage}}\\n' '{SEARCH}'; done"
        ),
    ]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &ns.name,
        "search-1-0",
        "--wait=false",
    ]);
    let out = tokio::task::spawn_blocking(move || load.wait_with_output())
        .await
        .expect("the load loop")
        .expect("kubectl exec");
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    let answers: Vec<&str> = lines.lines().collect();
    assert!(answers.len() > 20, "the load ran: {lines}");
    // While search-1-0 is gone, search-1-1 carries shard 1 alone, so one late answer of
    // it on a busy node (CI runs the node suite in parallel) can cost a search its shard:
    // one is allowed. Without the failover, every root would lose a search each time it
    // gave search-1-0 a first try again, which it does once per FAILING_FOR (5 s): by that
    // reckoning, not a measurement, some ten over the 25 s.
    let uncovered: Vec<&&str> = answers.iter().filter(|l| **l != "200 4/4").collect();
    assert!(
        uncovered.len() <= 1 && uncovered.iter().all(|l| **l == "200 3/4"),
        "{} of {} searches were not answered by all four shards while search-1-0 was replaced: {uncovered:?}",
        uncovered.len(),
        answers.len()
    );
    all_pods_ready(&cluster, &ns.name, "app.kubernetes.io/name=search", 10).await;

    // Shard 2 drained on both leaves: they turn unready and answer 503. Searches answer
    // with the other three (minShards is 3), saying so; the status names the shard.
    in_both_leaves_of_shard_two(&cluster, &ns.name, "rm /tmp/www/index.html");
    let message = eventually("Degraded names the drained shard", POD_SETTLE, || async {
        let (status, message) = condition(&scatter_gather(&cluster, &ns.name), "Degraded");
        (status == "True").then_some(message)
    })
    .await;
    assert!(message.contains("search-2"), "{message}");
    let out = client.exec_ok(&["curl", "-fsS", "-i", "--max-time", "10", SEARCH]);
    let (head, partial) = split_answer(&out);
    assert!(head.contains("rigging-coverage: 3/4"), "{head}");
    assert_eq!(
        partial["coverage"]["missing"],
        serde_json::json!([2]),
        "{partial}"
    );
    assert!(
        hits(&partial).iter().all(|(doc, _)| shard_of(doc) != 2),
        "no document of shard 2: {partial}"
    );
    cluster
        .event_containing(&ns.name, "ShardWithoutLeaf", "", "search-2")
        .await;

    // Back: Ready again, and whole answers.
    in_both_leaves_of_shard_two(&cluster, &ns.name, "echo ok > /tmp/www/index.html");
    wait_for_condition(&cluster, &ns.name, "scattergather/search", "Ready");
    // The roots reach the leaves by their DNS names, which come back once cluster DNS
    // no longer holds the answer it cached while they were unready (its TTL).
    eventually("whole answers again", POD_SETTLE, || async {
        let out = client.exec(&["curl", "-fsS", "-i", "--max-time", "10", SEARCH]);
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        out.to_ascii_lowercase()
            .contains("rigging-coverage: 4/4")
            .then_some(())
    })
    .await;
}
