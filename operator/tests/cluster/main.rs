//! The cluster suite: `rigging-operator` against a real Kubernetes API server.
//!
//! It runs on the cluster of the kubeconfig in `RIGGING_KUBECONFIG`: the control plane of
//! `e2e/controlplane/up.sh` (which `scripts/test.sh` starts), or a kind cluster in users'
//! CI. Without that variable every test says it is skipped and passes, unless
//! `RIGGING_CLUSTER_REQUIRE=1`, when it fails. `kubectl` and `helm` must be on `PATH`.
//!
//! Each test works in a namespace of its own and starts its own operator scoped to it
//! (`run --namespace`), so the tests run in parallel and leave nothing behind. The tests
//! under `node::` need a Ready node and use the operator the chart installs, which
//! reconciles every namespace: they run after the others (`-- --skip node::`, then
//! `-- node::`), as `e2e/run.sh` runs them. Last, alone, the `serial::` tests, which
//! change what every test shares (the CRDs).

mod apply;
mod chart;
mod crds;
mod deletion;
mod elect;
mod frontend;
mod leader_election;
mod map_reduce;
mod node;
mod pipeline;
mod reconcile;
mod render;
mod rollout_budget;
mod scatter_gather;
mod serial;
mod sharded_service;
mod steady;
mod support;
mod webhook;
mod work_queue;
