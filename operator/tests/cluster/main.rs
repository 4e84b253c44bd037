//! The cluster suite: `rigging-operator` against a real Kubernetes API server.
//!
//! It runs on the cluster of the kubeconfig in `RIGGING_KUBECONFIG`: the control plane of
//! `e2e/controlplane/up.sh` (which `scripts/test.sh` starts), or a kind cluster in users'
//! CI. Without that variable every test says it is skipped and passes, unless
//! `RIGGING_CLUSTER_REQUIRE=1`, when it fails. `kubectl` and `helm` must be on `PATH`.
//!
//! Each test works in a namespace of its own and starts its own operator scoped to it
//! (`run --namespace`), so the tests run in parallel and leave nothing behind.

mod apply;
mod chart;
mod crds;
mod elect;
mod frontend;
mod leader_election;
mod reconcile;
mod render;
mod sharded_service;
mod support;
mod webhook;
mod work_queue;
