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

/// The most shards a ShardedService may have.
pub const MAX_SHARDS: i32 = 1024;

/// The most characters Kubernetes appends to a StatefulSet's name for a revision
/// (`controller.ComputeHash`, a safe-encoded 32-bit FNV hash).
const REVISION_HASH_LEN: usize = 10;

/// The longest name a ShardedService may have. Its longest derived string is the label
/// value Kubernetes puts on every pod of a replicated shard's StatefulSet
/// (`replicasPerShard > 1`): `controller-revision-hash: <name>-<shard>-<revision>`, with a
/// shard number of up to `MAX_SHARDS - 1` and a revision of up to 10 characters, in a label
/// value of at most 63. Everything else is shorter: pods `<name>-<shard>-<replica>`, the
/// Services `<name>-shards` and `<name>-<shard>`, the Deployment `<name>-router`, the
/// ConfigMap `<name>-ring`.
pub const MAX_NAME_LEN: usize =
    63 - "-".len() - decimal_digits(MAX_SHARDS - 1) - "-".len() - REVISION_HASH_LEN;

const fn decimal_digits(mut n: i32) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// The CEL rule on `metadata.name`: a DNS-1035 label of at most [`MAX_NAME_LEN`]. A
/// ScatterGather's leaves are named as a replicated shard's pods are, and take it too.
pub(crate) fn name_rule() -> String {
    format!(
        "self.metadata.name.size() <= {MAX_NAME_LEN} && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
}

/// Why the name of a `kind` is refused, with the length derived as [`MAX_NAME_LEN`] is.
pub(crate) fn name_message(kind: &str) -> String {
    format!(
        "metadata.name must be a DNS-1035 label of at most {MAX_NAME_LEN} characters (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit): the {kind}'s Services take this name, and the pods of a shard's StatefulSet carry it with a shard number up to {} and a revision hash of up to {REVISION_HASH_LEN} characters in a label of at most 63 characters",
        MAX_SHARDS - 1
    )
}

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
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.router.mode"),
    printcolumn(name = "Ring", type_ = "string", json_path = ".status.ringVersion", priority = 1),
    printcolumn(name = "Moved", type_ = "number", json_path = ".status.movedKeyShare", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(name_rule()).message(Message::Message(name_message("ShardedService")))
)]
#[x_kube(
    validation = Rule::new("(self.protocol == 'http') == has(self.shardKey)")
        .message("shardKey is required with protocol http (where the key of a request is), and only used with it")
        .field_path(".shardKey"),
    validation = Rule::new("(has(self.sidecars) && has(self.sidecars.health)) || (has(self.template.spec) && size(self.template.spec.containers) > 0 && has(self.template.spec.containers[0].readinessProbe))")
        .message(Message::Expression("has(self.template.spec) && size(self.template.spec.containers) > 0 ? 'container \"' + self.template.spec.containers[0].name + '\" (the app container, template.spec.containers[0]) has no readinessProbe: a shard is only addressed once it is ready, so the app container must declare one, or sidecars.health must check it' : 'template.spec.containers must hold the app container'".into()))
        .field_path(".template"),
    validation = Rule::new("!has(self.sidecars) || !has(self.sidecars.elect) || !has(self.sidecars.elect.activePassive) || !self.sidecars.elect.activePassive")
        .message("sidecars.elect.activePassive would leave every shard but the leader's unready, and a shard that is not ready drops out of the ring: every shard serves its own keys, so a ShardedService elects without it")
        .field_path(".sidecars.elect.activePassive")
)]
#[serde(rename_all = "camelCase")]
pub struct ShardedServiceSpec {
    /// Number of shards. Changing it updates the ring in place and moves only the keys of
    /// the shards added or removed (about 1/n of them per shard). A new shard joins the
    /// ring once it is ready; a removed one leaves the ring first, and its pods go once
    /// every router serves the ring without it. Keys are not copied between shards.
    #[schemars(range(min = 1, max = MAX_SHARDS))]
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

    /// The shards' pod template. Its first container is the app container and must have a
    /// readiness probe.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,

