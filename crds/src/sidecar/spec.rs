//! The `sidecars` block of every Rigging kind that owns pods: which of Rigging's adapters
//! and ambassadors to place beside the app, and their few settings. The operator turns it
//! into native sidecars through the contract types of this module's siblings.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::logs::Format;

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
}

fn default_http_port() -> i32 {
    super::http::DEFAULT_LISTEN.port().into()
}
