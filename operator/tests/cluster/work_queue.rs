//! WorkQueues on a real API server, controller-manager and node, each test with an operator
//! of its own on the host: the examples are accepted and reconciled into owned children;
//! the operator creates the Jobs, the Job controller their pods, and the kubelet runs them.
//! A queue of real pods runs never more than `parallelism` at once and reaches its end, a
//! failing item is retried and then reported, finished Jobs are deleted only once their
//! results are recorded, a restarted operator runs nothing twice, and the poller's writes
//! survive the operator's own applies.
//!
//! Workers that must stay running while the test looks wait for a file, `/tmp/go`, which
//! the test creates in the container (`kubectl exec`) when it lets them go: the pods, their
//! phases and their exit codes are the kubelet's own. The helpers here serve
//! `node::work_queue` too.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use rigging_crds::{WorkQueue, WorkQueueStatus};
use rigging_operator::work_queue::desired::{ITEM_ANNOTATION, ITEM_LABEL, QUEUE_LABEL, source_key};
use rigging_operator::work_queue::naming::{backup_job_name, item_hash, job_name};
use rigging_operator::work_queue::results;
use rigging_operator::work_queue::source::{self, FIELD_MANAGER, SourceClient};
use rigging_operator::work_queue::speculative;
use serde_json::{Value, json};

use crate::support::{Cluster, SETTLE, cluster, eventually, examples};

/// How long a queue of a few real pods gets to finish: pods start on the node, and a failed
/// try is retried after the Job controller's back-off (10 s, then 20 s). Not a performance
/// bound.
pub const FINISH: Duration = Duration::from_secs(180);

async fn wq_cluster(test: &str) -> Option<Cluster> {
    let cluster = cluster(test).await?;
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workqueues.rigging.dev",
    ]);
    Some(cluster)
}

/// A static WorkQueue named `name` with a busybox worker that prints its item, `spec` laid
/// over it.
pub fn work_queue(name: &str, namespace: &str, spec: Value) -> WorkQueue {
    let mut object = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "WorkQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "worker": {"template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "worker", "image": "busybox:1.36", "command": ["sh", "-c", "cat \"$WORK_ITEM_FILE\""]}
                ],
            }}}
        }
    });
    crate::support::merge(&mut object["spec"], &spec);
    serde_json::from_value(object).unwrap()
}

/// The `worker` of a spec whose worker runs `script` (sh, with `$WORK_ITEM`).
pub fn worker(script: &str) -> Value {
    json!({"template": {"spec": {"containers": [
        {"name": "worker", "image": "busybox:1.36", "command": ["sh", "-c", script]}
    ]}}})
}

/// A worker that waits until the test lets it go ([`release`]), then runs `then`.
pub fn held_worker(then: &str) -> Value {
    worker(&format!("until [ -e /tmp/go ]; do sleep 0.2; done; {then}"))
}

/// Lets the held worker of `pod` go on.
pub fn release(cluster: &Cluster, namespace: &str, pod: &str) {
    cluster.kubectl_ok(&[
        "exec", "-n", namespace, pod, "-c", "worker", "--", "touch", "/tmp/go",
    ]);
}

fn controlled_by<K: Resource>(child: &K, kind: &str, uid: Option<&String>) -> bool {
    child
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == kind && Some(&o.uid) == uid)
}

/// The WorkQueue `name` once its status describes the current generation and `done` holds.
pub async fn status_where(
    api: &Api<WorkQueue>,
    name: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&WorkQueueStatus) -> bool,
) -> WorkQueue {
    let last = std::sync::Mutex::new(String::from("nothing read yet"));
    let found = tokio::time::timeout(
        within,
        eventually(&format!("{name}: {what}"), within * 2, || async {
            let wq = match api.get(name).await {
                Ok(wq) => wq,
                Err(e) => {
                    *last.lock().unwrap() = format!("GET failed: {e}");
                    return None;
                }
            };
            *last.lock().unwrap() = format!("last seen: {:?}", wq.status);
            let status = wq.status.as_ref()?;
            (status.observed_generation == wq.metadata.generation
                && status.conditions.len() == 3
                && done(status))
            .then_some(wq)
        }),
    )
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "timed out after {within:?} waiting for {name}: {what}; {}",
            last.lock().unwrap()
        )
    })
}

/// `(status, reason, message)` of the condition `type_`.
pub fn condition<'a>(wq: &'a WorkQueue, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = wq
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

