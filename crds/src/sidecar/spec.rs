//! The `sidecars` block of every Rigging kind that owns pods: which of Rigging's adapters
//! and ambassadors to place beside the app, and their few settings. The operator turns it
//! into native sidecars through the contract types of this module's siblings.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::elect::MAX_ELECTION_NAME;
use super::logs::Format;
use crate::schema::{duration_message, duration_rule};

/// Rigging's sidecars to place in the pods, beside the app.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sidecars {
    /// The log adapter: reads the app's log file from a volume both containers mount, and
    /// writes one JSON object per record to its stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogsSidecar>,
    /// The metrics adapter: turns the app's native stats into a Prometheus endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSidecar>,
    /// The health monitor: deep checks of the app, served as `/readyz` for the kubelet.
    /// With it, the app container needs no readinessProbe of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSidecar>,
    /// The sharding ambassador of a ShardedService in mode `Ambassador`: the app reaches
    /// every shard through `127.0.0.1:<port>`, and the pod is labelled
    /// `rigging.dev/shard-client: <service>`, which that ShardedService's NetworkPolicy
    /// lets through to its shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardSidecar>,
    /// The HTTP ambassador: the app sends its HTTP requests to `127.0.0.1:<port>`, and the
    /// ambassador routes, balances, retries, caches and rate-limits them as the config file
    /// `http.yaml` of a ConfigMap says, reloading it when the ConfigMap changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSidecar>,
    /// The election sidecar: leader election (and ownership of items) among the pods, on
    /// Kubernetes Leases or etcd, with fencing tokens. The app asks it who leads at
    /// `http://127.0.0.1:9125/leader`. With the Lease backend the operator gives the pods'
    /// ServiceAccount a Role for the Leases of the namespace, `<name>-elect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elect: Option<ElectSidecar>,
    /// The queue sidecar, the pub/sub ambassador on NATS JetStream: the app publishes with
    /// `POST http://127.0.0.1:9127/publish/{topic}`, and with `subscribe` receives each
    /// message of those topics as a POST to `deliverTo`, a 2xx answer acknowledging it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSidecar>,
}

/// The log adapter's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.file.matches('^/[^/].*/[^/]+$')")
        .message("file must be an absolute path to a file inside a directory: that directory becomes a volume the app and the log adapter share")
        .field_path(".file"),
    validation = Rule::new("(self.format == 'regex') == has(self.pattern)")
        .message("pattern is required with format regex, and only used with it")
        .field_path(".pattern")
)]
#[serde(rename_all = "camelCase")]
pub struct LogsSidecar {
    /// The format of the app's records.
    pub format: Format,
    /// The log file the app writes, as an absolute path in the app container.
    pub file: String,
    /// With `format: regex`, a regex whose named groups `(?P<name>…)` become fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// A regex matching the first line of a record; other lines join the record before
    /// them (stack traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline_start: Option<String>,
    /// CPU and memory of this sidecar's container; each value left out keeps the
    /// sidecar's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

/// The metrics adapter's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSidecar {
    /// Where the stats come from, as the app's pod sees it: `redis://127.0.0.1:6379`,
    /// `memcached://127.0.0.1:11211`, `nginx-status+http://127.0.0.1:8080/status` or
    /// `json+http://127.0.0.1:8080/stats?map=FILE`.
    #[schemars(length(min = 1))]
    pub source: String,
    /// CPU and memory of this sidecar's container; each value left out keeps the
    /// sidecar's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

/// The health monitor's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.checks.all(c, !c.startsWith('exec:'))")
        .message("exec: checks run in the health monitor's own container, whose distroless image has no shell and no tools: use http://, tcp://, redis://, memcached:// or postgres:// checks")
        .field_path(".checks")
)]
#[serde(rename_all = "camelCase")]
pub struct HealthSidecar {
    /// The checks, in `rigging-sidecar health --check` syntax: `http://…`,
    /// `tcp://HOST:PORT`, `redis://…`, `memcached://HOST:PORT` or `postgres://…`, with
    /// options after `#`.
    #[schemars(length(min = 1, max = 32), inner(length(max = 2048)))]
    pub checks: Vec<String>,
    /// CPU and memory of this sidecar's container; each value left out keeps the
    /// sidecar's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

/// The sharding ambassador's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.service.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("service must be the name of a ShardedService: a DNS-1035 label")
        .field_path(".service")
)]
#[serde(rename_all = "camelCase")]
pub struct ShardSidecar {
    /// The ShardedService, in the same namespace, whose shards the app uses. The
    /// ambassador reads that ShardedService's ring from its ConfigMap `<service>-ring`
    /// (protocol, servers, hashing) and reloads it when the ring changes; the pod does not
    /// start before that ConfigMap exists.
    #[schemars(length(min = 1, max = crate::sharded_service::MAX_NAME_LEN))]
    pub service: String,
    /// The port on 127.0.0.1 where the app connects to the ambassador, in the
    /// ShardedService's protocol.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// CPU and memory of this sidecar's container; each value left out keeps the
    /// sidecar's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

/// The HTTP ambassador's settings. Everything about routing is in the config file, which
/// the ambassador reloads; these two are what the pod itself is built from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.configMap.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("configMap must be the name of a ConfigMap: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")
        .field_path(".configMap")
)]
#[serde(rename_all = "camelCase")]
pub struct HttpSidecar {
    /// A ConfigMap in the same namespace whose key `http.yaml` is the ambassador's config
    /// file (routes, backends, cache, rate limits: `rigging-sidecar http --config`). It is
    /// mounted as a directory, so an edit reaches the ambassador, which reloads it without a
    /// restart; the pod does not start before the ConfigMap and its key exist.
    #[schemars(length(min = 1, max = 253))]
    pub config_map: String,
    /// The port on 127.0.0.1 where the app sends its requests to the ambassador.
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// CPU and memory of this sidecar's container; each value left out keeps the
    /// sidecar's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

fn default_http_port() -> i32 {
    super::http::DEFAULT_LISTEN.port().into()
}

/// Where the election sidecar keeps the election.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ElectBackend {
    /// `coordination.k8s.io/v1` Leases in the pods' namespace; the operator grants the
    /// pods' ServiceAccount access to them.
    #[default]
    Lease,
    /// An etcd cluster (`etcdEndpoints`), through its v3 JSON gateway.
    Etcd,
}

