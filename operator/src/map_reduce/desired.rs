//! A MapReduce's children, computed without IO:
//! - the managed broker (unless the MapReduce names one), which keeps the outputs in a
//!   key-value bucket and the results in an object store;
//! - a WorkQueue per run, `<name>-<run>`, created once and never updated: a run keeps the
//!   spec it started with. Its worker gets `WORK_OUTPUT_FILE` and the native sidecar
//!   `rigging-output`, which stores the file under the item's Job name when the worker
//!   has exited;
//! - once a run's barrier has passed, its reduce Job `<name>-<run>-reduce`, running
//!   `rigging-sidecar reduce`, created once (the reducer itself does nothing for a run
//!   whose result is stored already, so a retried Job writes it once);
//! - the ConfigMap `<name>-result` the reducer writes the result into (the operator
//!   applies only its labels and owner), and the reducer's ServiceAccount, Role and
//!   RoleBinding `<name>-reduce`, which may patch that one ConfigMap and nothing else.
//!
//! When runs start ([`plan`]): the first at once; then each new value of the
//! `rigging.dev/run-now` annotation starts one, unless a run is going and the
//! `concurrencyPolicy` is `Forbid` (the value is then used up, and an Event says it was
//! skipped). The newest `runsKept` runs are kept; older ones are deleted with their
//! WorkQueue, Jobs and pods (their outputs and results stay in the broker).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EmptyDirVolumeSource, EnvVar, PodSpec, PodTemplateSpec, ServiceAccount,
    Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rigging_crds::map_reduce::{
    ConcurrencyPolicy, MapReduce, RUN_NOW_ANNOTATION, RunPhase, SCHEDULED_FOR_ANNOTATION,
};
use rigging_crds::sidecar::batch::{
    BatchArgsError, DEFAULT_OUTPUT_DIR, DEFAULT_OUTPUT_FILE, OUTPUT_FILE_ENV, OUTPUT_KEY_ENV,
    OutputArgs, REDUCE_DIR, REDUCE_OUTPUTS_FILE_ENV, REDUCE_RESULT_FILE_ENV, ReduceArgs,
    check_bounds,
};
use rigging_crds::sidecar::ports;
use rigging_crds::{FieldError, FieldErrors, WorkQueue};

use super::schedule;
use crate::broker;
use crate::controller::{Child, Observed, RenderConfig, bind_role, child_meta, with_managed};
use crate::sidecars::{self, field_env, queue_env};

/// The `app.kubernetes.io/name` of every object a MapReduce runs.
pub const APP_NAME: &str = "rigging-map-reduce";
/// The label naming the MapReduce a run belongs to.
pub const MAP_REDUCE_LABEL: &str = "rigging.dev/map-reduce";
/// The label holding a run's number.
pub const RUN_LABEL: &str = "rigging.dev/run";
/// The native sidecar that stores a worker's output.
pub const OUTPUT: &str = "rigging-output";
/// The reduce Job's container.
pub const REDUCE: &str = "rigging-reduce";
/// The least grace period of a run's worker pods: the output sidecar tries to store the
/// output for all of it but 15 s.
pub const OUTPUT_GRACE_SECONDS: i64 = 90;
/// The volume the worker writes its output to and the sidecar reads it from.
const OUTPUT_VOLUME: &str = "rigging-output";
/// The reduce Job's first step with a reducer container: the outputs into a file for it.
pub const OUTPUTS_STEP: &str = "rigging-outputs";
/// The volume the reduce Job's steps share.
const REDUCE_VOLUME: &str = "rigging-reduce";
/// The outputs file in it.
const REDUCE_OUTPUTS: &str = "outputs.jsonl";
/// The reducer container's result in it.
const REDUCE_RESULT: &str = "result";

/// The WorkQueue of run `number`.
pub fn run_name(mr: &str, number: i64) -> String {
    format!("{mr}-{number}")
}

/// The reduce Job of run `number`.
pub fn reduce_job_name(mr: &str, number: i64) -> String {
    format!("{mr}-{number}-reduce")
}

/// The ConfigMap the reducer writes each run's result into.
pub fn result_name(mr: &str) -> String {
    format!("{mr}-result")
}

/// The reducer's ServiceAccount, Role and RoleBinding.
pub fn reducer_access_name(mr: &str) -> String {
    format!("{mr}-reduce")
}

/// The key-value bucket of the outputs: `<namespace>_<name>_outputs` (`_` is in neither,
/// so two MapReduces sharing a broker never share a bucket).
pub fn outputs_bucket(mr: &MapReduce) -> String {
    format!(
        "{}_{}_outputs",
        mr.namespace().unwrap_or_default(),
        mr.name_any()
    )
}

/// The object store of the results, one object per run (named by its number).
pub fn results_bucket(mr: &MapReduce) -> String {
    format!(
        "{}_{}_results",
        mr.namespace().unwrap_or_default(),
        mr.name_any()
    )
}

fn selector(mr: &MapReduce, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), mr.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

fn meta(mr: &MapReduce, name: String, component: &str) -> ObjectMeta {
    child_meta(mr, name, with_managed(selector(mr, component)))
}

fn run_meta(mr: &MapReduce, name: String, component: &str, number: i64) -> ObjectMeta {
    let mut meta = meta(mr, name, component);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MAP_REDUCE_LABEL.into(), mr.name_any());
    labels.insert(RUN_LABEL.into(), number.to_string());
    meta
}