/// `(pending, running, succeeded, failed)`.
pub fn counts(wq: &WorkQueue) -> (i32, i32, i32, i32) {
    let s = wq.status.as_ref().unwrap();
    (s.pending, s.running, s.succeeded, s.failed)
}

fn finished(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// How many objects of the queue `queue` (its Jobs, or its pods) each item has, by item.
pub async fn per_item<K>(api: &Api<K>, queue: &str, items: &[&str]) -> BTreeMap<String, usize>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list(&ListParams::default().labels(&format!("{QUEUE_LABEL}={queue}")))
        .await
        .unwrap()
        .items;
    let mut out = BTreeMap::new();
    for object in list {
        let hash = object.labels().get(ITEM_LABEL).cloned().unwrap_or_default();
        let item = items
            .iter()
            .find(|i| item_hash(i) == hash)
            .map_or(format!("unknown item {hash}"), |i| (*i).to_owned());
        *out.entry(item).or_insert(0) += 1;
    }
    out
}

fn unfinished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// Whether the worker container of `pod` runs, so that it can be let go.
fn worker_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.name == "worker" && c.state.as_ref().is_some_and(|s| s.running.is_some())
            })
        })
}

/// Lets the held workers of `queue` go once they run, those of the items `let_go` names,
/// until `done` says the queue is done. On every round, checks that no more than
/// `parallelism` of its pods are unfinished at once: while workers are held, a Job too many
/// would show as a pod too many.
pub async fn run_queue(
    cluster: &Cluster,
    namespace: &str,
    queue: &str,
    parallelism: usize,
    let_go: &[&str],
    done: impl Fn(&WorkQueueStatus) -> bool,
) -> WorkQueue {
    let let_go: BTreeSet<String> = let_go.iter().map(|i| item_hash(i)).collect();
    let of_item = |p: &Pod| {
        p.labels()
            .get(ITEM_LABEL)
            .is_some_and(|h| let_go.contains(h))
    };
    run_queue_letting_go(cluster, namespace, queue, parallelism, of_item, done).await
}

/// [`run_queue`], letting go the held workers of the pods `let_go` picks.
pub async fn run_queue_letting_go(
    cluster: &Cluster,
    namespace: &str,
    queue: &str,
    parallelism: usize,
    let_go: impl Fn(&Pod) -> bool,
    done: impl Fn(&WorkQueueStatus) -> bool,
) -> WorkQueue {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), namespace);
    let selector = format!("{QUEUE_LABEL}={queue}");
    let mut released = BTreeSet::new();
    let deadline = Instant::now() + FINISH;
    loop {
        let wq = queues.get(queue).await.unwrap();
        if wq.status.as_ref().is_some_and(&done) {
            return wq;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} did not finish within {FINISH:?}: {:?}",
            wq.status
        );
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items;
        let running: Vec<&Pod> = list.iter().filter(|p| unfinished(p)).collect();
        assert!(
            running.len() <= parallelism,
            "{} pods unfinished at once, parallelism is {parallelism}: {:?}",
            running.len(),
            running.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        let ready = running
            .into_iter()
            .filter(|p| worker_running(p) && let_go(p));
        for pod in ready {
            if released.insert(pod.name_any()) {
                release(cluster, namespace, &pod.name_any());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The Event with `reason` about the WorkQueue `queue`, once there is one.
pub async fn event_about(
    cluster: &Cluster,
    namespace: &str,
    queue: &str,
    reason: &str,
    within: Duration,
) -> Event {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), namespace);
    eventually(
        &format!("a {reason} Event about {queue}"),
        within,
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(queue)
                })
        },
    )
    .await
}

