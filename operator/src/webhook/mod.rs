//! Sidecar injection: a mutating admission webhook that adds Rigging's sidecars to pods
//! that ask for them (label `rigging.dev/inject: enabled`, sidecars and options in
//! `rigging.dev/*` annotations), rendered by the same renderer as the controllers' pods.
//!
//! - [`annotations`]: what a pod asks for, checked by the `sidecars` block's own rules.
//! - [`patch`]: the JSON Patch, built against the pod's raw JSON.
//! - [`certs`]: the CA the operator keeps in a Secret, and the serving certificate.
//! - [`server`]: the HTTPS endpoint `/inject`, with certificates reloaded on change.

pub mod annotations;
pub mod certs;
pub mod patch;
pub mod server;
