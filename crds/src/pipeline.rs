//! `Pipeline`: event-driven batch processing (book ch. 11). Stages connected by topics on a
//! NATS JetStream broker: built-in stages (`copy`, `filter`, `split`, `shard`, `merge`)
//! run by `rigging-sidecar queue` alone, and handler stages, a user's container fed over
//! HTTP by a queue sidecar. Each stage is a Deployment of its own, scaled by `replicas` or
//! by its consumer's backlog.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{duration_message, duration_rule, pod_template_schema};
use crate::sidecar::spec::{SecretKey, SidecarResources};

/// Why a Pipeline's name is a DNS-1035 label of at most 30 characters: each stage's
/// Deployment is named `<pipeline>-<stage>`, the broker's StatefulSet `<pipeline>-broker`,
/// and both names are pod label values of at most 63 characters.
const NAME_MESSAGE: &str = "metadata.name must be a DNS-1035 label of at most 30 characters (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit): each stage's Deployment is named <pipeline>-<stage>";

/// Desired state of a Pipeline.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rigging.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    namespaced,
    status = "PipelineStatus",
    shortname = "pl",
    category = "rigging",
    derive = "PartialEq",
    doc = "An event-driven pipeline: stages connected by topics on a NATS JetStream broker, each stage a Deployment fed by Rigging's queue sidecar.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Conserved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Conserved\")].status"
    ),
    printcolumn(name = "Stages", type_ = "integer", json_path = ".status.readyStages"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 30 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message(NAME_MESSAGE)
)]
#[x_kube(
    validation = Rule::new("self.stages.all(s, self.stages.exists_one(t, t.name == s.name))")
        .message("stages: each stage's name must be unique in the pipeline")
        .field_path(".stages")
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// The JetStream broker the stages use: one the operator runs for this pipeline (the
    /// default), or an existing NATS server.
    #[serde(default)]
    pub broker: Broker,

    /// The stages, each consuming topics and publishing to topics.
    #[schemars(length(min = 1, max = 32))]
    pub stages: Vec<PipelineStage>,
}

/// The broker. Without `url` or `urlSecret` the operator runs a NATS JetStream server for
/// this pipeline: a StatefulSet of `replicas` pods with a volume each, behind a headless
/// Service named `<pipeline>-broker`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!(has(self.url) && has(self.urlSecret))")
        .message("give an existing NATS server as url, or as urlSecret when its URL holds credentials, not both"),
    validation = Rule::new("!has(self.url) || self.url.matches('^nats://[^@/,]+(,nats://[^@/,]+)*$')")
        .message("url must be nats://HOST:PORT (several comma-separated for a cluster); a URL with credentials goes in a Secret, named by urlSecret")
        .field_path(".url"),
    validation = Rule::new("!has(self.replicas) || self.replicas == 1 || self.replicas == 3")
        .message("replicas of the managed broker must be 1, or 3 for a cluster that survives the loss of one server")
        .field_path(".replicas"),
    validation = Rule::new("!(has(self.url) || has(self.urlSecret)) || !(has(self.replicas) || has(self.storage) || has(self.image))")
        .message("replicas, storage and image configure the broker the operator runs; with url or urlSecret the broker is yours")
    ,
    validation = Rule::new(duration_rule("retention")).message(Message::Message(duration_message("retention"))).field_path(".retention"),
    validation = Rule::new(duration_rule("dedupWindow")).message(Message::Message(duration_message("dedupWindow"))).field_path(".dedupWindow")
)]
#[serde(rename_all = "camelCase")]
pub struct Broker {
    /// An existing NATS server with JetStream, `nats://HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub url: Option<String>,
    /// A key of a Secret whose value is the existing server's URL with credentials,
    /// `nats://USER:PASSWORD@HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<SecretKey>,
    /// Servers of the managed broker: 1, or 3 (a JetStream cluster; the stream is then
    /// replicated three times and survives the loss of one server). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The volume of each managed server, from the cluster's default StorageClass
    /// (default `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub storage: Option<String>,
    /// The managed server's image (default `nats:2.10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// The JetStream stream that holds the pipeline's topics (default: the pipeline's
    /// name). Pipelines sharing an existing server need streams of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub stream: Option<String>,
    /// How long the stream keeps a message (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub retention: Option<String>,
    /// Within this window a second publish of the same message id is dropped, so a stage
    /// replayed after a crash adds no duplicates downstream (default `2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub dedup_window: Option<String>,
}

