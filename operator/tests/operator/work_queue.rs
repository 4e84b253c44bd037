//! The WorkQueue reconcile against the mocked API server of [`crate::mock_api`], each
//! scenario listing the exact requests expected (any other fails the test): exactly
//! `parallelism` Jobs, the next one when a Job finishes, failures counted and told in an
//! Event, nothing created twice after a restart or on a stale cache, a finished Job
//! deleted only once its result is recorded; and source mode end to end: a real source on
//! 127.0.0.1, the poller's write to the ConfigMap, and the Jobs the controller then gives
//! those items.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::controller::Action;
use rigging_crds::WorkQueue;
use rigging_operator::ChildStores;
use rigging_operator::controller::{Applied, Child, Observed, RESYNC, reconcile};
use rigging_operator::work_queue::desired::{self, Children, source_key};
use rigging_operator::work_queue::naming::job_name;
use rigging_operator::work_queue::results::Recorded;
use rigging_operator::work_queue::source::{self, SourceClient, SourceError};
use rigging_operator::work_queue::status;
use serde_json::{Value, json};

use crate::mock_api::{
    self, condition, config, context, json_response, run_scenario, run_scenario_with, served,
};

const JOBS: &str = "/apis/batch/v1/namespaces/media/jobs";
const ITEMS: [&str; 5] = ["a.png", "b.png", "c.png", "d.png", "e.png"];

/// A static WorkQueue as the API server hands it to the controller.
fn work_queue(parallelism: i32, extra: Value) -> WorkQueue {
    let metadata = json!({"name": "thumbs", "namespace": "media", "uid": "wq-uid", "generation": 1, "resourceVersion": "10"});
    let spec = json!({
        "items": ITEMS,
        "parallelism": parallelism,
        "retries": 1,
        "worker": {"template": {"spec": {"containers": [{"name": "worker", "image": "busybox:1.36"}]}}}
    });
    served(metadata, spec, extra)
}

fn source_queue() -> WorkQueue {
    serde_json::from_value(json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "WorkQueue",
        "metadata": {"name": "feed", "namespace": "media", "uid": "wq-uid", "generation": 1},
        "spec": {
            "source": {"template": {"name": "source", "image": "feed:1"}, "port": 8080, "pollInterval": "5s"},
            "parallelism": 2,
            "worker": {"template": {"spec": {"containers": [{"name": "worker", "image": "busybox:1.36"}]}}}
        },
    }))
    .unwrap()
}

/// What the first reconcile in an empty namespace wants.
fn first(wq: &WorkQueue) -> Children {
    desired::desired(wq, &config().render, &Observed::nothing()).unwrap()
}

/// The Job of `item` as desired renders it, for a queue that gives every item a Job.
fn job(wq: &WorkQueue, item: &str) -> Job {
    let mut all = wq.clone();
    all.spec.parallelism = 100;
    let name = job_name("thumbs", item);
    first(&all)
        .jobs
        .into_iter()
        .find(|j| j.metadata.name.as_deref() == Some(name.as_str()))
        .unwrap()
}

/// `job` as the API server holds it: with a uid, which its pods name as their owner.
fn created(mut job: Job) -> Job {
    job.metadata.uid = Some(format!("uid-{}", job.metadata.name.as_deref().unwrap()));
    job
}

/// The pod of `job`, `Pending` with its worker waiting for `reason`, or `Running`.
fn pod_of(job: &Job, waiting: Option<&str>) -> Pod {
    let state = match waiting {
        Some(reason) => {
            json!({"waiting": {"reason": reason, "message": "Back-off pulling image \"nope:1\""}})
        }
        None => json!({"running": {}}),
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-x7k2p", job.metadata.name.as_deref().unwrap()),
            "namespace": "media",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "controller": true,
                "name": job.metadata.name, "uid": job.metadata.uid}],
        },
        "status": {
            "phase": if waiting.is_some() { "Pending" } else { "Running" },
            "containerStatuses": [{"name": "worker", "image": "busybox:1.36", "imageID": "",
                "ready": false, "restartCount": 0, "state": state}],
        },
    }))
    .unwrap()
}

