//! `MapReduce`: coordinated batch processing (book ch. 12). Each run maps every item through
//! a [`WorkQueue`](crate::WorkQueue) of its own, waits at a join barrier until enough items
//! are done, then reduces the items' outputs into one result, exactly once per run.
//!
//! A kind beside WorkQueue rather than more fields on it: a WorkQueue is one pass over its
//! items, and its guarantees (an item's Job named after the item, never run twice) hold
//! because it is. A run is a WorkQueue named after the run, so running again is a new
//! WorkQueue, and everything a WorkQueue does (parallelism, retries, stuck items, results)
//! holds within each run unchanged.

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pipeline::Broker;
use crate::schema::container_schema;
/// The reducers: built into `rigging-sidecar reduce`, no image of yours, or `container`.
pub use crate::sidecar::batch::Reducer;
use crate::sidecar::batch::{DEFAULT_MAX_OUTPUT_SIZE, MAX_OUTPUT_SIZE};
use crate::work_queue::WorkQueueSpec;

/// Longest MapReduce name: a run is the WorkQueue `<name>-<run>`, whose name may have 30
/// characters, with room for a run number of up to 8 digits.
pub const MAX_NAME_LEN: usize = 21;

/// The annotation of a scheduled run's WorkQueue: the time of the schedule it is for.
pub const SCHEDULED_FOR_ANNOTATION: &str = "rigging.dev/scheduled-for";

/// The annotation that starts a run at once: each new value starts one run.
pub const RUN_NOW_ANNOTATION: &str = "rigging.dev/run-now";

/// Desired state of a MapReduce.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rigging.dev",
    version = "v1alpha1",
    kind = "MapReduce",
    namespaced,
    status = "MapReduceStatus",
    shortname = "mr",
    category = "rigging",
    derive = "PartialEq",
    doc = "Coordinated batch: each run maps every item through a WorkQueue whose workers store an output, waits at a join barrier, then reduces the outputs into one result.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Last Run", type_ = "string", json_path = ".status.runs[0].name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.runs[0].phase"),
    printcolumn(name = "Succeeded", type_ = "integer", json_path = ".status.runs[0].succeeded"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.runs[0].failed"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 21 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label of at most 21 characters (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit): each run is a WorkQueue named <name>-<run>, at most 30 characters")
)]
#[x_kube(
    validation = Rule::new("!has(self.broker.stream) && !has(self.broker.dedupWindow)")
        .message("broker.stream and broker.dedupWindow are a Pipeline's: a MapReduce keeps its outputs in a key-value bucket named after it")
        .field_path(".broker"),
    validation = Rule::new("self.reduce.reducer == 'histogram' ? has(self.reduce.buckets) : !has(self.reduce.buckets)")
        .message("reduce.buckets are the histogram's bucket bounds: set them for reducer histogram, and only for it")
        .field_path(".reduce.buckets"),
    validation = Rule::new("!(self.reduce.reducer in ['count', 'histogram']) || (has(self.reduce.path) && self.reduce.path != '')")
        .message("reduce.path names the field a count or a histogram reads, e.g. series")
        .field_path(".reduce.path"),
    validation = Rule::new("!(self.reduce.reducer in ['concat', 'container']) || !has(self.reduce.path)")
        .message("reduce.path is a count's, a sum's or a histogram's: a concat and a reducer container take each output whole")
        .field_path(".reduce.path"),
    validation = Rule::new("self.reduce.reducer == 'container' ? has(self.reduce.container) : !has(self.reduce.container)")
        .message("reduce.container is your own reducer: set it for reducer container, and only for it")
        .field_path(".reduce.container")
)]
#[serde(rename_all = "camelCase")]
pub struct MapReduceSpec {
    /// The map: a WorkQueue's spec. Each run is the WorkQueue `<name>-<run>` of it, whose
    /// worker writes its output to the file named by `WORK_OUTPUT_FILE`.
    pub map: WorkQueueSpec,

    /// Where the outputs and results are kept: a NATS JetStream server the operator runs
    /// for this MapReduce (the default), or an existing one.
    #[serde(default)]
    pub broker: Broker,

    /// The outputs the workers store.
    #[serde(default)]
    pub output: Output,

    /// The join barrier: when a run's items are done enough to reduce.
    #[serde(default)]
    pub join: Join,

    /// How the outputs of a run become its result.
    pub reduce: Reduce,

    /// Starts a run at each time of a cron schedule, as a CronJob does. Without it, the
    /// first run starts when the MapReduce is made; with it, the first at the first time
    /// the schedule names. Either way, `rigging.dev/run-now` starts one at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,

