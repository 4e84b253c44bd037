//! `WorkQueue`: a work queue (book ch. 10). Each item of a static list, or of what a source
//! container lists, is processed by a worker pod, at most `parallelism` at once, each
//! retried up to `retries` times.

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{container_schema, pod_template_schema};
use crate::sidecar::spec::Sidecars;

/// Why a WorkQueue's name is a DNS-1035 label of at most 30 characters: each item's Job is
/// named `<name>-<item>-<hash>`, and a Job's name is a pod label value of at most 63
/// characters.
const NAME_MESSAGE: &str = "metadata.name must be a DNS-1035 label of at most 30 characters (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit): each item's Job is named after it, and a Job's name must fit in a pod label of at most 63 characters";

/// Desired state of a WorkQueue.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rigging.dev",
    version = "v1alpha1",
    kind = "WorkQueue",
    namespaced,
    status = "WorkQueueStatus",
    shortname = "wq",
    category = "rigging",
    derive = "PartialEq",
    doc = "A work queue: every item is processed by a worker pod in a Job of its own, at most `parallelism` at once, with retries.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending"),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.running"),
    printcolumn(name = "Succeeded", type_ = "integer", json_path = ".status.succeeded"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 30 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message(NAME_MESSAGE)
)]
#[x_kube(
    validation = Rule::new("has(self.items) != has(self.source)")
        .message("set exactly one of items (a static list) or source (a container that lists them)"),
    validation = Rule::new("!has(self.sidecars) || !has(self.sidecars.elect) || !has(self.sidecars.elect.activePassive) || !self.sidecars.elect.activePassive")
        .message("sidecars.elect.activePassive makes only the leader's pod ready, which routes traffic to it; no traffic reaches a worker, so a WorkQueue elects without it")
        .field_path(".sidecars.elect.activePassive")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkQueueSpec {
    /// The items, each processed once, in this order. Each must be unique; together they
    /// must fit in the WorkQueue as etcd stores it (1.5 MiB, each item counted twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 10000),
        inner(length(min = 1, max = 4096)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub items: Option<Vec<String>>,

    /// A container serving the book's source interface, polled for new items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,

    /// The worker that processes one item.
    pub worker: Worker,

    /// Most items processed at once, counting pending and running pods.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallelism: i32,

    /// Times a failed item is tried again before it counts as failed. Pods evicted by a
    /// disruption do not use up a retry.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 100))]
    pub retries: i32,

    /// Seconds after an item's Job finished when it is deleted, once its result is in the
    /// status. Kept while the WorkQueue exists when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Seconds an item may run, over all its tries, before it counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// Rigging's adapters to place beside the worker (native sidecars: they never keep a
    /// Job from completing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<Sidecars>,

    /// Speculative backups of stragglers (MapReduce's backup tasks): once every item has
    /// started and half of them have succeeded, an item that has run `after` times the
    /// median time of those gets a second Job; the first to succeed wins and the other is
    /// deleted. Only for idempotent work: an item may run twice at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<Speculative>,
}

/// When a straggling item gets a backup Job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.idempotent")
        .message("speculative.idempotent must be true: a backup runs an item a second time while its first Job still runs, which only idempotent work allows")
        .field_path(".idempotent")
)]
#[serde(rename_all = "camelCase")]
pub struct Speculative {
    /// How long an item runs before it gets a backup, as a multiple of the median time
    /// of the items that succeeded: `1.5x` (1x to 99.99x).
    #[schemars(regex(pattern = r"^[1-9][0-9]?(\.[0-9]{1,2})?x$"))]
    pub after: String,
    /// Says that the worker is idempotent: running an item twice, even at once, does
    /// what running it once does. Must be true.
    pub idempotent: bool,
}

impl Speculative {
    /// The multiple of the median that `after` names (`1.5x`: 1.5); `None` when it is not
    /// one, which the CRD's pattern refuses.
    pub fn factor(&self) -> Option<f64> {
        let factor: f64 = self.after.strip_suffix('x')?.parse().ok()?;
        (factor >= 1.0).then_some(factor)
    }
}

fn one() -> i32 {
    1
}

fn default_retries() -> i32 {
    3
}

/// The source of items: a container that serves `GET /api/v1/items` (a JSON list of item
/// names) and `GET /api/v1/items/{name}` (the item) on `port`. It runs in a Deployment of
/// one pod behind a Service, both owned by the WorkQueue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The source container. A container, not a pod template: the source needs no more,
    /// and a second pod template would push the CRD past what `kubectl apply` stores.
    #[schemars(schema_with = "container_schema")]
    pub template: Container,
    /// The port the source serves on.
    #[serde(default = "default_source_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// How often the source is asked for new items (humantime: `30s`, `5m`; at least 1s).
    #[serde(default = "default_poll_interval")]
    #[schemars(length(min = 1, max = 64))]
    pub poll_interval: String,
}

