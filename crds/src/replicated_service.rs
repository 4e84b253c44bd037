//! `ReplicatedService`: a stateless, replicated, load-balanced service (book ch. 5).
//!
//! The user writes a pod template and a port; the operator turns it into a Deployment, a
//! Service, and — when asked — a PodDisruptionBudget, a HorizontalPodAutoscaler, a TLS
//! terminator in front of the app, and a cache and rate-limit tier in front of its Service.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{duration_message, duration_rule, pod_template_schema};
use crate::sidecar::spec::Sidecars;

/// Why a ReplicatedService's name must be a DNS-1035 label: its Service takes the name, and
/// its pods' labels carry it as a value (at most 63 characters).
const NAME_MESSAGE: &str = "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit): the ReplicatedService's Service and its pods' labels take this name";

/// Desired state of a ReplicatedService.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rigging.dev",
    version = "v1alpha1",
    kind = "ReplicatedService",
    namespaced,
    status = "ReplicatedServiceStatus",
    shortname = "rsvc",
    category = "rigging",
    derive = "PartialEq",
    doc = "A stateless, replicated, load-balanced service: a Deployment behind a Service, with an optional disruption budget, autoscaler, TLS terminator and cache and rate-limit frontend tier.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message(NAME_MESSAGE),
    validation = Rule::new(frontend_name_rule()).message(Message::Message(frontend_name_message()))
)]
#[x_kube(
    validation = Rule::new("!has(self.frontend) || !has(self.tls)")
        .message("frontend and tls cannot be combined: the frontend sends plain HTTP to the app's Service, which serves TLS when tls is set; terminate TLS in front of the frontend (an Ingress) instead")
        .field_path(".frontend"),
    validation = Rule::new("(has(self.sidecars) && has(self.sidecars.health)) || (has(self.template.spec) && size(self.template.spec.containers) > 0 && has(self.template.spec.containers[0].readinessProbe))")
        .message(Message::Expression("has(self.template.spec) && size(self.template.spec.containers) > 0 ? 'container \"' + self.template.spec.containers[0].name + '\" (the app container, template.spec.containers[0]) has no readinessProbe: a ReplicatedService only sends traffic to ready pods, so the app container must declare one, or sidecars.health must check it' : 'template.spec.containers must hold the app container'".into()))
        .field_path(".template")
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedServiceSpec {
    /// Number of pods. Ignored once `autoscaling` is set: the HorizontalPodAutoscaler owns it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// The port the app container listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The app's pod template. Its first container is the app container and must have a
    /// readiness probe.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,

    /// How the Service exposes the pods.
    #[serde(default)]
    pub service: ServiceSettings,

    /// Scale the pods with CPU load through a HorizontalPodAutoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Keep pods available through voluntary disruptions with a PodDisruptionBudget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,

    /// Terminate TLS in a Rigging sidecar in front of the app; the Service then targets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// Rigging's adapters to place beside the app: log and metrics adapters, health monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<Sidecars>,

    /// A replicated cache and rate-limit tier in front of the app: a Deployment, Service
    /// and ConfigMap `<name>-frontend` running Rigging's HTTP ambassador, which sends every
    /// request on to the app's Service. Clients then use the Service `<name>-frontend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<Frontend>,
}

fn default_replicas() -> i32 {
    1
}

/// How the Service in front of the pods is exposed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// The Service's port. Defaults to `port`, or to `tls.port` when TLS is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// The Service type.
    #[serde(default, rename = "type")]
    pub service_type: ServiceType,

    /// `ClientIP` sends each client to the same pod while it stays ready (a
    /// session-tracked service).
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

/// The Kubernetes Service types a ReplicatedService may ask for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The value Kubernetes expects in `Service.spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Session affinity of the Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SessionAffinity {
    /// Each connection may go to any ready pod.
    #[default]
    None,
    /// Connections from one client IP go to the same pod.
    ClientIP,
}

impl SessionAffinity {
    /// The value Kubernetes expects in `Service.spec.sessionAffinity`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAffinity::None => "None",
            SessionAffinity::ClientIP => "ClientIP",
        }
    }
}

/// CPU-based autoscaling of the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("minReplicas must be <= maxReplicas")
        .field_path(".minReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest pods the autoscaler keeps.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,

    /// Most pods the autoscaler may run.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Average CPU use, in percent of the pods' CPU requests, the autoscaler aims for.
    #[serde(
        rename = "targetCPUUtilizationPercentage",
        default = "default_target_cpu"
    )]
    #[schemars(range(min = 1))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target_cpu() -> i32 {
    80
}

/// A PodDisruptionBudget for the pods: exactly one of the two fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.maxUnavailable) != has(self.minAvailable)")
        .message("set exactly one of maxUnavailable or minAvailable")
)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    /// Most pods that may be unavailable at once (a number or a percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,

    /// Fewest pods that must stay available (a number or a percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
}

/// TLS termination by Rigging's TLS sidecar in front of the app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// A `kubernetes.io/tls` Secret in the same namespace (keys `tls.crt` and `tls.key`).
    #[schemars(length(min = 1))]
    pub secret_name: String,

    /// The port the TLS terminator listens on; the Service targets it.
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// CPU and memory of the TLS terminator's container; each value left out keeps its
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::sidecar::spec::SidecarResources>,
}

fn default_tls_port() -> i32 {
    8443
}

/// What the names of the frontend's children add to the ReplicatedService's name.
pub const FRONTEND_SUFFIX: &str = "-frontend";

/// The longest name of a ReplicatedService with a frontend: its Deployment, Service and
/// ConfigMap are named `<name>-frontend`, which must be a DNS-1035 label (the Service) and
/// fit in a label value (its pods carry it), at most 63 characters.
pub const MAX_FRONTEND_NAME_LEN: usize = 63 - FRONTEND_SUFFIX.len();

