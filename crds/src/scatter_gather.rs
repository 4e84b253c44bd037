//! `ScatterGather`: the scatter/gather pattern (book ch. 7). Leaves each hold a shard of
//! the data, replicated for reliability; a root of `rigging-sidecar gather` behind the
//! Service clients use sends each request to every shard, merges the answers, keeps a
//! deadline and a least coverage, reports partial coverage openly, and hedges stragglers
//! within a budget ("The Tail at Scale", Dean and Barroso, 2013).

use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{
    container_schema, duration_message, duration_rule, pod_template_schema, volume_claims_schema,
};
use crate::sharded_service::{MAX_SHARDS, name_message, name_rule};
use crate::sidecar::gather::{Concat, First, Sum, TopK};
use crate::sidecar::spec::{SidecarResources, Sidecars};

/// Desired state of a ScatterGather.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rigging.dev",
    version = "v1alpha1",
    kind = "ScatterGather",
    namespaced,
    status = "ScatterGatherStatus",
    shortname = "sg",
    category = "rigging",
    derive = "PartialEq",
    doc = "Scatter/gather: leaves holding shards, and a root that fans each request out to them, merges the answers, keeps a deadline and a least coverage, and hedges stragglers.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(name = "Ready Shards", type_ = "integer", json_path = ".status.readyShards"),
    printcolumn(name = "Deadline", type_ = "string", json_path = ".spec.deadline"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(name_rule()).message(Message::Message(name_message("ScatterGather")))
)]
#[x_kube(
    validation = Rule::new("has(self.merge) != has(self.merger)")
        .message("set exactly one of merge (a built-in merge) and merger (a container that merges)"),
    validation = Rule::new("!has(self.minShards) || self.minShards <= self.shards")
        .message("minShards cannot be more than shards")
        .field_path(".minShards"),
    validation = Rule::new("!has(self.hedge) || self.replicasPerShard >= 2")
        .message("hedge sends a backup request to another replica of the shard: set replicasPerShard to 2 or more")
        .field_path(".hedge"),
    validation = Rule::new(duration_rule("deadline")).message(Message::Message(duration_message("deadline"))).field_path(".deadline"),
    validation = Rule::new(duration_rule("leafTimeout")).message(Message::Message(duration_message("leafTimeout"))).field_path(".leafTimeout"),
    validation = Rule::new("(has(self.sidecars) && has(self.sidecars.health)) || (has(self.template.spec) && size(self.template.spec.containers) > 0 && has(self.template.spec.containers[0].readinessProbe))")
        .message(Message::Expression("has(self.template.spec) && size(self.template.spec.containers) > 0 ? 'container \"' + self.template.spec.containers[0].name + '\" (the leaf container, template.spec.containers[0]) has no readinessProbe: a leaf is only asked once it is ready, so the leaf container must declare one, or sidecars.health must check it' : 'template.spec.containers must hold the leaf container'".into()))
        .field_path(".template")
)]
#[serde(rename_all = "camelCase")]
pub struct ScatterGatherSpec {
    /// Number of shards. Each is a StatefulSet `<name>-<shard>` of `replicasPerShard`
    /// leaves, and every leaf learns its shard from `RIGGING_SHARD` (0-based) and the count
    /// from `RIGGING_SHARDS`.
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    pub shards: i32,

    /// Leaves per shard: each holds the same shard; the root asks one, and a backup
    /// request (`hedge`) or a retry goes to another.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas_per_shard: i32,

    /// The port the leaf container listens on (HTTP).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The leaves' pod template. Its first container is the leaf and must have a
    /// readiness probe.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,

    /// Storage for each leaf, kept across restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "volume_claims_schema")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,

    /// A built-in merge of the leaves' JSON answers: exactly one of `concat`, `topK`,
    /// `sum` and `first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeSpec>,

    /// Or a container in the root's pods that merges: the root posts every answer to it
    /// and returns its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merger: Option<MergerSpec>,

