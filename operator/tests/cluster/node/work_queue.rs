//! WorkQueues whose pods really run, against the chart's operator: a worker with a native
//! sidecar completes and the sidecar never holds its Job open; a queue runs to
//! all-succeeded, and a failing item is retried and reported; a worker that cannot start
//! (an image that cannot be pulled or named, a pod no node can take) degrades the queue
//! with an Event naming the item and the pod's reason, until it starts; every example
//! reaches Ready with the stand-in images.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use rigging_crds::WorkQueue;
use rigging_operator::work_queue::desired::QUEUE_LABEL;
use rigging_operator::work_queue::naming::job_name;
use serde_json::json;

use crate::node::{POD_SETTLE, node_cluster};
use crate::support::{Cluster, SETTLE, examples};
use crate::work_queue::{
    condition, counts, event_about, per_item, status_where, work_queue, worker,
};

/// The pods of the queue `queue`.
async fn pods_of(cluster: &Cluster, namespace: &str, queue: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{QUEUE_LABEL}={queue}")))
        .await
        .unwrap()
        .items
}

fn terminated(status: &ContainerStatus) -> (i32, String, String) {
    let t = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap_or_else(|| panic!("container {} has not terminated: {status:?}", status.name));
    let time = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| t.0.to_string()).unwrap_or_default()
    };
    (
        t.exit_code,
        time(t.started_at.as_ref()),
        time(t.finished_at.as_ref()),
    )
}

#[tokio::test]
async fn a_worker_with_a_native_sidecar_completes_and_the_sidecar_does_not_hold_its_job() {
    let Some(cluster) = node_cluster(
        "a_worker_with_a_native_sidecar_completes_and_the_sidecar_does_not_hold_its_job",
    )
    .await
    else {
        return;
    };
    let ns = cluster.namespace("wqn-sidecar").await;
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let items = ["cat.png", "dog.png"];
    // The log adapter as thumbnails.yaml has it: it tails the worker's log file and never
    // exits on its own.
    let script = r#"mkdir -p /var/log/worker && printf '{"level":"info","message":"resized %s"}\n' "$WORK_ITEM" >> /var/log/worker/log.json"#;
    queues
        .create(
            &PostParams::default(),
            &work_queue(
                "logged",
                &ns.name,
                json!({
                    "items": items, "parallelism": 2,
                    "worker": worker(script),
                    "sidecars": {"logs": {"format": "json", "file": "/var/log/worker/log.json"}},
                }),
            ),
        )
        .await
        .unwrap();
    let wq = status_where(&queues, "logged", "every item succeeded", POD_SETTLE, |s| {
        s.succeeded == 2
    })
    .await;
    assert_eq!(counts(&wq), (0, 0, 2, 0));
    assert_eq!(
        condition(&wq, "Ready"),
        ("True", "AllSucceeded", "all 2 items succeeded")
    );
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    for item in items {
        let job = jobs.get(&job_name("logged", item)).await.unwrap();
        let status = job.status.unwrap_or_default();
        assert_eq!(status.succeeded, Some(1), "{item}");
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Complete" && c.status == "True"),
            "{item}: {:?}",
            status.conditions
        );
    }
    // Each pod ran the sidecar as a native sidecar: started before the worker, stopped by
    // the kubelet after it, having read the worker's log to its end; and the pod Succeeded
    // with one try.
    let pods = pods_of(&cluster, &ns.name, "logged").await;
    assert_eq!(pods.len(), 2, "one pod per item");
    for pod in pods {
        let name = pod.name_any();
        let item = pod.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()[0]
            .value
            .clone()
            .unwrap();
        let status = pod.status.unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{name}");
        let sidecar = &status.init_container_statuses.unwrap_or_default()[0];
        assert_eq!(sidecar.name, "rigging-logs", "{name}");
        let worker = &status.container_statuses.unwrap_or_default()[0];
        let (code, worker_start, worker_end) = terminated(worker);
        assert_eq!(code, 0, "{name}: the worker's exit code");
        let (_, sidecar_start, sidecar_end) = terminated(sidecar);
        assert!(
            sidecar_start <= worker_start && sidecar_end >= worker_end,
            "{name}: sidecar {sidecar_start}..{sidecar_end}, worker {worker_start}..{worker_end}"
        );
        let adapted = cluster.kubectl_ok(&["logs", "-n", &ns.name, &name, "-c", "rigging-logs"]);
        assert!(
            adapted.contains(&format!("resized {item}")),
            "{name}: the adapter's output: {adapted}"
        );
    }
}

