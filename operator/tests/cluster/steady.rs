//! Settled objects cost no write. Every example of every kind is applied, its pods run on
//! the node, and once the operator has converged its resyncs (every second here) apply
//! nothing: what the API server stores holds what the operator applies, defaults and
//! dropped zero values included. A field the server drops on every apply would show here
//! as an apply per resync, forever.

use std::time::{Duration, Instant};

use crate::support::{Operator, SETTLE, cluster, eventually, examples};

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
