//! WorkQueues on a real API server and controller-manager: the examples are accepted and
//! reconciled; the operator creates the Jobs and the Job controller their pods; with pod
//! phases driven as a kubelet would (the control plane has none, see
//! [`crate::support::drive_pod`]), a queue reaches all-succeeded, a failing item is retried
//! and then reported, finished Jobs are deleted only once their results are recorded, a
//! restarted operator runs nothing twice, and the poller's writes survive the operator's
//! own applies.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

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
use rigging_operator::work_queue::desired::source_key;
use rigging_operator::work_queue::naming::{item_hash, job_name};
use rigging_operator::work_queue::source::{self, FIELD_MANAGER, SourceClient};
use serde_json::{Value, json};

use crate::support::{
    Cluster, PodEnd, SETTLE, TestNamespace, cluster, drive_pod, eventually, examples,
};

/// How long a queue gets to finish once its pods are driven.
const FINISH: Duration = Duration::from_secs(120);

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

/// A static WorkQueue named `name` with a busybox worker, `spec` laid over it.
fn work_queue(name: &str, namespace: &str, spec: Value) -> WorkQueue {
    let mut object = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "WorkQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "worker": {"template": {"spec": {"containers": [
                {"name": "worker", "image": "busybox:1.36", "command": ["sh", "-c", "cat \"$WORK_ITEM_FILE\""]}
            ]}}}
        }
    });
    crate::support::merge(&mut object["spec"], &spec);
    serde_json::from_value(object).unwrap()
}

fn controlled_by<K: Resource>(child: &K, kind: &str, uid: Option<&String>) -> bool {
    child
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == kind && Some(&o.uid) == uid)
}