/// The items that must succeed for the barrier of a run of `items` to pass.
pub fn min_succeeded(mr: &MapReduce, items: i32) -> i32 {
    match &mr.spec.join.min_succeeded {
        None => items,
        Some(IntOrString::Int(n)) => (*n).clamp(0, items),
        Some(IntOrString::String(text)) => match text.strip_suffix('%') {
            Some(percent) => {
                let p: i64 = percent.parse().unwrap_or(100);
                // Rounded up: 90% of 11 items is 10, not 9.
                let n = (i64::from(items) * p.clamp(0, 100) + 99) / 100;
                i32::try_from(n).unwrap_or(items)
            }
            // A number written as a string ("2"), which the schema lets through.
            None => text.parse::<i32>().map_or(items, |n| n.clamp(0, items)),
        },
    }
}

/// A run as its WorkQueue and reduce Job show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Its number.
    pub number: i64,
    /// Its items: those of its WorkQueue, which keeps the spec the run started with.
    pub items: i32,
    /// Items that must succeed for its barrier to pass.
    pub need: i32,
    /// Items done (from the WorkQueue's status).
    pub succeeded: i32,
    /// Items failed every try.
    pub failed: i32,
    /// Where it is.
    pub phase: RunPhase,
    /// Whether its barrier has passed: its reduce Job runs, or ran.
    pub joined: bool,
    /// Why it failed.
    pub message: Option<String>,
    /// The time of the schedule it was started for.
    pub scheduled_for: Option<Timestamp>,
    /// The run-now value that started it.
    pub run_now: Option<String>,
}

/// The number of run `queue` of the MapReduce `mr`, if it is one of its runs.
pub fn run_number(mr: &str, queue: &WorkQueue) -> Option<i64> {
    let number = queue.labels().get(RUN_LABEL)?.parse().ok()?;
    (queue.name_any() == run_name(mr, number)).then_some(number)
}

