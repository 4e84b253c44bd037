//! Integration tests of rigging-operator: the generated CRDs, `render` on every example
//! (golden files and schema checks), the CLI's errors, and the reconcile against a mocked
//! API server.

mod cel;
mod cli;
mod crds;
mod examples;
mod fixtures;
mod kubernetes_schemas;
mod mock_api;
#[path = "../../../testing/ports.rs"]
mod ports;
mod reconcile;
mod run;
mod sharded_service;
mod sidecars;
mod webhook;
mod work_queue;