/// The election sidecar's settings. Timings default to client-go's (15s, 10s, 2s).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.election) || self.election.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("election must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit")
        .field_path(".election"),
    validation = Rule::new("(has(self.backend) && self.backend == 'Etcd') == (has(self.etcdEndpoints) && size(self.etcdEndpoints) > 0)")
        .message("etcdEndpoints is required with backend Etcd (the members' client URLs, http://HOST:PORT), and only used with it")
        .field_path(".etcdEndpoints"),
    validation = Rule::new("!has(self.etcdEndpoints) || self.etcdEndpoints.all(e, e.matches('^http://[^/]+:[0-9]+/?$'))")
        .message("etcdEndpoints must be http://HOST:PORT URLs (TLS to etcd is not supported yet)")
        .field_path(".etcdEndpoints"),
    validation = Rule::new(duration_rule("leaseDuration")).message(Message::Message(duration_message("leaseDuration"))).field_path(".leaseDuration"),
    validation = Rule::new(duration_rule("renewDeadline")).message(Message::Message(duration_message("renewDeadline"))).field_path(".renewDeadline"),
    validation = Rule::new(duration_rule("retryPeriod")).message(Message::Message(duration_message("retryPeriod"))).field_path(".retryPeriod"),
    validation = Rule::new("!has(self.leaderFile) || self.leaderFile.matches('^/[^/].*/[^/]+$')")
        .message("leaderFile must be an absolute path to a file inside a directory: that directory becomes a volume the app and the election sidecar share")
        .field_path(".leaderFile")
)]
#[serde(rename_all = "camelCase")]
pub struct ElectSidecar {
    /// The election's name: the Lease (or etcd key) the pods compete for. Pods that give
    /// the same name, in one namespace, elect one leader among them. Defaults to the
    /// name of the object that owns the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_ELECTION_NAME))]
    pub election: Option<String>,
    /// Where the election is kept.
    #[serde(default)]
    pub backend: ElectBackend,
    /// With backend `Etcd`: each member's client URL, `http://HOST:PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 256)))]
    pub etcd_endpoints: Vec<String>,
    /// How long a term lasts without renewal before another pod may take it (whole
    /// seconds; default `15s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub lease_duration: Option<String>,
    /// The leader stops claiming leadership when it has not renewed for this long; shorter
    /// than `leaseDuration` (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub renew_deadline: Option<String>,
    /// Time between renewals and between attempts to acquire; shorter than
    /// `renewDeadline` (default `2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub retry_period: Option<String>,
    /// Also share out this many items (`0 … items-1`) among the pods, each holding at
    /// most its fair share: the book's sharded ownership (`GET /owned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub items: Option<i32>,
    /// A file in the app container that holds the `/leader` answer, rewritten atomically
    /// when the leader changes: an absolute path, whose directory becomes a volume shared
    /// with the sidecar (read-only for the app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub leader_file: Option<String>,
    /// Only the leader's pod is ready: the sidecar's readiness probe asks
    /// `/readyz?leader=true`, so a Service in front of the pods sends traffic to the
    /// leader alone (active-passive). ReplicatedService only.
    #[serde(default)]
    pub active_passive: bool,
    /// CPU and memory of this sidecar's container; each value left out keeps the
    /// sidecar's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

/// The queue sidecar's settings (docs/sidecars/queue.md).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.urlSecret)")
        .message("give the NATS server as url, or as urlSecret when its URL holds credentials: one of them"),
    validation = Rule::new("!has(self.url) || self.url.matches('^nats://[^@/]+$')")
        .message("url must be nats://HOST:PORT (several comma-separated for a cluster); a URL with credentials goes in a Secret, named by urlSecret")
        .field_path(".url"),
    validation = Rule::new("!has(self.subscribe) || self.subscribe.all(t, t.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.dead-letter)?$'))")
        .message("subscribe: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit; TOPIC.dead-letter is its dead-letter topic")
        .field_path(".subscribe"),
    validation = Rule::new("!has(self.outputs) || self.outputs.all(t, t.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.dead-letter)?$'))")
        .message("outputs: a topic is 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
        .field_path(".outputs"),
    validation = Rule::new("has(self.deliverTo) == (has(self.subscribe) && size(self.subscribe) > 0)")
        .message("subscribe and deliverTo go together: the topics the app receives, and the URL in the pod where it receives them")
        .field_path(".deliverTo"),
    validation = Rule::new("!has(self.deliverTo) || self.deliverTo.matches('^http://(127\\\\.0\\\\.0\\\\.1|localhost):[0-9]+(/.*)?$')")
        .message("deliverTo must be the app's URL in the pod: http://127.0.0.1:PORT/PATH")
        .field_path(".deliverTo"),
    validation = Rule::new("!has(self.consumer) || self.consumer.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("consumer must be lowercase letters, digits and '-', starting and ending with a letter or digit")
        .field_path(".consumer"),
    validation = Rule::new("!has(self.stream) || self.stream.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("stream must be lowercase letters, digits and '-', starting and ending with a letter or digit")
        .field_path(".stream"),
    validation = Rule::new(duration_rule("deliveryTimeout")).message(Message::Message(duration_message("deliveryTimeout"))).field_path(".deliveryTimeout")
)]
#[serde(rename_all = "camelCase")]
pub struct QueueSidecar {
    /// The NATS server, `nats://HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub url: Option<String>,
    /// A key of a Secret in the pod's namespace whose value is the server's URL with its
    /// credentials, `nats://USER:PASSWORD@HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<SecretKey>,
    /// The JetStream stream that holds the topics (default `rigging`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub stream: Option<String>,
    /// Topics whose messages the app receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 75)))]
    pub subscribe: Vec<String>,
    /// The consumer's name: pods with the same name share the messages, pods with
    /// different names each get all of them. Defaults to the topics' names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub consumer: Option<String>,
    /// Where the app receives messages, `http://127.0.0.1:PORT/PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub deliver_to: Option<String>,
    /// Topics the app's non-empty answers are published to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 75)))]
    pub outputs: Vec<String>,
    /// Messages delivered to the pod and not yet answered, at most (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u32>,
    /// Failed deliveries before a message goes to its dead-letter topic (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deliveries: Option<u32>,
    /// How long the app has to answer a delivery (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub delivery_timeout: Option<String>,
    /// CPU and memory of this sidecar's container; each value left out keeps the
    /// sidecar's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SidecarResources>,
}

/// A key of a Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretKey {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in its data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// CPU and memory of one of Rigging's containers. Each value left out keeps that
/// container's default (docs/replicated-service.md, "Resources").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SidecarResources {
    /// What the scheduler sets aside for the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<CpuMemory>,
    /// The most the container may use: past its memory limit it is killed, past its CPU
    /// limit throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CpuMemory>,
}

/// A CPU and a memory quantity, in Kubernetes' notation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CpuMemory {
    /// Cores: `250m`, `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Bytes: `64Mi`, `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}
