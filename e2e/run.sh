#!/usr/bin/env bash
# End-to-end suite: the cluster suite (operator/tests/cluster) on a cluster whose nodes run
# Rigging's own images. First the tests that start their own operators, then the chart
# installed as a user installs it and the `node::` tests against it: every example Ready
# and doing what its README says, native sidecars, the webhook, rollouts, resharding and
# work queues on real pods (docs/testing.md lists them).
#
# Cluster: $RIGGING_E2E_KUBECONFIG if set, with the images already there (the local kit:
# scripts/test.sh imports them; another cluster: set RIGGING_HELM_ARGS to where it pulls
# them from, e.g. "--set image.registry=ghcr.io/me --set sidecarImage.registry=ghcr.io/me").
# Otherwise a kind cluster this script creates (needs kind, docker, helm and kubectl),
# into which it loads both images built from the Dockerfile and the example apps' images
# (e2e/images/build.sh examples: needs umoci and mmdebstrap). With neither, the suite is
# skipped, unless RIGGING_E2E_REQUIRE=1, when it fails: CI that promises e2e must never
# pass without it.
#
#   RIGGING_E2E_KUBECONFIG=/tmp/cp/kubeconfig e2e/run.sh   the local kit (scripts/up.sh)
#   e2e/run.sh                                           a throwaway kind cluster
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=rigging-e2e
created_cluster=0
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)

skip_or_fail() {
  if [[ ${RIGGING_E2E_REQUIRE:-0} == 1 ]]; then
    echo "e2e: FAILED: $1 (RIGGING_E2E_REQUIRE=1)" >&2
    exit 1
  fi
  echo "e2e: skipped: $1"
  exit 0
}

# True when every named command is on PATH.
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || return 1
  done
}

cleanup() {
  if ((created_cluster)) && [[ ${RIGGING_E2E_KEEP:-0} != 1 ]]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if [[ -n ${RIGGING_E2E_KUBECONFIG:-} ]]; then
  export KUBECONFIG=$RIGGING_E2E_KUBECONFIG
  need kubectl helm || skip_or_fail "kubectl and helm are needed"
else
  need kind docker helm kubectl || skip_or_fail "no cluster: set RIGGING_E2E_KUBECONFIG, or install kind, docker and helm"
  docker info >/dev/null 2>&1 || skip_or_fail "no Docker engine running"
  echo "e2e: creating kind cluster $cluster"
  kind create cluster --name "$cluster" --config e2e/kind.yaml --wait 180s
  created_cluster=1
  export KUBECONFIG
  KUBECONFIG=$(mktemp)
  kind get kubeconfig --name "$cluster" >"$KUBECONFIG"
  # Tagged with the chart's appVersion, so that the chart's defaults find them.
  for target in operator sidecar; do
    docker build --target "$target" --build-arg "VERSION=$version" -t "rigging-$target:$version" .
    kind load docker-image --name "$cluster" "rigging-$target:$version"
  done
  kind load image-archive --name "$cluster" "$(bash e2e/images/build.sh examples)"
fi

# The tests that start their own operators first, while no installed operator reconciles
# the test namespaces; they mostly wait on the API server, so more run at once than there
# are cores.
echo "e2e: cluster suite"
RIGGING_KUBECONFIG=$KUBECONFIG RIGGING_CLUSTER_REQUIRE=1 \
  cargo test --workspace --test cluster --locked -- --test-threads 8 --skip node:: --skip serial::

echo "e2e: node suite (the chart's operator, Rigging's pods)"
RIGGING_KUBECONFIG=$KUBECONFIG RIGGING_CLUSTER_REQUIRE=1 \
  cargo test --workspace --test cluster --locked -- --test-threads 4 node::
echo "e2e: alone, what changes the CRDs every test shares (a helm upgrade)"
RIGGING_KUBECONFIG=$KUBECONFIG RIGGING_CLUSTER_REQUIRE=1 \
  cargo test --workspace --test cluster --locked -- --test-threads 1 serial::

echo "e2e: all checks passed"