fn finished(mut job: Job, type_: &str, reason: &str, at: Timestamp) -> Job {
    job.status = Some(JobStatus {
        completion_time: (type_ == "Complete").then_some(Time(at)),
        conditions: Some(vec![JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(format!("the Job controller says {reason}")),
            last_transition_time: Some(Time(at)),
            ..JobCondition::default()
        }]),
        ..JobStatus::default()
    });
    job
}

fn succeeded(job: Job) -> Job {
    finished(job, "Complete", "CompletionsReached", Timestamp::now())
}

fn failed(job: Job) -> Job {
    finished(job, "Failed", "BackoffLimitExceeded", Timestamp::now())
}

fn running(mut job: Job) -> Job {
    job.status = Some(JobStatus {
        active: Some(1),
        ..JobStatus::default()
    });
    job
}

fn counts(status: &Value) -> (i64, i64, i64, i64) {
    let n = |k: &str| status[k].as_i64().unwrap();
    (n("pending"), n("running"), n("succeeded"), n("failed"))
}

fn status_of(value: Value) -> rigging_crds::WorkQueueStatus {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn a_new_queue_gets_its_items_and_exactly_parallelism_jobs() {
    let wq = work_queue(2, json!({}));
    let want = first(&wq);
    assert_eq!(want.jobs.len(), 2);
    let wq2 = wq.clone();
    let (result, _) = run_scenario(wq, vec![], move |mut api| async move {
        for job in &want.jobs {
            api.create(JOBS, job, StatusCode::CREATED).await;
        }
        let status = api.status(&wq2).await;
        assert_eq!(counts(&status), (3, 2, 0, 0));
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
}

#[tokio::test]
async fn when_a_job_succeeds_the_next_item_gets_one_and_no_other() {
    let wq = work_queue(2, json!({}));
    let cached = vec![
        Child::Job(succeeded(job(&wq, "a.png"))),
        Child::Job(running(job(&wq, "b.png"))),
    ];
    let next = job(&wq, "c.png");
    let wq2 = wq.clone();
    let (result, _) = run_scenario(wq, cached, move |mut api| async move {
        api.create(JOBS, &next, StatusCode::CREATED).await;
        let status = api.status(&wq2).await;
        assert_eq!(counts(&status), (2, 2, 1, 0));
        assert_eq!(
            status["results"]["unrecorded"], 1,
            "a's result is on its Job until a batch is written: {status}"
        );
        api
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_failed_item_is_counted_and_named_in_a_warning_event() {
    let wq = work_queue(1, json!({}));
    let cached = vec![Child::Job(failed(job(&wq, "a.png")))];
    let next = job(&wq, "b.png");
    let wq2 = wq.clone();
    let (result, _) = run_scenario(wq, cached, move |mut api| async move {
        api.create(JOBS, &next, StatusCode::CREATED).await;
        let status = api.status(&wq2).await;
        assert_eq!(counts(&status), (3, 1, 0, 1));
        assert_eq!(status["lastFailures"][0]["item"], "a.png");
        let degraded = condition(&status, "Degraded");
        assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("ItemsFailed")));
        let event = api.event().await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "ItemFailed");
        assert_eq!(event["regarding"]["name"], "thumbs");
        assert_eq!(
            event["note"],
            format!(
                "item \"a.png\" failed (retries: 1): BackoffLimitExceeded: the Job controller says BackoffLimitExceeded; its Job is {}",
                job_name("thumbs", "a.png")
            )
        );
        api
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_fresh_controller_after_a_restart_creates_nothing_twice() {
    // Before the restart: the first reconcile creates a Job for each of the three items.
    // A free slot afterwards is what would let a forgotten item run again.
    let wq = work_queue(4, json!({"items": ["a.png", "b.png", "c.png"]}));
    let want = first(&wq);
    assert_eq!(want.jobs.len(), 3);
    let created = want.jobs.clone();
    let wq2 = wq.clone();
    let (result, _) = run_scenario(wq.clone(), vec![], move |mut api| async move {
        for job in &want.jobs {
            api.create(JOBS, job, StatusCode::CREATED).await;
        }
        api.status(&wq2).await;
        api
    })
    .await;
    result.unwrap();
    // Then a's Job succeeds, a reconcile records it, and a's Job is deleted.
    let a = succeeded(created[0].clone());
    let b = running(created[1].clone());
    let c = running(created[2].clone());
    let applied = Applied::new(vec![
        Child::Job(a),
        Child::Job(b.clone()),
        Child::Job(c.clone()),
    ]);
    let status = status::observed(&wq, &applied, Timestamp::now());
    assert_eq!(status.succeeded, 1);
    // Its result is written to a results ConfigMap before its Job goes; the status of the
    // reconcile that sees that ConfigMap (and no longer a's Job) is the last one written.
    let results = results_of(&wq, &[(job_name("thumbs", "a.png"), "Succeeded")]);
    let mut recorded = wq.clone();
    recorded.status = Some(status);
    let stores = ChildStores::prefilled([
        Child::ConfigMap(results.clone()),
        Child::Job(b.clone()),
        Child::Job(c.clone()),
    ]);
    let observed = Observed::cached(&stores, "media", "wq-uid");
    let children = desired::desired(&recorded, &config().render, &observed)
        .unwrap()
        .into_vec();
    let applied = Applied::new(children).with_pods(observed.job_pods());
    let mut restarted = wq.clone();
    restarted.status = Some(status::observed(&recorded, &applied, Timestamp::now()));
    assert_eq!(restarted.status.as_ref().unwrap().succeeded, 1);

    // The restart: a new controller, whose caches fill from the API server (b's and c's
    // Jobs, no longer a's) after the reconcile started, and the status as recorded.
    let (stores, fill) = ChildStores::unfilled();
    let (client, mut api) = mock_api::pair("media");
    let ctx = context(client, stores);
    // Kept, so that the client stays open and a late request would still be seen.
    let _ctx = ctx.clone();
    let reconciling = tokio::spawn(reconcile(Arc::new(restarted), ctx));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    fill.fill([Child::ConfigMap(results), Child::Job(b), Child::Job(c)]);
    let result = tokio::time::timeout(Duration::from_secs(30), reconciling)
        .await
        .expect("the reconcile made a request: it created, deleted or patched something")
        .unwrap();
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    api.expect_no_request("not one request: a, b and c are not created again")
        .await;
}

#[tokio::test]
async fn a_job_the_stale_cache_missed_is_refused_as_existing_and_nothing_more_starts() {
    let wq = work_queue(2, json!({}));
    // The API server has a's and b's Jobs; the cache has seen only a's.
    let cached = vec![Child::Job(running(job(&wq, "a.png")))];
    let b = job(&wq, "b.png");
    let wq2 = wq.clone();
    let (result, _) = run_scenario(wq, cached, move |mut api| async move {
        api.create(JOBS, &b, StatusCode::CONFLICT).await;
        let status = api.status(&wq2).await;
        assert_eq!(
            counts(&status),
            (3, 2, 0, 0),
            "b counts as running: two, not three"
        );
        api
    })
    .await;
    result.unwrap();
}

/// The results ConfigMap `thumbs-results-0` recording `entries`, as the cache holds it.
fn results_of(wq: &WorkQueue, entries: &[(String, &str)]) -> ConfigMap {
    let entries: Vec<(String, String)> = entries
        .iter()
        .map(|(k, v)| (k.clone(), (*v).to_owned()))
        .collect();
    let (mut cm, _) = Recorded::default().next_chunk(wq, &entries);
    cm.metadata.resource_version = Some("7".into());
    cm
}

#[tokio::test]
async fn a_finished_job_is_deleted_only_by_the_reconcile_after_its_result_is_recorded() {
    let wq = work_queue(5, json!({"ttlSecondsAfterFinished": 0}));
    let a_name = job_name("thumbs", "a.png");
    // a finished a minute ago; the last status found its TTL passed.
    let a = finished(
        job(&wq, "a.png"),
        "Complete",
        "CompletionsReached",
        Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60),
    );
    let rest: Vec<Job> = ITEMS[1..].iter().map(|i| running(job(&wq, i))).collect();
    let cached = |results: Option<ConfigMap>| {
        let mut c = vec![Child::Job(a.clone())];
        c.extend(results.map(Child::ConfigMap));
        c.extend(rest.iter().cloned().map(Child::Job));
        c
    };
    let mut due = wq.clone();
    due.status = Some(status_of(json!({"expiredJobs": [a_name]})));
    // First: its result is only on the Job, so the Job stays and the result is written.
    let results = results_of(&wq, &[(a_name.clone(), "Succeeded")]);
    let written = {
        let mut r = results.clone();
        r.metadata.resource_version = None;
        r
    };
    let wq2 = due.clone();
    let name = a_name.clone();
    let (result, _) = run_scenario(due.clone(), cached(None), move |mut api| async move {
        api.create(
            "/api/v1/namespaces/media/configmaps",
            &written,
            StatusCode::CREATED,
        )
        .await;
        let status = api.status(&wq2).await;
        assert_eq!(counts(&status), (0, 4, 1, 0));
        assert_eq!(status["expiredJobs"], json!([name]));
        assert_eq!(status["results"]["configMaps"], json!(["thumbs-results-0"]));
        api
    })
    .await;
    result.unwrap();
    // Then, with that ConfigMap in the cache: the Job is deleted, its result stays.
    let wq3 = due.clone();
    let (result, _) = run_scenario(due, cached(Some(results)), move |mut api| async move {
        api.delete(&format!("{JOBS}/{}", job_name("thumbs", "a.png")))
            .await;
        let status = api.status(&wq3).await;
        assert_eq!(counts(&status), (0, 4, 1, 0));
        assert_eq!(status["results"]["recorded"], 1);
        api
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_job_deleted_while_its_result_is_recorded_is_not_created_again() {
    let wq = work_queue(1, json!({}));
    let results = results_of(
        &wq,
        &[
            (job_name("thumbs", "a.png"), "Succeeded"),
            (
                job_name("thumbs", "b.png"),
                "Failed: BackoffLimitExceeded: the Job controller says so; item: \"b.png\"",
            ),
        ],
    );
    let c = job(&wq, "c.png");
    let wq2 = wq.clone();
    let (result, _) = run_scenario(
        wq.clone(),
        vec![Child::ConfigMap(results)],
        move |mut api| async move {
            api.create(JOBS, &c, StatusCode::CREATED).await;
            let status = api.status(&wq2).await;
            assert_eq!(counts(&status), (2, 1, 1, 1));
            api
        },
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_job_of_an_items_name_that_the_queue_does_not_control_is_left_alone_and_named() {
    // a's Job name is taken by a finished Job without an owner: left behind by a queue of
    // the same name deleted with --cascade=orphan. It is neither counted nor replaced.
    let wq = work_queue(1, json!({}));
    let mut orphan = succeeded(created(job(&wq, "a.png")));
    orphan.metadata.owner_references = None;
    let b = job(&wq, "b.png");
    let wq2 = wq.clone();
    let (result, _) = run_scenario(
        wq.clone(),
        vec![Child::Job(orphan)],
        move |mut api| async move {
            api.create(JOBS, &b, StatusCode::CREATED).await;
            let status = api.status(&wq2).await;
            assert_eq!(counts(&status), (4, 1, 0, 0));
            let degraded = condition(&status, "Degraded");
            assert_eq!(degraded["reason"], "JobConflict");
            let event = api.event().await;
            assert_eq!(event["reason"], "JobConflict");
            assert!(
                event["note"].as_str().unwrap().contains(&format!(
                    "(Job {} exists with no controller)",
                    job_name("thumbs", "a.png")
                )),
                "{event}"
            );
            api
        },
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_pod_that_cannot_start_is_reported_once_and_cleared_when_it_runs() {
    let wq = work_queue(1, json!({}));
    let a = running(created(job(&wq, "a.png")));
    let stuck = pod_of(&a, Some("ImagePullBackOff"));
    let cached = || vec![Child::Job(a.clone())];
    // The pod's own state is all that changed: the status names the item, then the Event.
    let wq2 = wq.clone();
    let pod_name = stuck.metadata.name.clone().unwrap();
    let stores = ChildStores::prefilled_with_pods(cached(), [stuck.clone()]);
    let (result, _) = run_scenario_with(wq.clone(), stores, move |mut api| async move {
        let status = api.status(&wq2).await;
        assert_eq!(counts(&status), (4, 1, 0, 0));
        assert_eq!(
            status["stuckItems"],
            json!([{"job": job_name("thumbs", "a.png"), "item": "a.png", "pod": pod_name,
                    "reason": "ImagePullBackOff",
                    "message": "container \"worker\": Back-off pulling image \"nope:1\""}])
        );
        let degraded = condition(&status, "Degraded");
        assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("ItemsStuck")));
        let event = api.event().await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("ItemStuck")));
        assert_eq!(
            event["note"],
            format!(
                "item \"a.png\" cannot start: pod {pod_name}: ImagePullBackOff: container \"worker\": Back-off pulling image \"nope:1\"; its Job is {}",
                job_name("thumbs", "a.png")
            )
        );
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));

    // Reported: a reconcile that sees the same costs no request.
    let mut reported = wq.clone();
    reported.status = Some(status::observed(
        &wq,
        &Applied::new(cached()).with_pods(vec![Arc::new(stuck.clone())]),
        Timestamp::now(),
    ));
    let stores = ChildStores::prefilled_with_pods(cached(), [stuck.clone()]);
    let (result, _) = run_scenario_with(reported.clone(), stores, |api| async move { api }).await;
    result.unwrap();

    // The pod runs: the report clears, with no Event.
    let wq3 = reported.clone();
    let stores = ChildStores::prefilled_with_pods(cached(), [pod_of(&a, None)]);
    let (result, _) = run_scenario_with(reported, stores, move |mut api| async move {
        let status = api.status(&wq3).await;
        assert!(status.get("stuckItems").is_none(), "{status}");
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("False"), Some("Reconciled"))
        );
        api
    })
    .await;
    result.unwrap();
}

// Source mode.

/// Serves `GET /api/v1/items` with `status` and `body` on 127.0.0.1; returns its base URL.
async fn serve_source(status: StatusCode, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let (status, body) = if req.uri().path() == "/api/v1/items" {
                        (status, body)
                    } else {
                        (StatusCode::NOT_FOUND, "not here")
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Where the ConfigMap of `feed` is read and patched.
const FEED_ITEMS: &str = "/api/v1/namespaces/media/configmaps/feed-items";

/// The ConfigMap of `feed` as the API server holds it, with `data`.
fn feed_items(data: &[(String, &str)]) -> ConfigMap {
    let mut cm = first(&source_queue()).items.expect("source mode");
    cm.metadata.resource_version = Some("7".into());
    cm.data = Some(
        data.iter()
            .map(|(k, v)| (k.clone(), (*v).to_owned()))
            .collect(),
    );
    cm
}

#[tokio::test]
async fn the_source_client_reads_what_a_real_source_on_localhost_lists() {
    let client = SourceClient::new();
    let base = serve_source(
        StatusCode::OK,
        r#"{"kind": "ItemList", "apiVersion": "v1", "items": ["b", "a", "b"]}"#,
    )
    .await;
    assert_eq!(client.list(&base).await.unwrap(), ["b", "a"]);
    let base = serve_source(StatusCode::OK, r#"["x"]"#).await;
    assert_eq!(client.list(&format!("{base}/")).await.unwrap(), ["x"]);
}

#[tokio::test]
async fn a_broken_source_is_a_clear_error_and_nothing_is_read_or_written() {
    let (api_client, mut server) = mock_api::pair("media");
    let api: Api<ConfigMap> = Api::namespaced(api_client, "media");
    let client = SourceClient::new();
    let wq = source_queue();

    let base = serve_source(StatusCode::INTERNAL_SERVER_ERROR, "database is down").await;
    let error = source::poll_once(&api, &client, &wq, &base, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SourceError::Status { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("GET {base}/api/v1/items: the source answered 500: database is down")
    );

    let base = serve_source(StatusCode::OK, r#"["a", {"name": "b"}]"#).await;
    let error = source::poll_once(&api, &client, &wq, &base, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "GET {base}/api/v1/items: item #1 is a JSON object, not a string; nothing was added"
        )
    );

    let base = serve_source(StatusCode::OK, "a, b, c").await;
    let error = source::poll_once(&api, &client, &wq, &base, None)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("the answer is not JSON"),
        "{error}"
    );

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = source::poll_once(&api, &client, &wq, &format!("http://{closed}"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SourceError::Unreachable { .. }),
        "{error:?}"
    );

    server
        .expect_no_request("the API server was not asked anything")
        .await;
}

#[tokio::test]
async fn a_poll_that_finds_every_item_in_the_cache_asks_the_api_server_nothing() {
    let wq = source_queue();
    let key = |seq, item| source_key(seq, &job_name("feed", item));
    let base = serve_source(StatusCode::OK, r#"["zebra", "mango"]"#).await;
    let cached = feed_items(&[(key(0, "zebra"), "zebra"), (key(1, "mango"), "mango")]);
    let (api_client, mut server) = mock_api::pair("media");
    // Held, so that the mock sees a quiet client, not a closed one, once the poll is done.
    let _held = api_client.clone();
    let api: Api<ConfigMap> = Api::namespaced(api_client, "media");
    // Watched while the poll runs: a request would go unanswered and hold the poll.
    let poll = tokio::spawn(async move {
        source::poll_once(&api, &SourceClient::new(), &wq, &base, Some(&cached)).await
    });
    server
        .expect_no_request("every listed item is in the cached ConfigMap: no GET, no PATCH")
        .await;
    assert_eq!(poll.await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn the_poller_adds_only_new_items_and_the_controller_gives_them_jobs_in_that_order() {
    let wq = source_queue();
    let key = |seq, item| source_key(seq, &job_name("feed", item));
    // The source lists zebra (persisted before), then mango and apple (new).
    let base = serve_source(StatusCode::OK, r#"["zebra", "mango", "apple"]"#).await;
    let live = feed_items(&[(key(0, "zebra"), "zebra")]);
    let (api_client, mut server) = mock_api::pair("media");
    let api: Api<ConfigMap> = Api::namespaced(api_client, "media");
    let live2 = live.clone();
    let verifier = tokio::spawn(async move {
        server
            .answer(Method::GET, FEED_ITEMS, StatusCode::OK, &live2)
            .await;
        let (body, send) = server
            .expect(
                Method::PATCH,
                &format!("{FEED_ITEMS}?&fieldManager=rigging-operator-source"),
            )
            .await;
        // A merge patch that only adds, conditional on the version just read.
        assert_eq!(
            body,
            json!({
                "metadata": {"resourceVersion": "7"},
                "data": {key(1, "mango"): "mango", key(2, "apple"): "apple"},
            })
        );
        let mut patched = serde_json::to_value(&live2).unwrap();
        patched["data"][key(1, "mango")] = json!("mango");
        patched["data"][key(2, "apple")] = json!("apple");
        send.send_response(json_response(StatusCode::OK, &patched));
        patched
    });
    let added = source::poll_once(&api, &SourceClient::new(), &wq, &base, None)
        .await
        .unwrap();
    assert_eq!(added, 2);
    let patched: ConfigMap = serde_json::from_value(verifier.await.unwrap()).unwrap();

    // The controller, with that ConfigMap in its cache: Jobs for the first two items in
    // the order the poller saw them, and nothing applied to the ConfigMap's data.
    let mut wq = wq;
    wq.metadata.resource_version = Some("3".into());
    let stores = ChildStores::prefilled([Child::ConfigMap(patched.clone())]);
    let want = desired::desired(
        &wq,
        &config().render,
        &Observed::cached(&stores, "media", "wq-uid"),
    )
    .unwrap();
    let names: Vec<String> = want
        .jobs
        .iter()
        .map(|j| j.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [job_name("feed", "zebra"), job_name("feed", "mango")]
    );
    let deployment = want.source_deployment.clone().unwrap();
    let service = want.source_service.clone().unwrap();
    let wq2 = wq.clone();
    let (result, _) = run_scenario(
        wq,
        vec![Child::ConfigMap(patched)],
        move |mut api| async move {
            // The ConfigMap holds what the operator applies (metadata only): not applied.
            api.apply(
                "/apis/apps/v1/namespaces/media/deployments/feed-source",
                &deployment,
            )
            .await;
            api.apply("/api/v1/namespaces/media/services/feed-source", &service)
                .await;
            for job in &want.jobs {
                api.create(JOBS, job, StatusCode::CREATED).await;
            }
            let status = api.status(&wq2).await;
            assert_eq!(counts(&status), (1, 2, 0, 0));
            api
        },
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn the_poller_writes_nothing_into_a_config_map_it_does_not_control_or_that_is_missing() {
    let wq = source_queue();
    let base = serve_source(StatusCode::OK, r#"["a"]"#).await;
    let mut foreign = feed_items(&[]);
    foreign.metadata.owner_references = None;
    let (api_client, mut server) = mock_api::pair("media");
    let api: Api<ConfigMap> = Api::namespaced(api_client, "media");
    let verifier = tokio::spawn(async move {
        server
            .answer(Method::GET, FEED_ITEMS, StatusCode::OK, &foreign)
            .await;
        let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
        server
            .answer(Method::GET, FEED_ITEMS, StatusCode::NOT_FOUND, missing)
            .await;
        server
    });
    let client = SourceClient::new();
    let error = source::poll_once(&api, &client, &wq, &base, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "ConfigMap media/feed-items is not controlled by WorkQueue feed; nothing was added"
    );
    let error = source::poll_once(&api, &client, &wq, &base, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SourceError::NoConfigMap { .. }),
        "{error:?}"
    );
    let mut server = verifier.await.unwrap();
    server.expect_no_request("no write").await;
}

// The committed CRD.

/// The `openAPIV3Schema` of the committed WorkQueue CRD.
fn committed_schema() -> Value {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crds/workqueues.rigging.dev.yaml"),
    )
    .unwrap();
    let crd: Value = serde_norway::from_str(&text).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn cel_messages(doc: &Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&committed_schema(), doc, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| e.message.clone())
            .collect(),
    }
}

#[test]
fn the_work_queue_examples_pass_the_committed_crds_rules_and_the_rules_refuse_the_rest() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/work-queue");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            cel_messages(&doc),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert_eq!(seen, 3);
    let mut doc = serde_json::to_value(work_queue(1, json!({}))).unwrap();
    doc["metadata"]["name"] = json!("a-name-longer-than-thirty-characters");
    doc["spec"]["source"] = json!({"template": {"name": "s", "image": "s"}});
    let messages = cel_messages(&doc);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m
                .starts_with("metadata.name must be a DNS-1035 label of at most 30 characters")),
        "{messages:?}"
    );
    assert!(
        messages.contains(
            &"set exactly one of items (a static list) or source (a container that lists them)"
                .to_owned()
        ),
        "{messages:?}"
    );
}