#[tokio::test]
async fn a_queue_runs_to_all_succeeded_and_a_failing_item_is_retried_then_reported() {
    let Some(cluster) =
        node_cluster("a_queue_runs_to_all_succeeded_and_a_failing_item_is_retried_then_reported")
            .await
    else {
        return;
    };
    let ns = cluster.namespace("wqn-run").await;
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let good = ["x", "X"];
    let mixed = ["ok", "bad"];
    // The bad item exits 3 on every try; its retry comes after the Job controller's
    // back-off.
    let fails = worker(r#"echo "doing $WORK_ITEM"; test "$WORK_ITEM" != bad || exit 3"#);
    for (name, items, retries) in [("good", &good, 0), ("mixed", &mixed, 1)] {
        queues
            .create(
                &PostParams::default(),
                &work_queue(
                    name,
                    &ns.name,
                    json!({"items": items, "parallelism": 2, "retries": retries, "worker": fails}),
                ),
            )
            .await
            .unwrap();
    }

    let wq = status_where(&queues, "good", "every item succeeded", POD_SETTLE, |s| {
        s.succeeded == 2
    })
    .await;
    assert_eq!(counts(&wq), (0, 0, 2, 0));
    assert_eq!(
        condition(&wq, "Ready"),
        ("True", "AllSucceeded", "all 2 items succeeded")
    );
    assert_eq!(condition(&wq, "Degraded").1, "Reconciled");

    let wq = status_where(&queues, "mixed", "every item finished", POD_SETTLE, |s| {
        s.succeeded + s.failed == 2 && s.running == 0
    })
    .await;
    assert_eq!(counts(&wq), (0, 0, 1, 1));
    let status = wq.status.as_ref().unwrap();
    let recorded = crate::work_queue::recorded_results(&cluster, &ns.name, "mixed").await;
    assert_eq!(
        recorded[&job_name("mixed", "ok")],
        "Succeeded",
        "{recorded:?}"
    );
    let failed = &status.last_failures[..];
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (
            failed[0].job.as_str(),
            failed[0].item.as_str(),
            failed[0].reason.as_str()
        ),
        (
            job_name("mixed", "bad").as_str(),
            "bad",
            "BackoffLimitExceeded"
        )
    );
    let message = "1 item failed: \"bad\" (BackoffLimitExceeded)";
    assert_eq!(condition(&wq, "Degraded"), ("True", "ItemsFailed", message));
    assert_eq!(condition(&wq, "Ready"), ("False", "ItemsFailed", message));
    assert_eq!(condition(&wq, "Progressing").1, "Finished");
    let event = event_about(&cluster, &ns.name, "mixed", "ItemFailed", SETTLE).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.note.as_deref(),
        Some(
            format!(
                "item \"bad\" failed (retries: 1): BackoffLimitExceeded: Job has reached the specified backoff limit; its Job is {}",
                job_name("mixed", "bad")
            )
            .as_str()
        )
    );

    // Retries honoured: one Job per item; one pod per good item, two for the bad one (the
    // first try and one retry), each of those ended by the worker's own exit code.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert_eq!(
        per_item(&jobs, "mixed", &mixed).await,
        BTreeMap::from([("bad".into(), 1), ("ok".into(), 1)])
    );
    assert_eq!(
        per_item(&pods, "mixed", &mixed).await,
        BTreeMap::from([("bad".into(), 2), ("ok".into(), 1)])
    );
    assert_eq!(
        per_item(&pods, "good", &good).await,
        BTreeMap::from([("X".into(), 1), ("x".into(), 1)])
    );
    for pod in pods_of(&cluster, &ns.name, "mixed").await {
        let status = pod.status.unwrap_or_default();
        let (code, _, _) = terminated(&status.container_statuses.unwrap_or_default()[0]);
        let bad = pod.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-name"]
            == job_name("mixed", "bad");
        let want = if bad { (3, "Failed") } else { (0, "Succeeded") };
        assert_eq!((code, status.phase.as_deref().unwrap_or_default()), want);
    }
}

/// A label on a node, removed on drop.
struct NodeLabel<'a> {
    cluster: &'a Cluster,
    node: String,
    key: String,
}

impl NodeLabel<'_> {
    fn set(&self) {
        self.cluster.kubectl_ok(&[
            "label",
            "node",
            &self.node,
            &format!("{}=yes", self.key),
            "--overwrite",
        ]);
    }
}

