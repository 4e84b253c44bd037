//! `ShardedService`: a sharded service (book ch. 6). Keys are spread over `shards` shards
//! by consistent hashing (ketama, laid out as twemproxy lays it out); clients reach them
//! through a router Deployment of sharding ambassadors, or through an ambassador in their
//! own pods.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{pod_template_schema, volume_claims_schema};
use crate::sidecar::shard::Protocol;
use crate::sidecar::spec::Sidecars;

/// Why a ShardedService's name is a DNS-1035 label of at most 47 characters: its Services
/// take the name, and a shard's StatefulSet (`<name>-<shard>`) must leave room for the
/// revision hash Kubernetes appends to it in a pod label of at most 63 characters.
const NAME_MESSAGE: &str = "metadata.name must be a DNS-1035 label of at most 47 characters (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit): the ShardedService's Services take this name, and its StatefulSets' pods carry it with a shard number and a revision hash in labels of at most 63 characters";

/// Desired state of a ShardedService.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rigging.dev",
    version = "v1alpha1",
    kind = "ShardedService",
    namespaced,
    status = "ShardedServiceStatus",
    shortname = "shsvc",
    category = "rigging",
    derive = "PartialEq",
    doc = "A sharded service: shards addressed by stable names, keys placed on them by consistent hashing, reached through a router or an ambassador.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(name = "Ready Shards", type_ = "integer", json_path = ".status.readyShards"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 47 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message(NAME_MESSAGE)
)]
#[x_kube(
    validation = Rule::new("(self.protocol == 'http') == has(self.shardKey)")
        .message("shardKey is required with protocol http (where the key of a request is), and only used with it")
        .field_path(".shardKey")
)]
#[serde(rename_all = "camelCase")]
pub struct ShardedServiceSpec {
    /// Number of shards. Changing it moves about 1/n of the keys.
    #[schemars(range(min = 1, max = 1024))]
    pub shards: i32,

    /// Pods per shard. Above 1, each shard is its own set of replicas behind its own
    /// Service (a replicated sharded service, for hot shards).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas_per_shard: i32,

    /// What clients and shards speak.
    pub protocol: Protocol,

    /// The port the app container of each shard listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The shards' pod template. Its first container is the app container.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,

    /// Storage for stateful shards: each shard pod gets its own claims, kept across
    /// restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "volume_claims_schema")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,

    /// HTTP only: where a request's key is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<ShardKey>,

    /// How keys are hashed onto the ring.
    #[serde(default)]
    pub hashing: Hashing,

    /// How clients reach the shards.
    #[serde(default)]
    pub router: Router,

    /// Rigging's adapters to place beside the app in every shard pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<Sidecars>,
}

fn one() -> i32 {
    1
}

/// Where an HTTP request's key is: exactly one of the fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("[has(self.header), has(self.pathSegment), has(self.query)].filter(x, x).size() == 1")
        .message("set exactly one of header, pathSegment or query")
)]
#[serde(rename_all = "camelCase")]
pub struct ShardKey {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// The Nth segment of the path, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub path_segment: Option<i32>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query: Option<String>,
}

/// Consistent hashing of keys onto shards.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hashing {
    /// The hash function, as twemproxy names it.
    #[serde(default)]
    pub function: HashFunction,
    /// Two characters around the part of a key that is hashed (`{}`: `{user42}:cart`
    /// hashes as `user42`), so that related keys share a shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2))]
    pub hash_tag: Option<String>,
}

/// twemproxy's hash functions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum HashFunction {
    #[default]
    #[serde(rename = "fnv1a_64")]
    Fnv1a64,
    #[serde(rename = "fnv1_64")]
    Fnv164,
    #[serde(rename = "fnv1a_32")]
    Fnv1a32,
    #[serde(rename = "fnv1_32")]
    Fnv132,
    Md5,
    Crc16,
    Crc32,
    Crc32a,
    OneAtATime,
    Murmur,
    Jenkins,
    Hsieh,
}

impl HashFunction {
    /// The name twemproxy and `rigging-sidecar shard --hash` use.
    pub fn as_str(self) -> &'static str {
        match self {
            HashFunction::Fnv1a64 => "fnv1a_64",
            HashFunction::Fnv164 => "fnv1_64",
            HashFunction::Fnv1a32 => "fnv1a_32",
            HashFunction::Fnv132 => "fnv1_32",
            HashFunction::Md5 => "md5",
            HashFunction::Crc16 => "crc16",
            HashFunction::Crc32 => "crc32",
            HashFunction::Crc32a => "crc32a",
            HashFunction::OneAtATime => "one_at_a_time",
            HashFunction::Murmur => "murmur",
            HashFunction::Jenkins => "jenkins",
            HashFunction::Hsieh => "hsieh",
        }
    }
}

/// How clients reach the shards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Router {
    /// `Router`: a Deployment of sharding ambassadors behind the Service clients use.
    /// `Ambassador`: no router; client pods run the ambassador on localhost, configured
    /// from the ring ConfigMap.
    #[serde(default)]
    pub mode: RouterMode,
    /// Router pods (mode `Router`).
    #[serde(default = "default_router_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// The port clients connect to, on the router Service or on localhost. Defaults to
    /// `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            mode: RouterMode::default(),
            replicas: default_router_replicas(),
            port: None,
        }
    }
}

fn default_router_replicas() -> i32 {
    2
}

/// Where the sharding ambassador runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RouterMode {
    /// In a router Deployment of its own.
    #[default]
    Router,
    /// In each client pod.
    Ambassador,
}

/// Observed state of a ShardedService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardedServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Shards whose pods are all ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_shards: Option<i32>,

    /// The ring's members, by the stable name each is hashed as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,

    /// A digest of the ring's configuration: changes exactly when a key may move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_version: Option<String>,

    /// After the last change of the ring, the share of the key space (0 to 1) that moved
    /// to another shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_key_share: Option<f64>,

    /// `Ready`, `Progressing` and `Degraded`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