#[tokio::test]
async fn the_examples_are_accepted_and_reconciled_into_owned_children() {
    let Some(cluster) =
        wq_cluster("the_examples_are_accepted_and_reconciled_into_owned_children").await
    else {
        return;
    };
    let ns = cluster.namespace("wq-examples").await;
    let _operator = cluster.operator(&ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    // One at a time, each reconciled before the next: reconciles that start together
    // while the operator's caches fill can hang in the shared layer (kube-runtime's
    // `Store::wait_until_ready` wakes only the last of several waiters), which is reported
    // and not this test's subject.
    for (path, text) in examples("work-queue") {
        cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", &path]);
        let name = serde_norway::from_str::<Value>(&text).unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        status_where(&queues, &name, "a first status", SETTLE, |_| true).await;
    }
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);

    // Static lists: the ConfigMap of items, a Job per item created by the operator, and
    // their pods made by the Job controller. The kubelet runs them to the end, each item
    // once (`node::work_queue` looks at what the examples' workers do).
    for (name, items) in [("hello", 3), ("thumbnails", 5)] {
        let wq = status_where(&queues, name, "every item succeeded", FINISH, |s| {
            s.succeeded == items
        })
        .await;
        let uid = wq.metadata.uid.as_ref();
        assert_eq!(counts(&wq), (0, 0, items, 0), "{name}");
        assert_eq!(condition(&wq, "Ready").1, "AllSucceeded", "{name}");
        assert_eq!(condition(&wq, "Progressing").1, "Finished", "{name}");
        assert_eq!(condition(&wq, "Degraded").0, "False", "{name}");
        // The items are in the WorkQueue and in each Job, in no ConfigMap.
        let cm = config_maps.get_opt(&format!("{name}-items")).await.unwrap();
        assert!(cm.is_none(), "{name}: {cm:?}");
        let owned: Vec<Job> = jobs
            .list(&ListParams::default().labels(&format!("{QUEUE_LABEL}={name}")))
            .await
            .unwrap()
            .items;
        assert_eq!(owned.len(), items as usize, "{name}: a Job per item");
        for job in &owned {
            assert!(controlled_by(job, "WorkQueue", uid), "{name}: Job owner");
            let creators: Vec<&str> = job
                .managed_fields()
                .iter()
                .filter_map(|m| m.manager.as_deref())
                .collect();
            assert!(
                creators.contains(&"rigging-operator"),
                "{name}: {creators:?}"
            );
            assert_eq!(job.spec.as_ref().unwrap().ttl_seconds_after_finished, None);
            let pod = pods
                .list(
                    &ListParams::default()
                        .labels(&format!("batch.kubernetes.io/job-name={}", job.name_any())),
                )
                .await
                .unwrap()
                .items
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("{name}: a pod of {}", job.name_any()));
            assert!(
                controlled_by(&pod, "Job", job.metadata.uid.as_ref()),
                "the Job controller made it"
            );
            assert_eq!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded"),
                "{name}: {}",
                pod.name_any()
            );
            let item = &job.annotations()[ITEM_ANNOTATION];
            assert_eq!(&pod.annotations()[ITEM_ANNOTATION], item, "{name}");
            let spec = pod.spec.unwrap();
            assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
            let env: Vec<&str> = spec.containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| e.name.as_str())
                .collect();
            assert_eq!(env[..2], ["WORK_ITEM", "WORK_ITEM_FILE"]);
            if name == "thumbnails" {
                let sidecar = &spec.init_containers.as_ref().unwrap()[0];
                assert_eq!(
                    (sidecar.name.as_str(), sidecar.restart_policy.as_deref()),
                    ("rigging-logs", Some("Always"))
                );
            }
        }
    }

    // Source mode: the source runs behind its Service. This operator runs on the host,
    // which cannot be counted on to reach the Service: no item is listed.
    let wq = status_where(&queues, "reports", "waiting for items", SETTLE, |_| true).await;
    assert_eq!(condition(&wq, "Progressing").1, "WaitingForItems");
    let uid = wq.metadata.uid.as_ref();
    let deployment = Api::<Deployment>::namespaced(cluster.client.clone(), &ns.name)
        .get("reports-source")
        .await
        .unwrap();
    assert!(controlled_by(&deployment, "WorkQueue", uid));
    let service = Api::<Service>::namespaced(cluster.client.clone(), &ns.name)
        .get("reports-source")
        .await
        .unwrap();
    assert!(controlled_by(&service, "WorkQueue", uid));
    let cm = config_maps.get("reports-items").await.unwrap();
    assert!(cm.data.unwrap_or_default().is_empty());

    // The printer columns.
    let table = cluster.kubectl_ok(&["get", "wq", "-n", &ns.name]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "PENDING",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "AGE"
        ],
        "{table}"
    );
    let hello: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("hello "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(hello[..6], ["hello", "True", "0", "0", "3", "0"], "{table}");
}