impl Drop for NodeLabel<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["label", "node", &self.node, &format!("{}-", self.key)]);
    }
}

/// The ItemStuck Events about `queue`.
async fn stuck_events(cluster: &Cluster, namespace: &str, queue: &str) -> Vec<Event> {
    Api::<Event>::namespaced(cluster.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("ItemStuck")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(queue)
        })
        .collect()
}

#[tokio::test]
async fn a_worker_that_cannot_be_pulled_or_scheduled_degrades_the_queue_until_it_starts() {
    let Some(cluster) = node_cluster(
        "a_worker_that_cannot_be_pulled_or_scheduled_degrades_the_queue_until_it_starts",
    )
    .await
    else {
        return;
    };
    let ns = cluster.namespace("wqn-stuck").await;
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    // A node pods can go to: Ready, and no taint that keeps them off (kind's control plane
    // has one).
    let node = Api::<Node>::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.effect != "PreferNoSchedule"));
            ready && !tainted
        })
        .expect("a Ready node without taints")
        .name_any();
    // A label no node has yet, of this test's own.
    let label = NodeLabel {
        cluster: &cluster,
        node,
        key: format!("rigging.dev/test-{}", ns.name),
    };
    let container = |image: &str, extra: serde_json::Value| {
        let mut c =
            json!({"name": "worker", "image": image, "command": ["sh", "-c", "echo $WORK_ITEM"]});
        crate::support::merge(&mut c, &extra);
        c
    };
    // Each queue one item whose pod cannot start, for its own reason.
    let cases = [
        // A registry that does not exist: ErrImagePull, then ImagePullBackOff.
        (
            "pull",
            container("registry.invalid/rigging/no-such-image:1", json!({})),
            json!({}),
        ),
        // Not an image reference at all (no registry is asked).
        ("name", container("Not-An:Image:Name", json!({})), json!({})),
        // More CPU than any node has.
        (
            "fit",
            container(
                "busybox:1.36",
                json!({"resources": {"requests": {"cpu": "64"}}}),
            ),
            json!({}),
        ),
        // A node selector no node matches, until the test labels the node.
        (
            "select",
            container("busybox:1.36", json!({})),
            json!({"nodeSelector": {label.key.as_str(): "yes"}}),
        ),
    ];
    for (name, container, pod) in &cases {
        let mut spec = json!({"containers": [container]});
        crate::support::merge(&mut spec, pod);
        queues
            .create(
                &PostParams::default(),
                &work_queue(
                    name,
                    &ns.name,
                    json!({"items": [format!("{name}-item")], "worker": {"template": {"spec": spec}}}),
                ),
            )
            .await
            .unwrap();
    }

    let want = [
        (
            "pull",
            &["ErrImagePull", "ImagePullBackOff"][..],
            "registry.invalid/rigging/no-such-image:1",
        ),
        ("name", &["InvalidImageName"][..], "Not-An:Image:Name"),
        ("fit", &["Unschedulable"][..], "Insufficient cpu"),
        ("select", &["Unschedulable"][..], "node affinity/selector"),
    ];
    for (name, reasons, says) in want {
        let item = format!("{name}-item");
        let wq = status_where(&queues, name, "its item stuck", POD_SETTLE, |s| {
            !s.stuck_items.is_empty()
        })
        .await;
        let status = wq.status.as_ref().unwrap();
        // Still running, not failed: it may yet start.
        assert_eq!(counts(&wq), (0, 1, 0, 0), "{name}");
        let stuck = &status.stuck_items[0];
        let pods = pods_of(&cluster, &ns.name, name).await;
        assert_eq!(pods.len(), 1, "{name}");
        assert_eq!(
            (stuck.job.as_str(), stuck.item.as_str(), stuck.pod.as_str()),
            (
                job_name(name, &item).as_str(),
                item.as_str(),
                pods[0].name_any().as_str()
            ),
            "{name}"
        );
        assert!(
            reasons.contains(&stuck.reason.as_str()),
            "{name}: {stuck:?}"
        );
        assert!(stuck.message.contains(says), "{name}: {stuck:?}");
        let (status, reason, message) = condition(&wq, "Degraded");
        assert_eq!((status, reason), ("True", "ItemsStuck"), "{name}");
        assert!(
            message.starts_with(&format!(
                "1 item cannot start: {item:?} (pod {}: ",
                stuck.pod
            )) && message.contains(says),
            "{name}: {message}"
        );
        assert_eq!(condition(&wq, "Ready").0, "False", "{name}");
        let event = event_about(&cluster, &ns.name, name, "ItemStuck", SETTLE).await;
        assert_eq!(event.type_.as_deref(), Some("Warning"), "{name}");
        let note = event.note.unwrap_or_default();
        assert!(
            note.starts_with(&format!("item {item:?} cannot start: pod {}: ", stuck.pod))
                && reasons.iter().any(|r| note.contains(r))
                && note.ends_with(&format!("its Job is {}", job_name(name, &item))),
            "{name}: {note}"
        );
    }
    // Told once, although the pod keeps saying so.
    let fit = stuck_events(&cluster, &ns.name, "fit").await;
    assert_eq!(fit.len(), 1, "{fit:?}");
    assert!(fit[0].series.is_none(), "{fit:?}");

    // The node gets the label: the pod is scheduled, runs, and the report clears.
    label.set();
    let wq = status_where(&queues, "select", "its item succeeded", POD_SETTLE, |s| {
        s.succeeded == 1
    })
    .await;
    assert!(wq.status.as_ref().unwrap().stuck_items.is_empty());
    assert_eq!(
        condition(&wq, "Degraded"),
        (
            "False",
            "Reconciled",
            "the spec is valid and its objects are applied"
        )
    );
    assert_eq!(condition(&wq, "Ready").1, "AllSucceeded");
}

