//! Rigging's Kubernetes API, group `rigging.dev`, version `v1alpha1`, and the contract
//! between the operator and the sidecars ([`sidecar`]: each sidecar's typed command line).
//!
//! Each kind lives in a module named after the pattern it implements. The types are the
//! single source of truth: the CRD YAML under `crds/` is generated from them
//! (`rigging-operator crds`), with their OpenAPI bounds and CEL rules, and `render`
//! evaluates those same rules, so a manifest `render` accepts is one the API server
//! accepts.

pub mod field_error;
#[cfg(feature = "api")]
pub mod map_reduce;
#[cfg(feature = "api")]
pub mod pipeline;
#[cfg(feature = "api")]
pub mod replicated_service;
#[cfg(feature = "api")]
pub mod scatter_gather;
#[cfg(feature = "api")]
mod schema;
#[cfg(feature = "api")]
pub mod sharded_service;
pub mod sidecar;
#[cfg(feature = "api")]
pub mod work_queue;

pub use field_error::{FieldError, FieldErrors};
#[cfg(feature = "api")]
pub use map_reduce::{MapReduce, MapReduceSpec, MapReduceStatus};
#[cfg(feature = "api")]
pub use pipeline::{Pipeline, PipelineSpec, PipelineStatus};
#[cfg(feature = "api")]
pub use replicated_service::{
    Autoscaling, DisruptionBudget, Frontend, FrontendCache, FrontendRateLimit, FrontendStatus,
    RateLimitKey, ReplicatedService, ReplicatedServiceSpec, ReplicatedServiceStatus,
    ServiceSettings, ServiceType, SessionAffinity, Tls,
};
#[cfg(feature = "api")]
pub use scatter_gather::{ScatterGather, ScatterGatherSpec, ScatterGatherStatus};
#[cfg(feature = "api")]
pub use sharded_service::{ShardedService, ShardedServiceSpec, ShardedServiceStatus};
#[cfg(feature = "api")]
pub use work_queue::{WorkQueue, WorkQueueSpec, WorkQueueStatus};

/// The API group of every Rigging kind.
pub const GROUP: &str = "rigging.dev";
/// The API version of every Rigging kind.
pub const VERSION: &str = "v1alpha1";
