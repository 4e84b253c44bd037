//! WorkQueues, Jobs and caches for the unit tests of this kind, written the way users and
//! the Job controller write them.

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use rigging_crds::WorkQueue;

use super::desired::{self, Children};
use crate::controller::{Applied, Child, ChildStores, Observed, RenderConfig};

/// A WorkQueue from YAML, the way users write it.
pub fn work_queue(yaml: &str) -> WorkQueue {
    serde_norway::from_str(yaml).expect("test fixture parses")
}

/// `items` processed by a busybox worker, `parallelism` at once, as the API server hands it
/// to the controller (with a uid, so its children carry an owner reference).
pub fn static_queue(items: &[&str], parallelism: i32) -> WorkQueue {
    let items = serde_json::to_string(items).unwrap();
    work_queue(&format!(
        r#"
apiVersion: rigging.dev/v1alpha1
kind: WorkQueue
metadata: {{name: thumbs, namespace: media, uid: wq-uid, generation: 2}}
spec:
  items: {items}
  parallelism: {parallelism}
  retries: 2
  activeDeadlineSeconds: 600
  worker:
    template:
      metadata: {{labels: {{team: media}}}}
      spec:
        containers:
          - name: worker
            image: busybox:1.36
            command: [sh, -c, 'cat "$WORK_ITEM_FILE"']
            env: [{{name: OUT, value: "/out/$(WORK_ITEM)"}}]
"#
    ))
}

/// A WorkQueue whose items come from a source container.
pub fn source_queue() -> WorkQueue {
    work_queue(
        r#"
apiVersion: rigging.dev/v1alpha1
kind: WorkQueue
metadata: {name: feed, namespace: media, uid: wq-uid, generation: 1}
spec:
  source:
    template: {name: source, image: feed-source:1}
    port: 8080
    pollInterval: 10s
  parallelism: 2
  worker:
    template:
      spec:
        containers: [{name: worker, image: busybox:1.36}]
"#,
    )
}

/// The configuration the tests render with.
pub fn config() -> RenderConfig {
    RenderConfig {
        sidecar_image: "sidecar:test".into(),
        ..RenderConfig::default()
    }
}

/// What the first reconcile in an empty namespace creates.
pub fn first(wq: &WorkQueue) -> Children {
    desired::desired(wq, &config(), &Observed::nothing()).expect("valid fixture")
}

/// The children `wq` wants when the caches hold `cached` (no clock: nothing started on
/// one, such as a backup).
pub fn with_cached(wq: &WorkQueue, cached: Vec<Child>) -> Children {
    desired_with(wq, cached, None)
}

/// The children `wq` wants at `now` when the caches hold `cached`.
pub fn with_cached_at(wq: &WorkQueue, cached: Vec<Child>, now: Timestamp) -> Children {
    desired_with(wq, cached, Some(now))
}

fn desired_with(wq: &WorkQueue, cached: Vec<Child>, now: Option<Timestamp>) -> Children {
    let stores = ChildStores::prefilled(cached);
    let mut observed = Observed::cached(&stores, "media", "wq-uid");
    if let Some(now) = now {
        observed = observed.at(now);
    }
    desired::desired(wq, &config(), &observed).expect("valid fixture")
}

/// The names of the Jobs of `children`.
pub fn job_names(children: &Children) -> Vec<String> {
    children
        .jobs
        .iter()
        .map(|j| j.metadata.name.clone().unwrap())
        .collect()
}

/// `wq`'s Job for `item`, as the first reconcile renders it (no status yet), with the uid
/// the API server gives it ([`job_uid`]).
pub fn job_of(wq: &WorkQueue, item: &str) -> Job {
    let name = super::naming::job_name("thumbs", item);
    let mut all = wq.clone();
    all.spec.parallelism = 1000;
    all.status = None;
    let mut job = first(&all)
        .jobs
        .into_iter()
        .find(|j| j.metadata.name.as_deref() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("{item} is an item of the fixture"));
    job.metadata.uid = Some(job_uid(&name));
    job
}

/// `wq`'s backup Job for `item`, as desired renders it (no status yet), with its uid.
pub fn backup_of(wq: &WorkQueue, item: &str) -> Job {
    let mut job = desired::as_backup(job_of(wq, item), "thumbs", item);
    job.metadata.uid = job.metadata.name.as_deref().map(job_uid);
    job
}