#[tokio::test]
async fn every_work_queue_example_reaches_ready_with_the_stand_in_images() {
    let Some(cluster) =
        node_cluster("every_work_queue_example_reaches_ready_with_the_stand_in_images").await
    else {
        return;
    };
    let ns = cluster.namespace("wqn-examples").await;
    let queues: Api<WorkQueue> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut names = Vec::new();
    for (path, text) in examples("work-queue") {
        cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", &path]);
        let object: serde_json::Value = serde_norway::from_str(&text).unwrap();
        names.push(object["metadata"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(names, ["hello", "reports", "thumbnails"]);
    // The source is polled every 30 s; its three items then run at once. (Until the first
    // poll lists them, a source's queue is Ready too: `WaitingForItems`, nothing failed.)
    for (name, items) in [("hello", 3), ("thumbnails", 5), ("reports", 3)] {
        let wq = status_where(&queues, name, "every item succeeded", POD_SETTLE, |s| {
            s.succeeded == items
        })
        .await;
        assert_eq!(counts(&wq), (0, 0, items, 0), "{name}");
        assert_eq!(
            condition(&wq, "Ready"),
            (
                "True",
                "AllSucceeded",
                format!("all {items} items succeeded").as_str()
            ),
            "{name}"
        );
    }

    // What each README says the workers do, from their logs.
    // Pod by pod: `kubectl logs -l` has been seen to leave a pod out.
    let logs = async |queue: &str, container: &str| {
        let mut out = String::new();
        for pod in pods_of(&cluster, &ns.name, queue).await {
            if pod
                .labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("worker")
            {
                out += &cluster.kubectl_ok(&[
                    "logs",
                    "-n",
                    &ns.name,
                    &pod.name_any(),
                    "-c",
                    container,
                ]);
            }
        }
        out
    };
    let hello = logs("hello", "worker").await;
    // `echo "processing $WORK_ITEM"; cat "$WORK_ITEM_FILE"`: the item, from the variable
    // and then from the file (the pod's annotation, through the downward API).
    for item in ["alpha", "beta", "gamma"] {
        assert!(
            hello.contains(&format!("processing {item}\n{item}")),
            "{hello}"
        );
    }
    let reports = logs("reports", "report").await;
    for item in ["2024-q1", "2024-q2", "2024-q3"] {
        assert!(
            reports.contains(&format!("report: {{\"name\": \"{item}\", \"rows\": 42}}")),
            "the worker fetched {item} from the source: {reports}"
        );
    }
    let resized = logs("thumbnails", "resize").await;
    assert!(
        resized.contains(r#""in":"s3://uploads/images/holiday 2024 (1).jpg""#),
        "{resized}"
    );
    // The log adapter beside each resize ran as its native sidecar, read the worker's log
    // file to its end before it stopped, and wrote its records on its own stdout.
    let adapted = logs("thumbnails", "rigging-logs").await;
    for item in ["images/cat.png", "images/Dog.png", "images/ünïcode.gif"] {
        assert!(
            adapted.contains(&format!("s3://thumbnails/{item}")),
            "{item}: {adapted}"
        );
    }
}
