//! Rigging's controller manager: one controller per Rigging kind, each a pure desired
//! state plus the shared layer that applies it.
//!
//! - [`controller`]: what every kind shares (wiring, shared child watches, apply, orphan
//!   removal, status, Events, backoff); a kind implements [`controller::Kind`].
//! - [`replicated_service`], [`sharded_service`], [`work_queue`], [`pipeline`],
//!   [`scatter_gather`]: each kind's desired state and status; [`shard_set`]: the sharded
//!   pods two of them share.
//! - [`drift`]: whether a live child already holds what the operator applies.
//! - [`render`]: the pure halves offline (`rigging-operator render`).
//! - [`crdgen`]: the CRDs committed under `crds/`.
//! - [`webhook`]: sidecar injection into pods that ask for it.
//! - [`manager`]: `rigging-operator run` (admin endpoints, leader election, controllers).

pub mod admin;
pub mod broker;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod drift;
pub mod error;
pub mod manager;
pub mod map_reduce;
pub mod metrics;
pub mod pipeline;
pub mod render;
pub mod replicated_service;
pub mod scatter_gather;
pub mod schema;
pub mod shard_set;
pub mod sharded_service;
pub mod sidecars;
pub mod webhook;
pub mod work_queue;

pub use controller::{ChildStores, Config, Context};
pub use error::{Error, Result};