#[tokio::test]
async fn real_pods_take_a_queue_to_its_end_within_parallelism_and_a_failing_item_is_retried_then_reported()
 {
    let Some(cluster) = wq_cluster(
        "real_pods_take_a_queue_to_its_end_within_parallelism_and_a_failing_item_is_retried_then_reported",
    )
    .await
    else {
        return;
    };
    let ns = cluster.namespace("wq-run").await;
    let _operator = cluster.operator(&ns.name);
    let items = ["ok-1", "OK-1", "bad", "ok-2"];
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    queues
        .create(
            &PostParams::default(),
            &work_queue(
                "batch",
                &ns.name,
                json!({
                    "items": items, "parallelism": 2, "retries": 1,
                    "worker": held_worker("test \"$WORK_ITEM\" != bad"),
                }),
            ),
        )
        .await
        .unwrap();
    let wq = run_queue(&cluster, &ns.name, "batch", 2, &items, |s| {
        s.succeeded + s.failed == 4 && s.running == 0
    })
    .await;
    // One try per good item; the bad one tried once more (retries: 1), then given up. One
    // Job per item, named after it.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let tries = per_item(&pods, "batch", &items).await;
    for item in items {
        let want = if item == "bad" { 2 } else { 1 };
        assert_eq!(tries.get(item), Some(&want), "{item}: {tries:?}");
    }
    assert!(
        per_item(&jobs, "batch", &items)
            .await
            .values()
            .all(|n| *n == 1)
    );
    let mut names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    names.sort();
    let mut want: Vec<String> = items.iter().map(|i| job_name("batch", i)).collect();
    want.sort();
    assert_eq!(names, want);

    assert_eq!(counts(&wq), (0, 0, 3, 1));
    let status = wq.status.as_ref().unwrap();
    assert_eq!(status.last_failures.len(), 1);
    assert_eq!(status.last_failures[0].item, "bad");
    assert_eq!(status.last_failures[0].reason, "BackoffLimitExceeded");
    assert_eq!(
        condition(&wq, "Ready"),
        (
            "False",
            "ItemsFailed",
            "1 item failed: \"bad\" (BackoffLimitExceeded)"
        )
    );
    assert_eq!(condition(&wq, "Degraded").1, "ItemsFailed");
    assert_eq!(condition(&wq, "Progressing").1, "Finished");
    let event = event_about(&cluster, &ns.name, "batch", "ItemFailed", SETTLE).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(
        note.starts_with("item \"bad\" failed (retries: 1): BackoffLimitExceeded"),
        "{note}"
    );
    assert!(
        note.ends_with(&format!("its Job is {}", job_name("batch", "bad"))),
        "{note}"
    );
}