    /// Storage for stateful shards: each shard pod gets its own claims, kept across
    /// restarts and across scaling down and up again. Stateful shards are never ejected
    /// from the ring when they fail (a key must not be served by another shard meanwhile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "volume_claims_schema")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,

    /// HTTP only: where a request's key is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<ShardKey>,

    /// How keys are hashed onto the ring. Immutable: another function or tag would move
    /// almost every key.
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
        .message("set exactly one of header, pathSegment or query"),
    validation = Rule::new("!has(self.header) || self.header.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')")
        .message("header must be an HTTP header name: letters, digits and !#$%&*+.^_|~-")
        .field_path(".header"),
    validation = Rule::new("!has(self.query) || self.query.matches('^[^&=#?\\\\s]+$')")
        .message("query must be a query parameter name, without '&', '=', '#', '?' or spaces")
        .field_path(".query")
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
#[x_kube(
    validation = Rule::new("self == oldSelf")
        .message("hashing is immutable: another hash function or hash tag puts almost every key on another shard; create a new ShardedService and move the data to it"),
    validation = Rule::new("!has(self.hashTag) || self.hashTag.matches('^[!-~]{2}$')")
        .message("hashTag must be two printable ASCII characters, such as {}")
        .field_path(".hashTag")
)]
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
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// The port of the Service clients connect to, and of the routers (mode `Router`).
    /// Defaults to `port`. In mode `Ambassador` each client pod picks its own localhost
    /// port (`sidecars.shard.port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// CPU and memory of each router's sharding ambassador (mode `Router`; in mode
    /// `Ambassador` the client pods' `sidecars.shard.resources` says); each value left out
    /// keeps its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::sidecar::spec::SidecarResources>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            mode: RouterMode::default(),
            replicas: default_router_replicas(),
            port: None,
            resources: None,
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

impl ShardedServiceSpec {
    /// The port clients reach the routers on: `router.port`, else `port`.
    pub fn router_port(&self) -> i32 {
        self.router.port.unwrap_or(self.port)
    }
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

    /// The ring's members, by the stable name each is hashed as (`<name>-<shard>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,

    /// Shards taken off the ring whose pods still run: they are removed once every router
    /// (or, in mode `Ambassador`, every client pod's ambassador) serves the ring without
    /// them, so that no request goes to a shard once it is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving_shards: Vec<String>,

    /// A short digest of the ring's configuration (the ConfigMap's `shard.yaml`): it
    /// changes whenever the routers and ambassadors get a new configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_version: Option<String>,

    /// After the last change of the ring's members, the share of the key space (0 to 1)
    /// that moved to another shard, computed exactly over the ketama continuum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_key_share: Option<f64>,

    /// `Ready`, `Progressing` and `Degraded`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::shard::hash::HashKind;

    #[test]
    fn every_hash_function_is_one_the_sidecar_computes_under_the_same_name() {
        let all = [
            HashFunction::Fnv1a64,
            HashFunction::Fnv164,
            HashFunction::Fnv1a32,
            HashFunction::Fnv132,
            HashFunction::Md5,
            HashFunction::Crc16,
            HashFunction::Crc32,
            HashFunction::Crc32a,
            HashFunction::OneAtATime,
            HashFunction::Murmur,
            HashFunction::Jenkins,
            HashFunction::Hsieh,
        ];
        assert_eq!(all.len(), HashKind::ALL.len());
        for function in all {
            let kind: HashKind = function.as_str().parse().unwrap();
            assert_eq!(kind.name(), function.as_str());
            // The manifest's spelling is the sidecar's.
            let json = serde_json::to_value(function).unwrap();
            assert_eq!(json, function.as_str());
        }
    }

    #[test]
    fn the_name_rule_states_the_length_derived_from_the_longest_label() {
        // "<name>-1023-<10 characters>" in 63.
        assert_eq!(MAX_NAME_LEN + "-1023".len() + "-".len() + 10, 63);
        assert!(name_rule().starts_with("self.metadata.name.size() <= 47 &&"));
        assert!(name_message("ShardedService").contains("at most 47 characters"));
    }
}