/// The status of `name` once it describes the current generation and `done` holds.
async fn status_where(
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

fn condition<'a>(wq: &'a WorkQueue, type_: &str) -> (&'a str, &'a str, &'a str) {
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

fn finished(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// Drives every pod of the queue `queue` that a kubelet would still run, each to the end
/// `end` chooses from its item hash, until `done` says the queue is done. Checks on every
/// round that no more than `parallelism` pods are unfinished at once. Returns how many pods
/// each item hash had.
async fn drive_queue(
    cluster: &Cluster,
    ns: &TestNamespace,
    queue: &str,
    parallelism: usize,
    end: impl Fn(&str) -> PodEnd,
    done: impl Fn(&WorkQueueStatus) -> bool,
) -> BTreeMap<String, usize> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let selector = format!("rigging.dev/work-queue={queue}");
    let mut driven = BTreeSet::new();
    let deadline = std::time::Instant::now() + FINISH;
    loop {
        let wq = queues.get(queue).await.unwrap();
        if wq.status.as_ref().is_some_and(&done) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queue} did not finish within {FINISH:?}: {:?}",
            wq.status
        );
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items;
        let unfinished: Vec<&Pod> = list
            .iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        assert!(
            unfinished.len() <= parallelism,
            "{} pods unfinished at once, parallelism is {parallelism}",
            unfinished.len()
        );
        for pod in unfinished {
            let name = pod.name_any();
            if driven.insert(name.clone()) {
                let hash = pod.labels()["rigging.dev/work-item"].clone();
                drive_pod(&pods, &name, end(&hash)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    let mut per_item = BTreeMap::new();
    for pod in list {
        *per_item
            .entry(pod.labels()["rigging.dev/work-item"].clone())
            .or_insert(0) += 1;
    }
    per_item
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

    // Static lists: the ConfigMap of items and `parallelism` Jobs, the Jobs created by the
    // operator and their pods by the Job controller.
    for (name, items, parallelism) in [("hello", 3, 1), ("thumbnails", 5, 2)] {
        let wq = status_where(&queues, name, "its Jobs running", SETTLE, |s| {
            s.running == parallelism
        })
        .await;
        let uid = wq.metadata.uid.as_ref();
        let status = wq.status.as_ref().unwrap();
        assert_eq!(status.pending, items - parallelism, "{name}");
        assert_eq!(condition(&wq, "Progressing").1, "Processing", "{name}");
        assert_eq!(condition(&wq, "Degraded").0, "False", "{name}");
        let cm = config_maps.get(&format!("{name}-items")).await.unwrap();
        assert!(
            controlled_by(&cm, "WorkQueue", uid),
            "{name}: ConfigMap owner"
        );
        assert_eq!(cm.data.unwrap().len(), items as usize, "{name}: every item");
        let owned: Vec<Job> = jobs
            .list(&ListParams::default().labels(&format!("rigging.dev/work-queue={name}")))
            .await
            .unwrap()
            .items;
        assert_eq!(
            owned.len(),
            parallelism as usize,
            "{name}: exactly parallelism Jobs"
        );
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
            let pod = eventually(
                &format!("{name}: a pod of {}", job.name_any()),
                SETTLE,
                || async {
                    pods.list(
                        &ListParams::default()
                            .labels(&format!("batch.kubernetes.io/job-name={}", job.name_any())),
                    )
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .next()
                },
            )
            .await;
            assert!(
                controlled_by(&pod, "Job", job.metadata.uid.as_ref()),
                "the Job controller made it"
            );
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

    // Source mode: the source runs behind its Service; no items yet.
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
    assert_eq!(
        hello[..6],
        ["hello", "False", "2", "1", "0", "0"],
        "{table}"
    );
}

#[tokio::test]
async fn driven_pods_take_a_queue_to_its_end_and_a_failing_item_is_retried_then_reported() {
    let Some(cluster) = wq_cluster(
        "driven_pods_take_a_queue_to_its_end_and_a_failing_item_is_retried_then_reported",
    )
    .await
    else {
        return;
    };
    let ns = cluster.namespace("wq-drive").await;
    let _operator = cluster.operator(&ns.name);
    let items = ["ok-1", "OK-1", "bad", "ok-2"];
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    queues
        .create(
            &PostParams::default(),
            &work_queue(
                "batch",
                &ns.name,
                json!({"items": items, "parallelism": 2, "retries": 1}),
            ),
        )
        .await
        .unwrap();
    let bad = item_hash("bad");
    let per_item = drive_queue(
        &cluster,
        &ns,
        "batch",
        2,
        |hash| {
            if hash == bad {
                PodEnd::Failed
            } else {
                PodEnd::Succeeded
            }
        },
        |s| s.succeeded + s.failed == 4,
    )
    .await;
    // One try per good item; the bad one tried once more (retries: 1), then given up.
    for item in items {
        let want = if item == "bad" { 2 } else { 1 };
        assert_eq!(
            per_item.get(&item_hash(item)),
            Some(&want),
            "{item}: {per_item:?}"
        );
    }
    let wq = status_where(&queues, "batch", "the end", SETTLE, |s| s.running == 0).await;
    let status = wq.status.clone().unwrap();
    assert_eq!(
        (
            status.pending,
            status.running,
            status.succeeded,
            status.failed
        ),
        (0, 0, 3, 1)
    );
    assert_eq!(status.failed_items.len(), 1);
    assert_eq!(status.failed_items[0].item, "bad");
    assert_eq!(status.failed_items[0].reason, "BackoffLimitExceeded");
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

    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    let event = eventually("an ItemFailed Event", SETTLE, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ItemFailed"))
    })
    .await;
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

    // Each item had one Job, named after it.
    let jobs: Vec<String> = Api::<Job>::namespaced(cluster.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    let mut want: Vec<String> = items.iter().map(|i| job_name("batch", i)).collect();
    want.sort();
    assert_eq!(jobs, want);

    // Once all succeeded: a queue of good items only is Ready.
    queues
        .create(
            &PostParams::default(),
            &work_queue(
                "good",
                &ns.name,
                json!({"items": ["x", "y"], "parallelism": 2}),
            ),
        )
        .await
        .unwrap();
    drive_queue(
        &cluster,
        &ns,
        "good",
        2,
        |_| PodEnd::Succeeded,
        |s| s.succeeded == 2,
    )
    .await;
    let wq = status_where(&queues, "good", "Ready", SETTLE, |s| s.running == 0).await;
    assert_eq!(
        condition(&wq, "Ready"),
        ("True", "AllSucceeded", "all 2 items succeeded")
    );
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
                // No retry: the Job controller waits 10 s, 20 s, 40 s… before each.
                json!({"items": ["one", "two", "three"], "parallelism": 3, "retries": 0, "ttlSecondsAfterFinished": 3}),
            ),
        )
        .await
        .unwrap();
    let fail = item_hash("three");
    drive_queue(
        &cluster,
        &ns,
        "tidy",
        3,
        |h| {
            if h == fail {
                PodEnd::Failed
            } else {
                PodEnd::Succeeded
            }
        },
        |s| s.succeeded + s.failed == 3,
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
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
    let status = wq.status.unwrap();
    assert_eq!(
        (
            status.pending,
            status.running,
            status.succeeded,
            status.failed
        ),
        (0, 0, 2, 1)
    );
    assert_eq!(status.succeeded_jobs.len(), 2);
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
                json!({"items": items, "parallelism": 2}),
            ),
        )
        .await
        .unwrap();
    // Two items done before the restart.
    drive_queue(
        &cluster,
        &ns,
        "steady",
        2,
        |_| PodEnd::Succeeded,
        |s| s.succeeded >= 2,
    )
    .await;
    status_where(&queues, "steady", "the next two running", SETTLE, |s| {
        s.running == 2
    })
    .await;
    operator.signal("-KILL");
    operator.exit_code(SETTLE).await;
    drop(operator);
    let _operator = cluster.operator(&ns.name);
    let per_item = drive_queue(
        &cluster,
        &ns,
        "steady",
        2,
        |_| PodEnd::Succeeded,
        |s| s.succeeded == 4,
    )
    .await;
    for item in items {
        assert_eq!(
            per_item.get(&item_hash(item)),
            Some(&1),
            "{item} ran once: {per_item:?}"
        );
    }
    let jobs = Api::<Job>::namespaced(cluster.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(finished));
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
    let mut object = work_queue("feed", &ns.name, json!({"parallelism": 2}));
    object.spec.source = Some(
        serde_json::from_value(
            json!({"template": {"name": "source", "image": "feed:1"}, "pollInterval": "1s"}),
        )
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
    // The operator in this test runs outside the cluster and cannot reach the source's
    // Service, so the test polls, with the operator's own code, a source on 127.0.0.1.
    let wq = queues.get("feed").await.unwrap();
    let client = SourceClient::new();
    let base = serve_source(
        json!({"kind": "ItemList", "apiVersion": "v1", "items": ["zebra", "apple", "mango"]}),
    )
    .await;
    assert_eq!(
        source::poll_once(&config_maps, &client, &wq, &base)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        source::poll_once(&config_maps, &client, &wq, &base)
            .await
            .unwrap(),
        0,
        "nothing twice"
    );

    // The operator gives the first two, in the order they were seen, a Job.
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    let names = eventually("Jobs for the first two items", SETTLE, || async {
        let mut names: Vec<String> = jobs
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .map(|j| j.name_any())
            .collect();
        names.sort();
        (names.len() == 2).then_some(names)
    })
    .await;
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
    let error = source::poll_once(&config_maps, &client, &wq, &broken)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("without an `items` list"),
        "{error}"
    );
    assert_eq!(config_maps.get("feed-items").await.unwrap().data, cm.data);
}