/// Where run `number` is, from its WorkQueue and its reduce Job (if any). Its items are
/// its WorkQueue's: a spec edited while it goes changes later runs, not this one.
pub fn run_of(mr: &MapReduce, number: i64, queue: &WorkQueue, reduce: Option<&Job>) -> Run {
    let status = queue.status.clone().unwrap_or_default();
    let (succeeded, failed) = (status.succeeded, status.failed);
    let items = queue
        .spec
        .items
        .as_ref()
        .map_or(0, |items| i32::try_from(items.len()).unwrap_or(i32::MAX));
    let need = min_succeeded(mr, items);
    let mut run = Run {
        number,
        items,
        need,
        succeeded,
        failed,
        phase: RunPhase::Mapping,
        joined: false,
        message: None,
        scheduled_for: queue
            .annotations()
            .get(SCHEDULED_FOR_ANNOTATION)
            .and_then(|t| t.parse().ok()),
        run_now: queue.annotations().get(RUN_NOW_ANNOTATION).cloned(),
    };
    if failed > items - need {
        run.phase = RunPhase::Failed;
        run.message = Some(format!(
            "{failed} of {items} items failed: the barrier needs {need} to succeed, so at most {} may fail",
            items - need
        ));
        return run;
    }
    if succeeded + failed < items {
        return run;
    }
    run.phase = RunPhase::Reducing;
    run.joined = true;
    let Some(job) = reduce else {
        return run;
    };
    let conditions = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten());
    for c in conditions.filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => run.phase = RunPhase::Succeeded,
            "Failed" => {
                run.phase = RunPhase::Failed;
                run.message = Some(format!(
                    "the reduce failed every try ({}): {}",
                    c.reason.as_deref().unwrap_or("Failed"),
                    c.message.as_deref().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
    run
}

/// What this reconcile does about runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The run to start now, if any.
    pub start: Option<i64>,
    /// The run going that a `Replace` stops.
    pub replace: Option<i64>,
    /// The new run-now value this reconcile acts on (a run starts, or is skipped).
    pub run_now: Option<String>,
    /// The time of the schedule this reconcile acts on.
    pub scheduled_for: Option<Timestamp>,
}

/// A run the object has, from the cache: its WorkQueue, its reduce Job, where it is.
struct Cached {
    queue: Arc<WorkQueue>,
    reduce: Option<Arc<Job>>,
    run: Run,
}

/// The runs the object has (the WorkQueues it controls), newest first.
fn runs_in_cache(mr: &MapReduce, observed: &Observed) -> Vec<Cached> {
    let Some(cache) = observed.cache() else {
        return Vec::new();
    };
    let name = mr.name_any();
    let mut runs: Vec<Cached> = cache
        .in_namespace::<WorkQueue>()
        .into_iter()
        .filter(|q| cache.controls(&**q))
        .filter_map(|queue| {
            let number = run_number(&name, &queue)?;
            let reduce = cache.get::<Job>(&reduce_job_name(&name, number));
            let run = run_of(mr, number, &queue, reduce.as_deref());
            Some(Cached { queue, reduce, run })
        })
        .collect();
    runs.sort_by_key(|c| std::cmp::Reverse(c.run.number));
    runs
}

/// The time of the schedule due at `now`, not acted on yet: the latest after the last one
/// acted on (by the status, or by the newest run's own annotation, should the status lag)
/// or, before any, after the object was made.
pub fn due(mr: &MapReduce, newest: Option<&Run>, now: Option<Timestamp>) -> Option<Timestamp> {
    let compiled = schedule::compile(mr.spec.schedule.as_ref()?).ok()?;
    let acted = mr
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0);
    let after = [acted, newest.and_then(|r| r.scheduled_for)]
        .into_iter()
        .flatten()
        .max()
        .or_else(|| mr.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    compiled.due(after, now?)
}

/// A run-now value not acted on yet (by the status, or by the newest run, should the
/// status lag).
pub fn new_run_now(mr: &MapReduce, newest: Option<&Run>) -> Option<String> {
    let value = mr.annotations().get(RUN_NOW_ANNOTATION)?;
    let acted = mr.status.as_ref().and_then(|s| s.last_run_now.as_ref());
    let started = newest.and_then(|r| r.run_now.as_ref());
    (acted != Some(value) && started != Some(value)).then(|| value.clone())
}

/// Whether to start a run now: without a schedule the first at once; then one per new
/// run-now value and per time of the schedule, which a run going either stops
/// (`Replace`) or makes skip (`Forbid`).
pub fn plan(mr: &MapReduce, newest: Option<&Run>, now: Option<Timestamp>) -> Plan {
    let last = mr
        .status
        .as_ref()
        .map_or(0, |s| s.last_run)
        .max(newest.map_or(0, |r| r.number));
    let run_now = new_run_now(mr, newest);
    let scheduled_for = due(mr, newest, now);
    let first = last == 0 && mr.spec.schedule.is_none();
    let mut plan = Plan {
        start: None,
        replace: None,
        run_now,
        scheduled_for,
    };
    if !(first || plan.run_now.is_some() || plan.scheduled_for.is_some()) {
        return plan;
    }
    let going = newest.filter(|r| matches!(r.phase, RunPhase::Mapping | RunPhase::Reducing));
    if going.is_some() && mr.spec.concurrency_policy == ConcurrencyPolicy::Forbid {
        return plan;
    }
    plan.start = Some(last + 1);
    plan.replace = going.map(|r| r.number);
    plan
}

/// What the CRD's rules cannot check.
pub fn validate(mr: &MapReduce, config: &RenderConfig) -> Result<(), FieldErrors> {
    let mut errors = Vec::new();
    if mr.spec.map.source.is_some() {
        errors.push(FieldError::new(
            "spec.map.source",
            "a run is a fixed batch, which its barrier waits for: give the items as spec.map.items",
        ));
    }
    if !config.native_sidecars {
        errors.push(FieldError::new(
            "spec.map.worker",
            "the output sidecar must be a native sidecar (Kubernetes 1.29 or later), so that it stores the output after the worker exits",
        ));
    }
    // The reducer's own rule for its bounds, which the CRD cannot state.
    if let Some(Err(BatchArgsError::Bounds(why))) =
        mr.spec.reduce.buckets.as_deref().map(check_bounds)
    {
        errors.push(FieldError::new("spec.reduce.buckets", why));
    }
    let worker = mr.spec.map.worker.template.spec.as_ref();
    let names = worker.iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    for (i, c) in names.enumerate() {
        if c.name == OUTPUT {
            errors.push(FieldError::new(
                format!("spec.map.worker.template.spec (container {i})"),
                format!("the container name {OUTPUT} is Rigging's output sidecar's"),
            ));
        }
    }
    if let Some(own) = &mr.spec.reduce.container {
        if [OUTPUTS_STEP, REDUCE].contains(&own.name.as_str()) {
            errors.push(FieldError::new(
                "spec.reduce.container.name",
                format!(
                    "{} is the name of a step Rigging adds to the reduce Job: name your reducer otherwise",
                    own.name
                ),
            ));
        }
        // The reducer runs to its end as an init container: the API server refuses such a
        // container's probes and hooks, and a restartPolicy would make it a sidecar that
        // never ends.
        let init_only = [
            ("livenessProbe", own.liveness_probe.is_some()),
            ("readinessProbe", own.readiness_probe.is_some()),
            ("startupProbe", own.startup_probe.is_some()),
            ("lifecycle", own.lifecycle.is_some()),
            ("restartPolicy", own.restart_policy.is_some()),
        ];
        for (field, _) in init_only.into_iter().filter(|(_, set)| *set) {
            errors.push(FieldError::new(
                format!("spec.reduce.container.{field}"),
                "your reducer runs to its end before the result is stored (an init container of the reduce Job), which takes no probes, hooks or restartPolicy",
            ));
        }
    }
    if worker.is_none_or(|s| s.containers.is_empty()) {
        errors.push(FieldError::new(
            "spec.map.worker.template.spec.containers",
            "the worker's pod template needs its container",
        ));
    }
    if let Some(Err(e)) = mr.spec.schedule.as_ref().map(schedule::compile) {
        errors.push(e);
    }
    errors.extend(broker::check(&mr.spec.broker, "spec.broker"));
    FieldErrors::into_result(errors)
}

/// The children of `mr`, or every reason it is invalid.
pub fn desired(
    mr: &MapReduce,
    config: &RenderConfig,
    observed: &Observed,
) -> Result<Vec<Child>, FieldErrors> {
    validate(mr, config)?;
    let name = mr.name_any();
    let mut children = Vec::new();
    if broker::is_managed(&mr.spec.broker) {
        let selector = selector(mr, "broker");
        let meta = meta(mr, broker::name(&name), "broker");
        children.push(Child::Service(broker::service(meta.clone(), &selector)));
        children.push(Child::StatefulSet(broker::statefulset(
            meta,
            &selector,
            &name,
            &mr.spec.broker,
        )));
    }
    children.extend(reducer_access(mr));
    children.push(Child::ConfigMap(ConfigMap {
        metadata: meta(mr, result_name(&name), "result"),
        ..ConfigMap::default()
    }));

    let cached = runs_in_cache(mr, observed);
    let plan = plan(mr, cached.first().map(|c| &c.run), observed.now());
    let keep = usize::try_from(mr.spec.runs_kept).unwrap_or(1).max(1);
    let mut runs = Vec::new();
    if let Some(number) = plan.start {
        let mut queue = run_queue(mr, config, number);
        let notes = queue.metadata.annotations.get_or_insert_with(BTreeMap::new);
        if let Some(at) = plan.scheduled_for {
            notes.insert(SCHEDULED_FOR_ANNOTATION.into(), at.to_string());
        }
        if let Some(value) = &plan.run_now {
            notes.insert(RUN_NOW_ANNOTATION.into(), value.clone());
        }
        runs.push(Child::WorkQueue(queue));
    }
    let room = keep - runs.len();
    for kept in cached
        .iter()
        .filter(|c| Some(c.run.number) != plan.replace)
        .take(room)
    {
        // Kept as it is: a run keeps the spec it started with (created once, never
        // applied again).
        runs.push(Child::WorkQueue(WorkQueue::clone(&kept.queue)));
        if kept.run.joined {
            // Created once: the first reconcile that sees the barrier passed makes it.
            let job = match &kept.reduce {
                Some(job) => Job::clone(job),
                None => reduce_job(mr, config, &kept.run),
            };
            runs.push(Child::Job(job));
        }
    }
    children.extend(runs);
    Ok(children)
}

/// The WorkQueue of run `number`: the map's spec, its worker writing its output to a
/// volume that the output sidecar stores from.
pub fn run_queue(mr: &MapReduce, config: &RenderConfig, number: i64) -> WorkQueue {
    let name = mr.name_any();
    let mut spec = mr.spec.map.clone();
    let template = &mut spec.worker.template;
    let pod = template.spec.get_or_insert_with(PodSpec::default);
    // The sidecar stores the output within the pod's grace period, which must leave room
    // for a broker that is still starting (the first run of a new MapReduce).
    pod.termination_grace_period_seconds = Some(
        pod.termination_grace_period_seconds
            .unwrap_or_default()
            .max(OUTPUT_GRACE_SECONDS),
    );
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: OUTPUT_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    let mount = |read_only: bool| VolumeMount {
        name: OUTPUT_VOLUME.into(),
        mount_path: DEFAULT_OUTPUT_DIR.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    if let Some(worker) = pod.containers.first_mut() {
        worker
            .env
            .get_or_insert_with(Vec::new)
            .insert(0, plain_env(OUTPUT_FILE_ENV, DEFAULT_OUTPUT_FILE));
        worker
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(mount(false));
    }
    let mut sidecar: Container = sidecars::container(
        OUTPUT,
        &config.sidecar_image,
        &output_args(mr, number),
        ("output-admin", ports::OUTPUT_ADMIN),
    );
    let mut env = queue_env(mr.spec.broker.url_secret.as_ref());
    // The item's key is its Job's name, which the Job controller labels every pod with.
    env.push(field_env(
        OUTPUT_KEY_ENV,
        "metadata.labels['batch.kubernetes.io/job-name']",
    ));
    sidecar.env = Some(env);
    sidecar.volume_mounts = Some(vec![mount(true)]);
    pod.init_containers
        .get_or_insert_with(Vec::new)
        .push(sidecar);
    WorkQueue {
        metadata: run_meta(mr, run_name(&name, number), "run", number),
        spec,
        status: None,
    }
}

/// The output sidecar's command line for run `number`.
pub fn output_args(mr: &MapReduce, number: i64) -> OutputArgs {
    OutputArgs {
        nats: broker::url(&mr.name_any(), &mr.spec.broker),
        bucket: outputs_bucket(mr),
        max_size: u32::try_from(mr.spec.output.max_size).unwrap_or(1),
        upload_timeout: Duration::from_secs(OUTPUT_GRACE_SECONDS.unsigned_abs() - 15),
        // Kubernetes puts the variable's value (the item's Job name) in the argument.
        ..OutputArgs::new(number.to_string(), format!("$({OUTPUT_KEY_ENV})"))
    }
}

/// The reducer's command line for `run`.
pub fn reduce_args(mr: &MapReduce, run: &Run) -> ReduceArgs {
    let reduce = &mr.spec.reduce;
    ReduceArgs {
        nats: broker::url(&mr.name_any(), &mr.spec.broker),
        bucket: outputs_bucket(mr),
        results: Some(results_bucket(mr)),
        path: reduce.path.clone().unwrap_or_default(),
        le: reduce.buckets.clone().unwrap_or_default(),
        config_map: Some(result_name(&mr.name_any())),
        namespace: mr.namespace(),
        // The barrier counted items whose Job succeeded; an item counts as done only
        // with its output stored.
        min_outputs: u64::try_from(run.need).unwrap_or(0),
        ..ReduceArgs::new(run.number.to_string(), reduce.reducer)
    }
}

/// The reduce Job of `run`: `rigging-sidecar reduce`, tried `reduce.retries` more times
/// after a failure. With a reducer container of the user's, three steps, each ending
/// before the next starts: init containers that write the outputs to a shared volume
/// (`rigging-outputs`) and run the user's reducer on them, then `rigging-reduce`, which
/// stores the file it wrote. A failed step fails the pod, and the Job tries again.
pub fn reduce_job(mr: &MapReduce, config: &RenderConfig, run: &Run) -> Job {
    let name = mr.name_any();
    let number = run.number;
    let args = reduce_args(mr, run);
    let step = |container_name: &str, args: &ReduceArgs| {
        let mut container = sidecars::main_container(
            container_name,
            &config.sidecar_image,
            args,
            ("reduce-admin", ports::REDUCE_ADMIN),
        );
        // A Job's container ends: no probes, which would only restart it.
        container.readiness_probe = None;
        container.liveness_probe = None;
        container.env = Some(queue_env(mr.spec.broker.url_secret.as_ref()));
        container
    };
    let mut pod = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(reducer_access_name(&name)),
        security_context: None,
        ..PodSpec::default()
    };
    match &mr.spec.reduce.container {
        None => pod.containers = vec![step(REDUCE, &args)],
        Some(own) => {
            let (outputs, result) = (reduce_file(REDUCE_OUTPUTS), reduce_file(REDUCE_RESULT));
            let write = ReduceArgs {
                outputs_file: Some(outputs.clone().into()),
                ..args.clone()
            };
            let store = ReduceArgs {
                result_from: Some(result.clone().into()),
                ..write.clone()
            };
            let mut write = step(OUTPUTS_STEP, &write);
            // Its admin port is the last step's, which starts once this one has ended.
            write.ports = None;
            let mut own = own.clone();
            own.env.get_or_insert_with(Vec::new).extend([
                plain_env(REDUCE_OUTPUTS_FILE_ENV, outputs),
                plain_env(REDUCE_RESULT_FILE_ENV, result),
            ]);
            let mut containers = [write, own, step(REDUCE, &store)];
            for c in &mut containers {
                c.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(VolumeMount {
                        name: REDUCE_VOLUME.into(),
                        mount_path: REDUCE_DIR.into(),
                        ..VolumeMount::default()
                    });
            }
            let [write, own, store] = containers;
            pod.init_containers = Some(vec![write, own]);
            pod.containers = vec![store];
            pod.volumes = Some(vec![Volume {
                name: REDUCE_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]);
        }
    }
    let meta = run_meta(mr, reduce_job_name(&name, number), "reduce", number);
    Job {
        metadata: meta.clone(),
        spec: Some(JobSpec {
            backoff_limit: Some(mr.spec.reduce.retries),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: meta.labels.clone(),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The file `name` of the reduce Job's shared volume.
fn reduce_file(name: &str) -> String {
    format!("{REDUCE_DIR}/{name}")
}

fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The reducer's identity, and its one right: to patch the result ConfigMap.
fn reducer_access(mr: &MapReduce) -> Vec<Child> {
    let name = reducer_access_name(&mr.name_any());
    let account = ServiceAccount {
        metadata: meta(mr, name.clone(), "reduce"),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: meta(mr, name.clone(), "reduce"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![result_name(&mr.name_any())]),
            verbs: vec!["get".into(), "patch".into()],
            ..PolicyRule::default()
        }]),
    };
    let binding = bind_role(meta(mr, name.clone(), "reduce"), name.clone(), name);
    vec![
        Child::ServiceAccount(account),
        Child::Role(role),
        Child::RoleBinding(binding),
    ]
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobCondition;
    use k8s_openapi::api::batch::v1::JobStatus;
    use rigging_crds::WorkQueueStatus;
    use rigging_crds::map_reduce::MapReduceStatus;

    use super::*;
    use crate::controller::testing::assert_child_of;

    pub(crate) fn map_reduce(extra: &str) -> MapReduce {
        let reduce = if extra.contains("reduce:") {
            ""
        } else {
            "  reduce: {reducer: sum}"
        };
        let yaml = format!(
            r#"
apiVersion: rigging.dev/v1alpha1
kind: MapReduce
metadata: {{name: tally, namespace: votes, uid: u-1, generation: 1}}
spec:
  map:
    items: [shard-0, shard-1, shard-2, shard-3]
    parallelism: 2
    worker:
      template:
        spec:
          containers: [{{name: scan, image: scan:1}}]
{reduce}
{extra}"#
        );
        serde_norway::from_str(&yaml).unwrap()
    }

    fn render(mr: &MapReduce) -> Vec<Child> {
        desired(mr, &RenderConfig::default(), &Observed::nothing()).unwrap()
    }

    fn queue(status: (i32, i32)) -> WorkQueue {
        let mr = map_reduce("");
        let mut q = run_queue(&mr, &RenderConfig::default(), 1);
        q.status = Some(WorkQueueStatus {
            succeeded: status.0,
            failed: status.1,
            ..WorkQueueStatus::default()
        });
        q
    }

    fn job(condition: &str) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: condition.into(),
                    status: "True".into(),
                    reason: Some("BackoffLimitExceeded".into()),
                    message: Some("Job has reached the specified backoff limit".into()),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn the_first_run_starts_at_once_as_a_work_queue_whose_worker_stores_its_output() {
        let mr = map_reduce("");
        let children = render(&mr);
        let kinds: Vec<(&str, String)> = children
            .iter()
            .map(|c| (c.kind(), c.meta().name.clone().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Service", "tally-broker".to_owned()),
                ("StatefulSet", "tally-broker".to_owned()),
                ("ServiceAccount", "tally-reduce".to_owned()),
                ("Role", "tally-reduce".to_owned()),
                ("RoleBinding", "tally-reduce".to_owned()),
                ("ConfigMap", "tally-result".to_owned()),
                ("WorkQueue", "tally-1".to_owned()),
            ]
        );
        for child in &children {
            assert_child_of(child.meta(), "votes", ("MapReduce", "tally", "u-1"));
        }
        let Some(Child::WorkQueue(q)) = children.last() else {
            panic!("no run");
        };
        assert_eq!(q.labels()[RUN_LABEL], "1");
        let pod = q.spec.worker.template.spec.as_ref().unwrap();
        let worker = &pod.containers[0];
        let env = worker.env.as_ref().unwrap();
        assert_eq!(env[0].name, OUTPUT_FILE_ENV);
        assert_eq!(env[0].value.as_deref(), Some(DEFAULT_OUTPUT_FILE));
        let sidecar = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, OUTPUT);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let args = sidecar.args.as_ref().unwrap().join(" ");
        assert!(args.starts_with("output "), "{args}");
        for flag in [
            "--bucket votes_tally_outputs",
            "--run 1",
            "--key $(RIGGING_OUTPUT_KEY)",
            "--nats nats://tally-broker:4222",
            "--max-size 524288",
            "--upload-timeout 1m 15s",
        ] {
            assert!(args.contains(flag), "{flag} missing from {args}");
        }
        let key = sidecar
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == OUTPUT_KEY_ENV);
        let path = key
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(
            path,
            Some("metadata.labels['batch.kubernetes.io/job-name']")
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(90));
        assert_eq!(
            sidecar.volume_mounts.as_ref().unwrap()[0].read_only,
            Some(true),
            "the sidecar only reads the output"
        );
    }

    #[test]
    fn a_runs_work_queue_is_one_the_work_queue_kind_runs_with_its_own_sidecars_beside_the_output() {
        let mut mr = map_reduce("");
        mr.spec.map.sidecars = Some(
            serde_norway::from_str("logs: {format: json, file: /var/log/w/log.json}").unwrap(),
        );
        mr.spec.map.speculative =
            Some(serde_norway::from_str("{after: 2x, idempotent: true}").unwrap());
        let mut queue = run_queue(&mr, &RenderConfig::default(), 1);
        assert_eq!(
            queue.spec.speculative, mr.spec.map.speculative,
            "its stragglers get backups"
        );
        queue.metadata.uid = Some("q-1".into());
        let children = crate::work_queue::desired::desired(
            &queue,
            &RenderConfig::default(),
            &Observed::nothing(),
        )
        .unwrap_or_else(|e| panic!("the WorkQueue kind refuses the run: {e}"))
        .into_vec();
        let Some(Child::Job(job)) = children.iter().find(|c| c.kind() == "Job") else {
            panic!("no Job: {children:?}");
        };
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let names: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            names.contains(&OUTPUT) && names.contains(&"rigging-logs"),
            "{names:?}"
        );
        let worker = &pod.containers[0];
        assert!(
            worker
                .env
                .iter()
                .flatten()
                .any(|e| e.name == OUTPUT_FILE_ENV),
            "the worker keeps WORK_OUTPUT_FILE beside WORK_ITEM"
        );
    }

    /// Run `number` as the cache holds it: created for `mr`, with `succeeded` items done.
    fn cached_run(mr: &MapReduce, number: i64, succeeded: i32) -> Child {
        let mut queue = run_queue(mr, &RenderConfig::default(), number);
        queue.metadata.resource_version = Some(format!("{number}"));
        queue.status = Some(WorkQueueStatus {
            succeeded,
            ..WorkQueueStatus::default()
        });
        Child::WorkQueue(queue)
    }

    /// The desired runs and reduce Jobs of `mr` when the caches hold `cached`.
    fn runs_with(mr: &MapReduce, cached: Vec<Child>) -> Vec<String> {
        let stores = crate::controller::ChildStores::prefilled(cached);
        let observed = Observed::cached(&stores, "votes", "u-1");
        desired(mr, &RenderConfig::default(), &observed)
            .unwrap()
            .iter()
            .filter(|c| matches!(c.kind(), "WorkQueue" | "Job"))
            .map(|c| format!("{} {}", c.kind(), c.meta().name.as_deref().unwrap()))
            .collect()
    }

    #[test]
    fn the_newest_runs_are_kept_each_reduced_once_its_barrier_passed() {
        let mr = with_status(map_reduce("  runsKept: 2"), 3, Some("x"), Some("x"));
        let cached = vec![
            cached_run(&mr, 1, 4),
            cached_run(&mr, 2, 4),
            cached_run(&mr, 3, 1),
        ];
        assert_eq!(
            runs_with(&mr, cached.clone()),
            [
                "WorkQueue tally-3",
                "WorkQueue tally-2",
                "Job tally-2-reduce"
            ],
            "run 1 is no longer kept; run 2's barrier passed, run 3 maps"
        );
        // A reduce Job that exists is kept as the cache holds it, never made again.
        let mut with_job = cached;
        let mut job = reduce_job(
            &mr,
            &RenderConfig::default(),
            &run_of(&mr, 2, &run_queue(&mr, &RenderConfig::default(), 2), None),
        );
        job.metadata.resource_version = Some("7".into());
        with_job.push(Child::Job(job));
        let stores = crate::controller::ChildStores::prefilled(with_job);
        let observed = Observed::cached(&stores, "votes", "u-1");
        let children = desired(&mr, &RenderConfig::default(), &observed).unwrap();
        let kept = children
            .iter()
            .find(|c| c.meta().name.as_deref() == Some("tally-2-reduce"));
        assert_eq!(
            kept.and_then(|c| c.meta().resource_version.as_deref()),
            Some("7")
        );
    }

    #[test]
    fn replace_drops_the_run_going_and_forbid_keeps_it() {
        let forbid = with_status(map_reduce(""), 1, Some("again"), None);
        assert_eq!(
            runs_with(&forbid, vec![cached_run(&forbid, 1, 1)]),
            ["WorkQueue tally-1"]
        );
        let replace = with_status(
            map_reduce("  concurrencyPolicy: Replace"),
            1,
            Some("again"),
            None,
        );
        assert_eq!(
            runs_with(&replace, vec![cached_run(&replace, 1, 1)]),
            ["WorkQueue tally-2"],
            "run 1 is left out, so it is deleted"
        );
    }

    #[test]
    fn a_run_counts_the_items_it_started_with_not_those_of_a_spec_edited_since() {
        let mr = map_reduce("");
        let Child::WorkQueue(queue) = cached_run(&mr, 1, 4) else {
            unreachable!()
        };
        let mut edited = mr.clone();
        edited.spec.map.items = Some((0..6).map(|i| format!("shard-{i}")).collect());
        let run = run_of(&edited, 1, &queue, None);
        assert_eq!((run.items, run.need, run.joined), (4, 4, true));
        let job = reduce_job(&edited, &RenderConfig::default(), &run);
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(args.contains("--min-outputs 4"), "{args}");
    }

    #[test]
    fn the_longest_name_leaves_room_for_an_eight_digit_run_in_its_work_queues_name() {
        let longest = "a".repeat(rigging_crds::map_reduce::MAX_NAME_LEN);
        // A WorkQueue's name is at most 30 characters (its CRD's rule); a Job's, 63.
        assert_eq!(run_name(&longest, 99_999_999).len(), 30);
        assert!(reduce_job_name(&longest, 99_999_999).len() <= 63);
        assert!(reducer_access_name(&longest).len() <= 63);
    }

    #[test]
    fn the_barrier_waits_for_every_item_and_fails_once_it_cannot_pass() {
        let all = map_reduce("");
        let run = |mr: &MapReduce, s, f| run_of(mr, 1, &queue((s, f)), None);
        assert_eq!(run(&all, 3, 0).phase, RunPhase::Mapping);
        assert!(run(&all, 4, 0).joined);
        let failed = run(&all, 3, 1);
        assert_eq!(failed.phase, RunPhase::Failed);
        assert_eq!(
            failed.message.as_deref(),
            Some("1 of 4 items failed: the barrier needs 4 to succeed, so at most 0 may fail")
        );

        let most = map_reduce("  join: {minSucceeded: 75%}");
        assert_eq!(min_succeeded(&most, 4), 3);
        assert_eq!(min_succeeded(&most, 5), 4, "rounded up");
        assert_eq!(
            run(&most, 2, 1).phase,
            RunPhase::Mapping,
            "one item still runs"
        );
        let passed = run(&most, 3, 1);
        assert!(passed.joined && passed.phase == RunPhase::Reducing);
        assert_eq!(run(&most, 2, 2).phase, RunPhase::Failed);
        let two = map_reduce("  join: {minSucceeded: 2}");
        assert_eq!(min_succeeded(&two, 4), 2);
        let quoted = map_reduce("  join: {minSucceeded: '2'}");
        assert_eq!(min_succeeded(&quoted, 4), 2, "a number, not 2%");
    }

    #[test]
    fn a_run_succeeds_with_its_reduce_job_and_fails_with_it() {
        let mr = map_reduce("");
        let q = queue((4, 0));
        assert_eq!(
            run_of(&mr, 1, &q, Some(&job("Complete"))).phase,
            RunPhase::Succeeded
        );
        let failed = run_of(&mr, 1, &q, Some(&job("Failed")));
        assert_eq!(failed.phase, RunPhase::Failed);
        assert!(
            failed
                .message
                .unwrap()
                .starts_with("the reduce failed every try (BackoffLimitExceeded)")
        );
    }

    fn with_status(
        mut mr: MapReduce,
        last_run: i64,
        run_now: Option<&str>,
        seen: Option<&str>,
    ) -> MapReduce {
        mr.status = Some(MapReduceStatus {
            last_run,
            last_run_now: seen.map(Into::into),
            ..MapReduceStatus::default()
        });
        if let Some(value) = run_now {
            mr.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(RUN_NOW_ANNOTATION.into(), value.into());
        }
        mr
    }

    fn going(number: i64) -> Run {
        Run {
            number,
            items: 4,
            need: 4,
            succeeded: 0,
            failed: 0,
            phase: RunPhase::Mapping,
            joined: false,
            message: None,
            scheduled_for: None,
            run_now: None,
        }
    }

    #[test]
    fn each_new_run_now_value_starts_one_run_and_forbid_skips_it_while_one_goes() {
        let done = Run {
            phase: RunPhase::Succeeded,
            ..going(1)
        };
        let mr = with_status(map_reduce(""), 1, Some("a"), None);
        assert_eq!(plan(&mr, Some(&done), None).start, Some(2));
        assert_eq!(plan(&mr, Some(&done), None).run_now.as_deref(), Some("a"));
        let used = with_status(map_reduce(""), 2, Some("a"), Some("a"));
        assert_eq!(
            plan(&used, Some(&done), None).start,
            None,
            "a value starts one run"
        );
        let skipped = plan(&mr, Some(&going(1)), None);
        assert_eq!(
            (skipped.start, skipped.run_now.as_deref()),
            (None, Some("a")),
            "Forbid: used up, nothing started"
        );
        let replace = with_status(
            map_reduce("  concurrencyPolicy: Replace"),
            1,
            Some("a"),
            None,
        );
        let p = plan(&replace, Some(&going(1)), None);
        assert_eq!((p.start, p.replace), (Some(2), Some(1)));
        let fresh = map_reduce("");
        assert_eq!(
            plan(&fresh, None, None).start,
            Some(1),
            "the first run at once"
        );
    }

    #[test]
    fn the_reduce_job_runs_the_reducer_on_the_run_with_the_right_to_write_the_result() {
        let mr = map_reduce("  reduce: {reducer: histogram, path: votes, buckets: [10, 100]}");
        let mut queue = run_queue(&mr, &RenderConfig::default(), 3);
        queue.status = Some(WorkQueueStatus {
            succeeded: 4,
            ..WorkQueueStatus::default()
        });
        let run = run_of(&mr, 3, &queue, None);
        let job = reduce_job(&mr, &RenderConfig::default(), &run);
        assert_eq!(job.metadata.name.as_deref(), Some("tally-3-reduce"));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(2));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("tally-reduce"));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let args = pod.containers[0].args.as_ref().unwrap().join(" ");
        for flag in [
            "reduce ",
            "--reducer histogram",
            "--path votes",
            "--le 10",
            "--le 100",
            "--run 3",
            "--config-map tally-result",
            "--namespace votes",
            "--results votes_tally_results",
            "--min-outputs 4",
        ] {
            assert!(args.contains(flag), "{flag} missing from {args}");
        }
    }

    #[test]
    fn a_reducer_container_runs_between_the_step_that_writes_the_outputs_and_the_one_that_stores_its_result()
     {
        let mr = map_reduce(
            "  reduce: {reducer: container, container: {name: tally, image: tally:1, env: [{name: MODE, value: fast}]}}",
        );
        let mut queue = run_queue(&mr, &RenderConfig::default(), 2);
        queue.status = Some(WorkQueueStatus {
            succeeded: 4,
            ..WorkQueueStatus::default()
        });
        let job = reduce_job(&mr, &RenderConfig::default(), &run_of(&mr, 2, &queue, None));
        let pod = job.spec.unwrap().template.spec.unwrap();
        let inits = pod.init_containers.as_ref().unwrap();
        let names: Vec<&str> = inits
            .iter()
            .chain(&pod.containers)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, [OUTPUTS_STEP, "tally", REDUCE]);
        let args = |c: &Container| c.args.as_ref().unwrap().join(" ");
        let outputs = "/var/run/rigging/reduce/outputs.jsonl";
        let write = args(&inits[0]);
        assert!(
            write.contains(&format!("--outputs-file {outputs}")),
            "{write}"
        );
        assert!(write.contains("--min-outputs 4"), "{write}");
        assert!(!write.contains("--result-from"), "{write}");
        assert_eq!(
            inits[0].ports, None,
            "the last step's admin port is its own"
        );
        let store = args(&pod.containers[0]);
        for flag in [
            "--reducer container",
            "--run 2",
            "--result-from /var/run/rigging/reduce/result",
            "--config-map tally-result",
        ] {
            assert!(store.contains(flag), "{flag} missing from {store}");
        }
        let env: Vec<(&str, &str)> = inits[1]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            env,
            [
                ("MODE", "fast"),
                ("REDUCE_OUTPUTS_FILE", outputs),
                ("REDUCE_RESULT_FILE", "/var/run/rigging/reduce/result"),
            ]
        );
        // One volume, mounted by every step.
        assert_eq!(pod.volumes.as_ref().unwrap().len(), 1);
        for c in inits.iter().chain(&pod.containers) {
            let mounts = c.volume_mounts.as_ref().unwrap();
            assert_eq!(mounts[0].mount_path, REDUCE_DIR, "{}", c.name);
        }

        let mut probed = mr.clone();
        let own = probed.spec.reduce.container.as_mut().unwrap();
        own.readiness_probe = Some(Default::default());
        own.restart_policy = Some("Always".into());
        let errors = desired(&probed, &RenderConfig::default(), &Observed::nothing()).unwrap_err();
        let text = errors.to_string();
        for field in ["readinessProbe", "restartPolicy"] {
            assert!(
                text.contains(&format!(
                    "spec.reduce.container.{field}: your reducer runs to its end"
                )),
                "{text}"
            );
        }

        let mut clash = mr.clone();
        clash.spec.reduce.container.as_mut().unwrap().name = REDUCE.into();
        let errors = desired(&clash, &RenderConfig::default(), &Observed::nothing()).unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("spec.reduce.container.name: rigging-reduce is the name of a step"),
            "{errors}"
        );
    }

    #[test]
    fn what_the_schema_cannot_check_is_refused_naming_the_field() {
        let mut mr = map_reduce("  reduce: {reducer: histogram, path: v, buckets: [10, 5]}");
        mr.spec.map.items = None;
        mr.spec.map.source =
            Some(serde_norway::from_str("template: {name: s, image: s:1}").unwrap());
        let errors = desired(&mr, &RenderConfig::default(), &Observed::nothing()).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("spec.map.source"), "{text}");
        assert!(
            text.contains("spec.reduce.buckets: 5 after 10: give the bounds strictly ascending"),
            "{text}"
        );
        let old = RenderConfig {
            native_sidecars: false,
            ..RenderConfig::default()
        };
        let errors = desired(&map_reduce(""), &old, &Observed::nothing()).unwrap_err();
        assert!(errors.to_string().contains("native sidecar"));
    }
}