    /// What a new run (scheduled, or run-now) does while a run is still going: `Forbid`
    /// (the default) skips it, with an Event; `Replace` stops the run going (its WorkQueue
    /// is deleted, its Jobs with it) and starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// How many runs are kept, their WorkQueues and reduce Jobs with them (the newest;
    /// outputs and results stay in the broker for its retention).
    #[serde(default = "default_runs_kept")]
    #[schemars(range(min = 1, max = 20))]
    pub runs_kept: i32,
}

fn default_runs_kept() -> i32 {
    3
}

/// A cron schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Five fields, as a CronJob's schedule: minute, hour, day of month, month, day of
    /// week (`0 * * * *`: every hour; `*/15 8-18 * * 1-5`: every 15 minutes in office
    /// hours).
    #[schemars(length(min = 9, max = 256))]
    pub cron: String,
    /// The IANA time zone the schedule is read in (`Europe/Paris`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
}

/// What a new run does while a run is still going.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// The new run is skipped.
    #[default]
    Forbid,
    /// The run going is stopped and the new one starts.
    Replace,
}

/// The outputs the workers store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// The largest output an item may store, in bytes (at most 1,000,000). An item whose
    /// output is larger fails, with a message naming it.
    #[serde(default = "default_max_size")]
    #[schemars(range(min = 1, max = MAX_OUTPUT_SIZE))]
    pub max_size: i32,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            max_size: default_max_size(),
        }
    }
}

fn default_max_size() -> i32 {
    DEFAULT_MAX_OUTPUT_SIZE as i32
}

/// The join barrier.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.minSucceeded) || string(self.minSucceeded).matches('^([0-9]+|(100|[1-9]?[0-9])%)$')")
        .message("join.minSucceeded is a number of items (0 or more) or a percentage of them, 0% to 100%")
        .field_path(".minSucceeded")
)]
#[serde(rename_all = "camelCase")]
pub struct Join {
    /// Items that must succeed before the run reduces: a number, or a percentage of the
    /// items (`90%`, rounded up). Unset: every item. The barrier waits until every item
    /// has finished (succeeded or failed every try); a run that can no longer reach this
    /// fails without reducing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_succeeded: Option<IntOrString>,
}

/// How the outputs of a run become its result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reduce {
    /// The reducer.
    pub reducer: Reducer,
    /// A dotted path into each output (`votes.total`): what a count or a histogram reads,
    /// and the object a sum adds (the whole output when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[^.]+(\.[^.]+)*$"))]
    pub path: Option<String>,
    /// The histogram's bucket upper bounds, ascending; a last bucket `+Inf` is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub buckets: Option<Vec<f64>>,
    /// `reducer: container`: your reducer, run once the barrier passes. It reads the run's
    /// outputs from the file `$REDUCE_OUTPUTS_FILE`, one JSON line per output
    /// (`{"key": K, "output": O}`), writes its result to `$REDUCE_RESULT_FILE`, and exits
    /// 0; Rigging stores that file as the run's result, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "container_schema")]
    pub container: Option<Container>,
    /// Times the reduce Job is tried again after a failure.
    #[serde(default = "default_reduce_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
}

fn default_reduce_retries() -> i32 {
    2
}

/// Where a run is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunPhase {
    /// Items are being processed.
    Mapping,
    /// The barrier passed; the reduce Job runs.
    Reducing,
    /// The result is stored.
    Succeeded,
    /// The barrier cannot pass (too many items failed), or the reduce failed every try.
    Failed,
}

/// One run, as its WorkQueue, reduce Job and result say.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The run's number (1, 2, …); its WorkQueue is `<name>-<number>`.
    pub number: i64,
    /// Its WorkQueue.
    pub name: String,
    /// Where it is.
    pub phase: RunPhase,
    /// Items in the run.
    pub items: i32,
    /// Items done.
    pub succeeded: i32,
    /// Items that failed every try.
    pub failed: i32,
    /// Items that must succeed for the barrier to pass.
    pub min_succeeded: i32,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// The time of the schedule it was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Time>,
    /// The `rigging.dev/run-now` value that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_now: Option<String>,
    /// Where the result is: the ConfigMap, and the object in the broker's results store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The reducer's summary: outputs read, reduced and left out (with the first reasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Observed state of a MapReduce.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MapReduceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The runs kept, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub runs: Vec<RunStatus>,
    /// The number of the newest run started (0: none yet).
    #[serde(default)]
    pub last_run: i64,
    /// The latest time of the schedule that was acted on (a run started, or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The next time of the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The value of the `rigging.dev/run-now` annotation last acted on (a run started, or
    /// skipped because one was running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_now: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