#[tokio::test]
async fn a_speculative_backup_beats_a_straggler_and_the_loser_is_removed() {
    let Some(cluster) =
        wq_cluster("a_speculative_backup_beats_a_straggler_and_the_loser_is_removed").await
    else {
        return;
    };
    let ns = cluster.namespace("wq-backup").await;
    // Only work the user says is idempotent, and never before the median.
    let refused = |name: &'static str, speculative: Value, words: &'static str| {
        let wq = work_queue(
            name,
            &ns.name,
            json!({"items": ["a"], "speculative": speculative}),
        );
        (name, serde_json::to_value(wq).unwrap(), words)
    };
    crate::crds::assert_examples_accepted_and_bad_ones_refused::<WorkQueue>(
        &cluster,
        &ns.name,
        "work-queue",
        [
            refused(
                "not-idempotent",
                json!({"after": "2x", "idempotent": false}),
                "speculative.idempotent must be true",
            ),
            refused(
                "before-the-median",
                json!({"after": "0.5x", "idempotent": true}),
                r"should match '^[1-9][0-9]?(\.[0-9]{1,2})?x$'",
            ),
        ],
    )
    .await;

    let _operator = cluster.operator(&ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let items = ["a", "b", "c", "slow"];
    queues
        .create(
            &PostParams::default(),
            &work_queue(
                "spec",
                &ns.name,
                json!({
                    "items": items, "parallelism": 4,
                    "speculative": {"after": "1.5x", "idempotent": true},
                    "worker": held_worker("true"),
                }),
            ),
        )
        .await
        .unwrap();
    // The straggler: the first pod of `slow` is never let go; every other pod is, its
    // backup's too.
    let slow = item_hash("slow");
    let straggler = |p: &Pod| {
        p.labels().get(ITEM_LABEL) == Some(&slow)
            && !p.labels().contains_key(speculative::BACKUP_LABEL)
    };
    let wq = run_queue_letting_go(
        &cluster,
        &ns.name,
        "spec",
        4,
        |p| !straggler(p),
        |s| s.succeeded == 4 && s.running == 0,
    )
    .await;
    assert_eq!(counts(&wq), (0, 0, 4, 0), "the straggler counted once");
    let backups = wq.status.as_ref().unwrap().backups.clone().unwrap();
    assert_eq!((backups.started, backups.won), (1, 1), "{backups:?}");
    let event = event_about(&cluster, &ns.name, "spec", "BackupsWon", SETTLE).await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(
        event.note.as_deref(),
        Some("1 backup succeeded first: 1 of 1 backups won")
    );

    // The loser's Job is deleted, with its pod; the winner stays.
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually("the straggler's Job and pod deleted", SETTLE, || async {
        let gone = jobs
            .get_opt(&job_name("spec", "slow"))
            .await
            .ok()?
            .is_none();
        let left = pods.list(&ListParams::default()).await.ok()?.items;
        (gone && !left.iter().any(straggler)).then_some(())
    })
    .await;
    assert!(
        jobs.get_opt(&backup_job_name("spec", "slow"))
            .await
            .unwrap()
            .is_some()
    );
    let per_job = per_item(&jobs, "spec", &items).await;
    assert!(per_job.values().all(|n| *n == 1), "{per_job:?}");
    // Recorded once, under the item's Job, saying the backup won.
    let recorded = eventually("the results recorded", SETTLE, || async {
        let r = recorded_results(&cluster, &ns.name, "spec").await;
        (r.len() == 4).then_some(r)
    })
    .await;
    assert_eq!(recorded[&job_name("spec", "slow")], "Succeeded; backup won");
    for item in ["a", "b", "c"] {
        assert_eq!(recorded[&job_name("spec", item)], "Succeeded", "{item}");
    }
}

#[tokio::test]
async fn finished_jobs_are_deleted_after_their_ttl_and_their_results_stay() {
    let Some(cluster) =
        wq_cluster("finished_jobs_are_deleted_after_their_ttl_and_their_results_stay").await
    else {
        return;
    };
    let ns = cluster.namespace("wq-ttl").await;
    let _operator = cluster.operator(&ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    queues
        .create(
            &PostParams::default(),
            &work_queue(
                "tidy",
                &ns.name,
                json!({
                    "items": ["one", "two", "three"], "parallelism": 3, "retries": 0,
                    "ttlSecondsAfterFinished": 3,
                    "worker": worker("test \"$WORK_ITEM\" != three"),
                }),
            ),
        )
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    status_where(&queues, "tidy", "every item finished", FINISH, |s| {
        s.succeeded + s.failed == 3
    })
    .await;
    eventually(
        "every finished Job deleted after its TTL",
        SETTLE,
        || async {
            let left = jobs.list(&ListParams::default()).await.ok()?.items;
            left.is_empty().then_some(())
        },
    )
    .await;
    let wq = status_where(&queues, "tidy", "its cleanup done", SETTLE, |s| {
        s.expired_jobs.is_empty() && s.next_cleanup_time.is_none()
    })
    .await;
    assert_eq!(counts(&wq), (0, 0, 2, 1));
    let status = wq.status.unwrap();
    assert_eq!(status.last_failures[0].item, "three");
    let results = status.results.unwrap();
    assert_eq!((results.recorded, results.unrecorded), (3, 0));
    // Every result, where the status points.
    let recorded = recorded_results(&cluster, &ns.name, "tidy").await;
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert_eq!(recorded[&job_name("tidy", "one")], "Succeeded");
    assert_eq!(recorded[&job_name("tidy", "two")], "Succeeded");
    let three = &recorded[&job_name("tidy", "three")];
    assert!(
        three.starts_with("Failed: BackoffLimitExceeded: ") && three.ends_with("item: \"three\""),
        "{three}"
    );
    // The items are not run again although their Jobs are gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn a_restarted_operator_runs_no_item_twice() {
    let Some(cluster) = wq_cluster("a_restarted_operator_runs_no_item_twice").await else {
        return;
    };
    let ns = cluster.namespace("wq-restart").await;
    let mut operator = cluster.operator(&ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let items = ["a", "b", "c", "d"];
    queues
        .create(
            &PostParams::default(),
            &work_queue(
                "steady",
                &ns.name,
                json!({"items": items, "parallelism": 2, "worker": held_worker("true")}),
            ),
        )
        .await
        .unwrap();
    // Two items done before the restart, the next two running.
    run_queue(&cluster, &ns.name, "steady", 2, &items[..2], |s| {
        s.succeeded == 2
    })
    .await;
    status_where(&queues, "steady", "the next two running", SETTLE, |s| {
        s.running == 2
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let held = eventually("the next two workers running", FINISH, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("{QUEUE_LABEL}=steady")))
            .await
            .ok()?
            .items;
        let held: Vec<String> = list
            .iter()
            .filter(|p| unfinished(p) && worker_running(p))
            .map(ResourceExt::name_any)
            .collect();
        (held.len() == 2).then_some(held)
    })
    .await;
    operator.signal("-KILL");
    operator.exit_code(SETTLE).await;
    drop(operator);
    // They finish while no operator runs: the new one finds two Jobs finished that no
    // status records yet.
    for pod in &held {
        release(&cluster, &ns.name, pod);
    }
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually("every Job finished", FINISH, || async {
        let list = jobs.list(&ListParams::default()).await.ok()?.items;
        (list.len() == 4 && list.iter().all(finished)).then_some(())
    })
    .await;
    let _operator = cluster.operator(&ns.name);
    let wq = status_where(&queues, "steady", "every item recorded", SETTLE, |s| {
        s.succeeded == 4
    })
    .await;
    assert_eq!(condition(&wq, "Ready").1, "AllSucceeded");
    let tries = per_item(&pods, "steady", &items).await;
    for item in items {
        assert_eq!(tries.get(item), Some(&1), "{item} ran once: {tries:?}");
    }
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
}

/// Every result `queue` recorded in its results ConfigMaps: Job name → value.
pub async fn recorded_results(
    cluster: &Cluster,
    namespace: &str,
    queue: &str,
) -> BTreeMap<String, String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    config_maps
        .list(&ListParams::default().labels(&results::selector(queue)))
        .await
        .unwrap()
        .items
        .into_iter()
        .flat_map(|cm| cm.data.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_queue_applied_again_after_an_orphaning_delete_never_counts_the_old_jobs_as_its_own() {
    let Some(cluster) = wq_cluster(
        "a_queue_applied_again_after_an_orphaning_delete_never_counts_the_old_jobs_as_its_own",
    )
    .await
    else {
        return;
    };
    let ns = cluster.namespace("wq-orphans").await;
    let _operator = cluster.operator(&ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let items = ["a", "b"];
    let queue = || {
        work_queue(
            "again",
            &ns.name,
            json!({"items": items, "parallelism": 2, "worker": worker("true")}),
        )
    };
    queues
        .create(&PostParams::default(), &queue())
        .await
        .unwrap();
    status_where(&queues, "again", "every item succeeded", FINISH, |s| {
        s.succeeded == 2
    })
    .await;
    // Deleted, leaving its Jobs behind: the garbage collector takes the owner reference
    // off each of them.
    cluster.kubectl_ok(&[
        "delete",
        "-n",
        &ns.name,
        "workqueue",
        "again",
        "--cascade=orphan",
        "--wait=true",
    ]);
    eventually("the old Jobs orphaned", SETTLE, || async {
        let list = jobs.list(&ListParams::default()).await.ok()?.items;
        (list.len() == 2 && list.iter().all(|j| j.owner_references().is_empty())).then_some(())
    })
    .await;
    let old_uids: BTreeSet<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|j| j.metadata.uid)
        .collect();

    // Applied again: a new WorkQueue, whose items' Job names are taken by Jobs it does not
    // control. It counts none of them as its own, and says which.
    queues
        .create(&PostParams::default(), &queue())
        .await
        .unwrap();
    let wq = status_where(&queues, "again", "the conflict named", SETTLE, |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.reason == "JobConflict")
    })
    .await;
    assert_eq!(counts(&wq), (2, 0, 0, 0), "{:?}", wq.status);
    let (_, _, message) = condition(&wq, "Degraded");
    assert!(
        message.starts_with("2 items wait for a Job name this WorkQueue does not control: "),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "(Job {} exists with no controller)",
            job_name("again", "a")
        )),
        "{message}"
    );
    let event = event_about(&cluster, &ns.name, "again", "JobConflict", SETTLE).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.note.as_deref(), Some(message));
    // The old Jobs are left alone.
    let left: BTreeSet<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|j| j.metadata.uid)
        .collect();
    assert_eq!(left, old_uids);

    // Once they are deleted, the new queue runs its items in Jobs of its own.
    cluster.kubectl_ok(&["delete", "-n", &ns.name, "jobs", "--all", "--wait=true"]);
    let wq = status_where(
        &queues,
        "again",
        "every item succeeded again",
        FINISH,
        |s| s.succeeded == 2,
    )
    .await;
    assert_eq!(condition(&wq, "Degraded").1, "Reconciled");
    let uid = wq.metadata.uid.as_ref();
    let mine = jobs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|j| controlled_by(j, "WorkQueue", uid)));
}

