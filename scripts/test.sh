#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need when it is missing, then
# runs every check that can run on this machine, ending with the cluster suite on a real
# cluster (control plane and one node) that it builds (once, cached) and starts.
#
#   scripts/test.sh                everything
#   scripts/test.sh --no-install   skip apt-get/rustup/pip (tools already there)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

install=1
[[ ${1:-} == --no-install ]] && install=0

step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }

# shellcheck source=scripts/install.sh
source scripts/install.sh
((install)) && install_test_tools
export PATH="$root/.venv/bin:$PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo nextest (unit, mocked API, golden, real-process tests)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --locked --doc

step "manifests: Helm chart and CRDs (helm, kubernetes-validate, yamllint, checkov)"
python3 scripts/check_manifests.py

step "shellcheck, gofmt"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck -x "${scripts[@]}"
mapfile -t go_files < <(git ls-files '*.go')
unformatted=$(gofmt -l "${go_files[@]}")
[[ -z $unformatted ]] || { echo "gofmt: $unformatted" >&2; exit 1; }

# The real cluster: built from the Kubernetes Go modules once per version (cached outside
# the repository), started on this machine, stopped on exit, failure or Ctrl-C.
step "cluster: control plane and node (e2e/controlplane), Rigging's images (e2e/images)"
command -v go >/dev/null || { echo "go is needed to build the cluster" >&2; exit 1; }
cluster=$(mktemp -d "${TMPDIR:-/tmp}/rigging-cluster.XXXXXX")
stop_cluster() {
  # down.sh refuses to leave DIR removable while anything is still mounted under it.
  bash e2e/controlplane/down.sh "$cluster" && rm -rf --one-file-system "$cluster"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM
bash e2e/controlplane/up.sh "$cluster"
bash e2e/images/build.sh --import "$cluster"

step "election sidecars on Leases of the real API server"
RIGGING_KUBECONFIG="$cluster/kubeconfig" RIGGING_CLUSTER_REQUIRE=1 \
  cargo test -p rigging-sidecar --test sidecars --locked -- elect::leases

step "cluster suite and node suite (e2e/run.sh on the local cluster)"
PATH="$cluster/bin:$PATH" RIGGING_E2E_KUBECONFIG="$cluster/kubeconfig" RIGGING_E2E_REQUIRE=1 \
  bash e2e/run.sh

echo
echo "scripts/test.sh: all checks passed"