/// The uid of the Job `name` in these fixtures.
pub fn job_uid(name: &str) -> String {
    format!("uid-{name}")
}

/// A pod of the Job with `job_uid`, `Pending` as the Job controller created it.
fn pod_of(name: &str, job_uid: &str, status: PodStatus) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("media".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: "its-job".into(),
                uid: job_uid.into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..status
        }),
    }
}

/// A pod of the Job with `job_uid` whose `container` waits with `reason` and `message`, as
/// the kubelet reports it.
pub fn pod_waiting(name: &str, job_uid: &str, container: &str, reason: &str, message: &str) -> Pod {
    pod_of(
        name,
        job_uid,
        PodStatus {
            conditions: Some(vec![pod_condition("PodScheduled", "True", None, None)]),
            container_statuses: Some(vec![ContainerStatus {
                name: container.into(),
                image: "busybox:1.36".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: (!message.is_empty()).then(|| message.into()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        },
    )
}

/// A pod of the Job with `job_uid` that the scheduler could not place, with its `message`.
pub fn pod_unschedulable(name: &str, job_uid: &str, message: &str) -> Pod {
    pod_of(
        name,
        job_uid,
        PodStatus {
            conditions: Some(vec![pod_condition(
                "PodScheduled",
                "False",
                Some("Unschedulable"),
                Some(message),
            )]),
            ..PodStatus::default()
        },
    )
}

fn pod_condition(
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(Into::into),
        message: message.map(Into::into),
        ..PodCondition::default()
    }
}

/// `job` once it completed at `at`.
pub fn succeeded(mut job: Job, at: Timestamp) -> Job {
    let start_time = job.status.as_ref().and_then(|s| s.start_time.clone());
    job.status = Some(JobStatus {
        start_time,
        succeeded: Some(1),
        completion_time: Some(Time(at)),
        conditions: Some(vec![
            condition("SuccessCriteriaMet", "CompletionsReached", at),
            condition("Complete", "CompletionsReached", at),
        ]),
        ..JobStatus::default()
    });
    job
}

/// `job` once every try failed, at `at`.
pub fn failed(mut job: Job, at: Timestamp) -> Job {
    let mut c = condition("Failed", "BackoffLimitExceeded", at);
    c.message = Some("Job has reached the specified backoff limit".into());
    job.status = Some(JobStatus {
        failed: Some(3),
        conditions: Some(vec![
            condition("FailureTarget", "BackoffLimitExceeded", at),
            c,
        ]),
        ..JobStatus::default()
    });
    job
}

/// `job` with a pod running (or pending).
pub fn active(mut job: Job) -> Job {
    job.status = Some(JobStatus {
        active: Some(1),
        ..JobStatus::default()
    });
    job
}

/// `job` with a pod running (or pending) since `start`, as the Job controller reports it.
pub fn active_since(mut job: Job, start: Timestamp) -> Job {
    job.status = Some(JobStatus {
        active: Some(1),
        start_time: Some(Time(start)),
        ..JobStatus::default()
    });
    job
}

fn condition(type_: &str, reason: &str, at: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        last_transition_time: Some(Time(at)),
        ..JobCondition::default()
    }
}

/// A time in 2026, `s` seconds after a fixed instant.
pub fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_780_000_000 + s).unwrap()
}

/// `wq`'s results ConfigMap number `seq`, as the operator writes it and the cache holds it,
/// recording `entries` (Job name, value).
pub fn results_chunk(wq: &WorkQueue, seq: u64, entries: &[(String, String)]) -> ConfigMap {
    let recorded = super::results::Recorded::default();
    let (mut cm, _) = recorded.next_chunk(wq, entries);
    cm.metadata.name = Some(super::results::chunk_name("thumbs", seq));
    cm.metadata.resource_version = Some(format!("rv-{seq}"));
    cm
}

/// The Job `job`'s name with the value recorded for it.
pub fn recorded_as(job: &Job, value: &str) -> (String, String) {
    (job.metadata.name.clone().unwrap(), value.to_owned())
}

/// What the status reads after an apply: `children` as applied, and the caches holding
/// `cached` and `pods`.
pub fn applied_with_cache(children: Vec<Child>, cached: Vec<Child>, pods: Vec<Pod>) -> Applied {
    let stores = ChildStores::prefilled_with_pods(cached, pods);
    let observed = Observed::cached(&stores, "media", "wq-uid");
    Applied::new(children).with_pods(observed.job_pods())
}