/// Serves the book's source interface on 127.0.0.1, listing `items`; returns its base URL.
async fn serve_source(items: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(items.to_string());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_pollers_items_survive_the_operators_applies_and_get_jobs() {
    let Some(cluster) =
        wq_cluster("the_pollers_items_survive_the_operators_applies_and_get_jobs").await
    else {
        return;
    };
    let ns = cluster.namespace("wq-source").await;
    let _operator = cluster.operator(&ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Held workers: the Jobs keep running, so that which items have one stays still.
    let mut object = work_queue(
        "feed",
        &ns.name,
        json!({"parallelism": 2, "worker": held_worker("true")}),
    );
    object.spec.source = Some(
        serde_json::from_value(json!({
            "template": {"name": "source", "image": "busybox:1.36", "command": ["sleep", "86400"]},
            "pollInterval": "1s",
        }))
        .unwrap(),
    );
    queues
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually("the reconcile to create feed-items", SETTLE, || async {
        config_maps.get_opt("feed-items").await.ok().flatten()
    })
    .await;
    // The operator in this test runs outside the cluster and cannot count on reaching the
    // source's Service, so the test polls, with the operator's own code, a source on
    // 127.0.0.1.
    let wq = queues.get("feed").await.unwrap();
    let client = SourceClient::new();
    let base = serve_source(
        json!({"kind": "ItemList", "apiVersion": "v1", "items": ["zebra", "apple", "mango"]}),
    )
    .await;
    assert_eq!(
        source::poll_once(&config_maps, &client, &wq, &base, None)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        source::poll_once(&config_maps, &client, &wq, &base, None)
            .await
            .unwrap(),
        0,
        "nothing twice"
    );

    // The operator gives the first two, in the order they were seen, a Job.
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    status_where(&queues, "feed", "two running", SETTLE, |s| {
        s.running == 2 && s.pending == 1
    })
    .await;
    let mut names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    names.sort();
    let mut want = vec![job_name("feed", "zebra"), job_name("feed", "apple")];
    want.sort();
    assert_eq!(names, want);

    // A spec edit makes the operator apply its children again: the keys stay, owned by
    // the poller's field manager alone.
    queues
        .patch(
            "feed",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"parallelism": 3}})),
        )
        .await
        .unwrap();
    status_where(&queues, "feed", "all three running", SETTLE, |s| {
        s.running == 3
    })
    .await;
    let cm = config_maps.get("feed-items").await.unwrap();
    let keys: Vec<String> = cm.data.clone().unwrap_or_default().into_keys().collect();
    assert_eq!(
        keys,
        [
            source_key(0, &job_name("feed", "zebra")),
            source_key(1, &job_name("feed", "apple")),
            source_key(2, &job_name("feed", "mango")),
        ]
    );
    let owners: Vec<(String, bool)> = cm
        .managed_fields()
        .iter()
        .map(|m| {
            let owns_data = m
                .fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:data").is_some());
            (m.manager.clone().unwrap_or_default(), owns_data)
        })
        .collect();
    assert!(
        owners.contains(&(FIELD_MANAGER.to_owned(), true)),
        "{owners:?}"
    );
    assert!(
        owners.contains(&("rigging-operator".to_owned(), false)),
        "{owners:?}"
    );

    // A source that answers garbage changes nothing.
    let broken = serve_source(json!({"kind": "Status"})).await;
    let error = source::poll_once(&config_maps, &client, &wq, &broken, None)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("without an `items` list"),
        "{error}"
    );
    assert_eq!(config_maps.get("feed-items").await.unwrap().data, cm.data);
}