    /// Longest a request may take; at the deadline the root answers with the shards that
    /// have answered and cancels the rest. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,

    /// Fewest shards whose answers still make an answer (default: all). Below it the
    /// client gets 502 naming the shards that did not answer; at or above it a partial
    /// answer says its coverage (`Rigging-Coverage: answered/total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    pub min_shards: Option<i32>,

    /// Longest one request to one leaf may take (default: the deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_timeout: Option<String>,

    /// Backup requests to another replica of a slow shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeSpec>,

    /// The root: a Deployment of `rigging-sidecar gather` behind the Service `<name>`.
    #[serde(default)]
    pub root: Root,

    /// Rigging's adapters to place beside the leaf in every leaf pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<Sidecars>,
}

fn one() -> i32 {
    1
}

/// `spec.merge`: exactly one of the fields.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("[has(self.concat), has(self.topK), has(self.sum), has(self.first)].filter(x, x).size() == 1")
        .message("set exactly one of concat, topK, sum and first")
)]
#[serde(rename_all = "camelCase")]
pub struct MergeSpec {
    /// The arrays at `path` of every answer, in shard order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat: Option<Concat>,
    /// The `k` items of the arrays at `path` ranked by the number at `by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<TopK>,
    /// The objects at `path` added: numbers per key (a vote tally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<Sum>,
    /// The first 2xx answer; the other requests are cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<First>,
}

/// `spec.merger`: a container in the root's pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.path.startsWith('/')")
        .message("path must start with /")
        .field_path(".path")
)]
#[serde(rename_all = "camelCase")]
pub struct MergerSpec {
    /// The merger. It gets `POST {"answers": [{"shard", "status", "body"}…], "coverage":
    /// {…}}` on `127.0.0.1:port` + `path` and answers what the client gets.
    #[schemars(schema_with = "container_schema")]
    pub container: Container,
    /// The port it listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The path it takes the answers on.
    #[serde(default = "default_merger_path")]
    pub path: String,
}

fn default_merger_path() -> String {
    "/merge".to_owned()
}

/// `spec.hedge`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.after.matches('^p[0-9]{1,2}(\\\\.[0-9]+)?$') || self.after.matches('^([0-9]+(ms|s|m|h))+$')")
        .message("after must be a quantile of the shard's recent latencies (p95) or a duration (10ms)")
        .field_path(".after"),
    validation = Rule::new("!has(self.budget) || self.budget.matches('^[0-9]{1,3}(\\\\.[0-9]+)?%$')")
        .message("budget must be a share of the leaf requests, such as 5%")
        .field_path(".budget")
)]
#[serde(rename_all = "camelCase")]
pub struct HedgeSpec {
    /// When a shard is slow enough to hedge: `p95` of its recent latencies, or `10ms`.
    pub after: String,
    /// Backup requests allowed, as a share of the leaf requests (default 5%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
}

/// `spec.root`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// Root pods.
    #[serde(default = "default_root_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// The port of the Service clients use, and of the roots. Defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// CPU and memory of each root; each value left out keeps its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

impl Default for Root {
    fn default() -> Self {
        Self {
            replicas: default_root_replicas(),
            port: None,
            resources: None,
        }
    }
}

fn default_root_replicas() -> i32 {
    2
}

impl ScatterGatherSpec {
    /// The port clients reach the roots on: `root.port`, else `port`.
    pub fn root_port(&self) -> i32 {
        self.root.port.unwrap_or(self.port)
    }
}

/// Observed state of a ScatterGather.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScatterGatherStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Shards with at least one ready leaf: the ones a request can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_shards: Option<i32>,

    /// Shards with no ready leaf, by name (`<name>-<shard>`): requests answer without
    /// them, partially, while `minShards` allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unready_shards: Vec<String>,

    /// Ready root pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_roots: Option<i32>,

    /// `Ready`, `Progressing` and `Degraded`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
