//! Rigging's controller manager: one controller per Rigging kind, each a pure desired
//! state plus a thin reconcile that applies it.
//!
//! - [`replicated_service`]: the ReplicatedService controller.
//! - [`render`]: the pure halves offline (`rigging-operator render`).
//! - [`crdgen`]: the CRDs committed under `crds/`.
//! - [`manager`]: `rigging-operator run` (admin endpoints, leader election, controllers).

pub mod admin;
pub mod cli;
pub mod context;
pub mod crdgen;
pub mod drift;
pub mod error;
pub mod manager;
pub mod metrics;
pub mod render;
pub mod replicated_service;
pub mod schema;

pub use context::{ChildStores, Config, Context};
pub use error::{Error, Result};