/// The CEL rule on `metadata.name` with a frontend.
fn frontend_name_rule() -> String {
    format!("!has(self.spec.frontend) || self.metadata.name.size() <= {MAX_FRONTEND_NAME_LEN}")
}

/// Why a name is too long for a frontend.
fn frontend_name_message() -> String {
    format!(
        "metadata.name must be at most {MAX_FRONTEND_NAME_LEN} characters with spec.frontend: the frontend's Deployment, Service and ConfigMap are named <name>{FRONTEND_SUFFIX}, which must fit in 63 characters"
    )
}

/// A size as the frontend's cache takes it: bytes, or a number with a binary or decimal
/// suffix.
const SIZE_PATTERN: &str = "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$";
fn size_rule(field: &str) -> String {
    format!("!has(self.{field}) || self.{field}.matches('{SIZE_PATTERN}')")
}

fn size_message(field: &str) -> String {
    format!(
        "{field} must be a size: a number of bytes, or one with Ki, Mi, Gi, Ti, k, M, G or T (64Mi)"
    )
}

/// A replicated cache and rate-limit tier of Rigging's HTTP ambassador in front of the
/// app's Service (the book's Varnish in front of a stateless service).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Frontend {
    /// Pods of the frontend tier. Each keeps its own cache and its own rate limits.
    #[serde(default = "default_frontend_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// The port of the Service `<name>-frontend`, which clients use.
    #[serde(default = "default_frontend_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Cache responses (GET and HEAD) in each frontend pod's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<FrontendCache>,

    /// Limit the requests each client may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<FrontendRateLimit>,
}

fn default_frontend_replicas() -> i32 {
    2
}

fn default_frontend_port() -> i32 {
    80
}

/// The frontend's response cache, per pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new(size_rule("maxSize")).message(Message::Message(size_message("maxSize"))).field_path(".maxSize"),
    validation = Rule::new(size_rule("maxObjectSize")).message(Message::Message(size_message("maxObjectSize"))).field_path(".maxObjectSize"),
    validation = Rule::new(duration_rule("defaultTtl")).message(Message::Message(duration_message("defaultTtl"))).field_path(".defaultTtl"),
    validation = Rule::new(duration_rule("staleIfError")).message(Message::Message(duration_message("staleIfError"))).field_path(".staleIfError")
)]
#[serde(rename_all = "camelCase")]
pub struct FrontendCache {
    /// Memory for cached responses in each frontend pod, such as `64Mi`; past it the least
    /// recently used go. The pod's memory request and limit grow by this much.
    #[serde(default = "default_cache_max_size")]
    #[schemars(length(min = 1, max = 32))]
    pub max_size: String,

    /// Larger responses are passed through and not stored (default `1Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub max_object_size: Option<String>,

    /// How long a response that says nothing of its freshness (no `Cache-Control: max-age`
    /// or `s-maxage`, no `Expires`) is served from the cache, such as `2m`. Not set: only
    /// responses that state their freshness are stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub default_ttl: Option<String>,

    /// How long past its freshness a cached response may still be served while the app
    /// fails (5xx or unreachable), such as `10m`. Not set: never, unless the response says
    /// so (`stale-if-error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub stale_if_error: Option<String>,
}

fn default_cache_max_size() -> String {
    "64Mi".into()
}

/// The frontend's rate limit: a token bucket per client in each frontend pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("(has(self.key) && self.key == 'Header') == has(self.header)")
        .message("header is required with key Header (the header whose value names the client), and only used with it")
        .field_path(".header"),
    validation = Rule::new("!has(self.header) || self.header.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')")
        .message("header must be an HTTP header name: letters, digits and !#$%&*+.^_|~-")
        .field_path(".header")
)]
#[serde(rename_all = "camelCase")]
pub struct FrontendRateLimit {
    /// Requests per second each client may send, sustained, through one frontend pod.
    /// Each pod counts on its own, so the tier lets a client through up to `replicas`
    /// times this.
    #[schemars(range(min = 1))]
    pub requests_per_second: i32,

    /// Requests a client may send at once after being quiet; `requestsPerSecond` when not
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<i32>,

    /// What tells clients apart: `ClientIP`, the client's address (behind another proxy,
    /// the first `X-Forwarded-For`), or `Header`, the value of `header` (an API key).
    #[serde(default)]
    pub key: RateLimitKey,

    /// With `key: Header`, the request header whose value names the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
}

/// What a rate limit counts requests by.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RateLimitKey {
    /// The client's IP address.
    #[default]
    ClientIP,
    /// The value of a request header.
    Header,
}

/// Observed state of a ReplicatedService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Replicas the Deployment asks for: `spec.replicas`, or what the autoscaler chose
    /// (at least its `minReplicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// The frontend tier's pods, when `frontend` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<FrontendStatus>,

    /// `Ready`, `Progressing` and `Degraded`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Observed state of a ReplicatedService's frontend tier.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrontendStatus {
    /// Replicas the frontend's Deployment asks for (`frontend.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Frontend pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}

impl ReplicatedServiceSpec {
    /// The Service's port: `service.port`, else the port clients expect to reach (the TLS
    /// port when TLS is on, the app's port otherwise).
    pub fn service_port(&self) -> i32 {
        self.service.port.unwrap_or(match &self.tls {
            Some(tls) => tls.port,
            None => self.port,
        })
    }

    /// The port the Service sends traffic to in the pod: the TLS terminator's when TLS is
    /// on, the app's otherwise.
    pub fn target_port(&self) -> i32 {
        self.tls.as_ref().map_or(self.port, |tls| tls.port)
    }
}