/// One stage: the topics it consumes (`from`), and exactly one of what it does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("(has(self.copy) ? 1 : 0) + (has(self.filter) ? 1 : 0) + (has(self.split) ? 1 : 0) + (has(self.shard) ? 1 : 0) + (has(self.merge) ? 1 : 0) + (has(self.handler) ? 1 : 0) == 1")
        .message("a stage does exactly one thing: set one of copy, filter, split, shard, merge or handler"),
    validation = Rule::new("!has(self.merge) || size(self.from) >= 2")
        .message("merge joins several topics into one: from must name at least two")
        .field_path(".from"),
    validation = Rule::new("self.from.all(t, t.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.dead-letter)?$'))")
        .message("from: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit; TOPIC.dead-letter is its dead-letter topic")
        .field_path(".from"),
    validation = Rule::new("!(has(self.autoscale) && has(self.replicas))")
        .message("set replicas or autoscale, not both: with autoscale the operator sets the replicas from the backlog")
        .field_path(".replicas"),
    validation = Rule::new(duration_rule("deliveryTimeout")).message(Message::Message(duration_message("deliveryTimeout"))).field_path(".deliveryTimeout")
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStage {
    /// The stage's name: a DNS-1035 label of at most 24 characters. It names the stage's
    /// Deployment (`<pipeline>-<name>`) and its JetStream consumer.
    #[schemars(
        length(min = 1, max = 24),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The topics the stage consumes.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 75)))]
    pub from: Vec<String>,

    /// Every message to every one of these topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<Copy>,
    /// The messages for which a CEL predicate holds, to a topic; the rest are counted as
    /// filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Each message to the topic of the first predicate that holds, else to `otherwise`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// Each message to one of several topics by the consistent hash of a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Every message of the `from` topics to one topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<Merge>,
    /// A user's container, a function, that receives each message over HTTP. (Not named
    /// `function`: that is a word CEL reserves, which the API server's rules could not
    /// name.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<Handler>,

    /// Pods of the stage (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Scale the stage on its consumer's backlog, read from JetStream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// Messages delivered to one pod and not yet answered, at most (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u32>,
    /// Failed deliveries of a message before it goes to its topic's dead-letter topic,
    /// `<topic>.dead-letter` (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deliveries: Option<u32>,
    /// How long a handler has to answer a delivery (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub delivery_timeout: Option<String>,
    /// CPU and memory of the stage's queue container; each value left out keeps the
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

/// `copy`: the topics every message goes to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.to.all(t, t.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("copy.to: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".to")
)]
pub struct Copy {
    /// The topics.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 63)))]
    pub to: Vec<String>,
}

/// `filter`: a CEL predicate over the message (`message` is its JSON body), and the topic
/// of the messages for which it holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.to.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("filter.to: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".to")
)]
pub struct Filter {
    /// The predicate, as CEL: `message.amount > 0`.
    #[serde(rename = "if")]
    #[schemars(length(min = 1, max = 4096))]
    pub condition: String,
    /// The topic.
    #[schemars(length(min = 1, max = 63))]
    pub to: String,
}

/// `split`: predicates tried in order, each with its topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.otherwise) || self.otherwise.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("split.otherwise: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".otherwise")
)]
pub struct Split {
    /// The routes, in order: a message goes to the topic of the first that holds.
    #[schemars(length(min = 1, max = 16))]
    pub when: Vec<Route>,
    /// The topic of messages no route takes; without it they are filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub otherwise: Option<String>,
}

/// One route of a split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.to.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("to: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".to")
)]
pub struct Route {
    /// The predicate, as CEL over `message`.
    #[serde(rename = "if")]
    #[schemars(length(min = 1, max = 4096))]
    pub condition: String,
    /// The topic.
    #[schemars(length(min = 1, max = 63))]
    pub to: String,
}

/// `shard`: a CEL expression giving each message's key, and the topics the keys are
/// spread over by consistent hashing (the shard ring of ShardedService).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.to.all(t, t.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("shard.to: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".to")
)]
pub struct Shard {
    /// The key, as CEL over `message`: `message.account`.
    #[schemars(length(min = 1, max = 4096))]
    pub key: String,
    /// The topics, at least two.
    #[schemars(length(min = 2, max = 64), inner(length(min = 1, max = 63)))]
    pub to: Vec<String>,
}