fn default_source_port() -> i32 {
    8080
}

fn default_poll_interval() -> String {
    "30s".into()
}

/// The worker of one item. The item reaches it as the environment variable `WORK_ITEM`
/// and as the file named by `WORK_ITEM_FILE`; exit 0 means done.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    /// The worker's pod template. Its first container is the worker; `restartPolicy` must
    /// be `Never` or unset (a failed try is retried by a new pod, which the Job counts).
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
}

/// Most failures [`WorkQueueStatus::last_failures`] lists.
pub const LAST_FAILURES: usize = 10;
/// Most items [`WorkQueueStatus::stuck_items`] lists.
pub const STUCK_LISTED: usize = 10;
/// Most Jobs [`WorkQueueStatus::expired_jobs`] lists at once: the rest wait for a later
/// reconcile, so that the status stays small however many Jobs finish together.
pub const EXPIRED_LISTED: usize = 200;

/// Observed state of a WorkQueue.
///
/// Bounded whatever the number of items: counts, the last few failures, and where the
/// result of every finished item is kept ([`WorkQueueStatus::results`]). A finished item's
/// result stays on its Job until the operator copies it into a results ConfigMap; only then
/// may the Job be deleted (`ttlSecondsAfterFinished`), and an item recorded there never
/// gets a Job again, so a restart neither forgets an item nor runs it twice.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkQueueStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Items without a Job yet.
    #[serde(default)]
    pub pending: i32,
    /// Items whose Job runs (its pod pending or running).
    #[serde(default)]
    pub running: i32,
    /// Items done.
    #[serde(default)]
    pub succeeded: i32,
    /// Items that failed every try.
    #[serde(default)]
    pub failed: i32,
    /// The most recent failures, newest first (at most 10). Every failure is in
    /// [`results`](WorkQueueStatus::results).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub last_failures: Vec<FailedItem>,
    /// Where the result of every finished item is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Results>,
    /// Items whose pod cannot start now (its image cannot be pulled, or it cannot be
    /// scheduled), and why, sorted by Job name, at most 10: the queue is `Degraded` while
    /// any is, and its message counts them all. An item leaves the list once its pod
    /// starts, or its Job finishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub stuck_items: Vec<StuckItem>,
    /// Finished Jobs whose `ttlSecondsAfterFinished` has passed (at most 200 at once): the
    /// next reconcile deletes those whose result is in a results ConfigMap, and first
    /// writes the results of the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub expired_jobs: Vec<String>,
    /// When the next finished Job's `ttlSecondsAfterFinished` ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cleanup_time: Option<Time>,
    /// With `speculative`: the backups started and won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Backups>,
    /// `Ready`, `Progressing` and `Degraded`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The speculative backups of a WorkQueue. Counted from the results ConfigMaps (each result
/// says whether its item had a backup, and whether it won) and the Jobs that exist, so the
/// counts hold across operator restarts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backups {
    /// Backup Jobs started.
    #[serde(default)]
    pub started: i32,
    /// Items whose backup succeeded first.
    #[serde(default)]
    pub won: i32,
    /// Seconds after which a running item gets a backup: `after` times the median time of
    /// the items that succeeded, of those whose Jobs still exist. Unset until half the
    /// items succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub straggler_seconds: Option<i64>,
    /// When the next running item becomes a straggler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_time: Option<Time>,
}

/// Where a WorkQueue keeps the result of every finished item: ConfigMaps of its own (each
/// under 256 KiB), one key per item (its Job's name), the value `Succeeded`, or
/// `Failed: <reason>: <message>` and the item.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    /// The results ConfigMaps, `<queue>-results-<n>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_maps: Vec<String>,
    /// Their label selector, for `kubectl get configmaps -l`.
    pub selector: String,
    /// Results in them.
    #[serde(default)]
    pub recorded: i32,
    /// Finished items whose result is still only on their Job (written to a ConfigMap in
    /// batches; the Job is not deleted before).
    #[serde(default)]
    pub unrecorded: i32,
}

/// An item whose pod cannot start, as its pod says.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StuckItem {
    /// Its Job's name.
    pub job: String,
    /// The item (its first 256 bytes when longer).
    pub item: String,
    /// The pod that cannot start.
    pub pod: String,
    /// Why: `Unschedulable` (the scheduler's reason), or the waiting reason of one of its
    /// containers (`ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`,
    /// `CreateContainerConfigError`, …).
    pub reason: String,
    /// The scheduler's or the kubelet's message, naming the container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// An item that failed every try.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedItem {
    /// Its Job's name.
    pub job: String,
    /// The item (its first 256 bytes when longer).
    pub item: String,
    /// The Job's reason: `BackoffLimitExceeded` (every try failed), `DeadlineExceeded`
    /// (`activeDeadlineSeconds` passed), …
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The Job's message (its first 512 bytes when longer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When its Job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}