/// `merge`: the one topic the `from` topics flow into.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.to.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("merge.to: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".to")
)]
pub struct Merge {
    /// The topic.
    #[schemars(length(min = 1, max = 63))]
    pub to: String,
}

/// `handler`: the user's pod, whose first container receives each message as an HTTP
/// `POST` on `port` at `path`. A 2xx answer acknowledges the message; a non-empty answer
/// is published to `to` (or to the topic its `Rigging-Topic` header names). The app may
/// also publish itself: `POST http://127.0.0.1:9127/publish/{topic}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.to) || self.to.all(t, t.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("handler.to: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".to"),
    validation = Rule::new("self.path.startsWith('/')")
        .message("handler.path must start with '/'")
        .field_path(".path")
)]
#[serde(rename_all = "camelCase")]
pub struct Handler {
    /// The pod template; its first container is the handler.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
    /// The port the handler listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The path messages are posted to (default `/`).
    #[serde(default = "root")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// Topics the handler's non-empty answers are published to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    pub to: Vec<String>,
}

fn root() -> String {
    "/".into()
}

/// Scaling on backlog: the operator keeps `ceil(lag / targetLag)` pods, within `min` and
/// `max`, where lag is the messages of the stage's topics its consumer has not finished.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.min <= self.max")
        .message("autoscale.min must not exceed autoscale.max")
        .field_path(".min")
)]
#[serde(rename_all = "camelCase")]
pub struct Autoscale {
    /// Fewest pods (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub min: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max: i32,
    /// The backlog one pod is expected to carry (default 1000).
    #[serde(default = "default_target_lag")]
    #[schemars(range(min = 1))]
    pub target_lag: i64,
}

fn one() -> i32 {
    1
}

fn default_target_lag() -> i64 {
    1000
}

/// Observed state of a Pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The broker the stages use, as they reach it (without credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Stages whose every pod is ready.
    #[serde(default)]
    pub ready_stages: i32,
    /// Messages not yet finished, over every stage.
    #[serde(default)]
    pub lag: i64,
    /// Each stage's pods and accounting, in the order of the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub stages: Vec<StageStatus>,
    /// Each topic: who publishes it, who consumes it, and how many messages the stages
    /// published to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub topics: Vec<TopicStatus>,
    /// `Ready`, `Progressing`, `Degraded` and `Conserved`, each with the generation it
    /// describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One stage's pods and the accounting of its messages, summed over the pods that answered
/// (a pod's counts start when it starts, and leave with it).
///
/// Conservation: `in = out + filtered + deadLettered + retried + inFlight`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage's name.
    pub name: String,
    /// Pods the stage should have.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods whose counts are in this status.
    #[serde(default)]
    pub counted_pods: i32,
    /// Deliveries taken from the broker, redeliveries included.
    #[serde(default, rename = "in")]
    pub delivered: i64,
    /// Messages handled and acknowledged, their outputs published.
    #[serde(default)]
    pub out: i64,
    /// Messages a filter or split dropped on purpose.
    #[serde(default)]
    pub filtered: i64,
    /// Messages moved to their dead-letter topic.
    #[serde(default)]
    pub dead_lettered: i64,
    /// Deliveries that failed and come again.
    #[serde(default)]
    pub retried: i64,
    /// Messages delivered to a pod and not yet settled.
    #[serde(default)]
    pub in_flight: i64,
    /// Messages of the stage's topics its consumer has not finished (JetStream's count:
    /// pending plus unacknowledged).
    #[serde(default)]
    pub lag: i64,
    /// Deliveries the accounting cannot place: `in - (out + filtered + deadLettered +
    /// retried + inFlight)`. Anything but 0 in two looks in a row makes `Conserved` false.
    #[serde(default)]
    pub unaccounted: i64,
}

/// One topic of the pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// The topic.
    pub name: String,
    /// The stages that publish to it; none for a topic fed from outside the pipeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publishers: Vec<String>,
    /// The stages that consume it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Messages the pipeline's pods stored in it.
    #[serde(default)]
    pub published: i64,
}
