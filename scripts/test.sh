#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need when it is missing, then
# runs every check that can run on this machine, including the cluster suite on a real
# control plane that it builds (once, cached) and starts.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-install   skip apt-get/pip (tools already there)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

install=1
[[ ${1:-} == --no-install ]] && install=0

step() { printf '\n==> %s\n' "$*"; }

# Real servers and clients the sidecar tests run against, and the linters for scripts.
apt_packages=(
  curl openssl shellcheck
  redis-server redis-tools memcached nutcracker
  nginx-light haproxy prometheus postgresql varnish etcd-server
)
# Python tools that check Kubernetes artefacts, in a venv of the project's own.
pip_packages=(pyyaml yamllint kubernetes-validate helm-python-sdk checkov)

install_apt() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  step "apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages' own services would hold the default ports; the tests start their own.
  for svc in redis-server memcached nutcracker nginx haproxy prometheus postgresql varnish etcd; do
    "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
  done
}

install_venv() {
  if [[ ! -x .venv/bin/python ]]; then
    step "python venv .venv"
    python3 -m venv .venv
  fi
  local stamp
  stamp=.venv/.installed-$(printf '%s\n' "${pip_packages[@]}" | sha256sum | cut -c1-12)
  [[ -f $stamp ]] && return 0
  step "pip install ${pip_packages[*]}"
  .venv/bin/pip install -q --disable-pip-version-check "${pip_packages[@]}"
  touch "$stamp"
}

if ((install)); then
  install_apt
  install_venv
fi
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

# The real control plane: built from the Kubernetes Go modules once per version (cached
# outside the repository), started on 127.0.0.1, stopped on exit, failure or Ctrl-C.
step "control plane: etcd, kube-apiserver, kube-controller-manager (e2e/controlplane)"
command -v go >/dev/null || { echo "go is needed to build the control plane" >&2; exit 1; }
controlplane=$(mktemp -d "${TMPDIR:-/tmp}/rigging-controlplane.XXXXXX")
stop_controlplane() {
  bash e2e/controlplane/down.sh "$controlplane"
  rm -rf "$controlplane"
}
trap stop_controlplane EXIT
trap 'exit 130' INT TERM
bash e2e/controlplane/up.sh "$controlplane"

step "cluster suite: the operator against the real API server"
# The tests mostly wait on the API server, so more run at once than there are cores.
PATH="$controlplane/bin:$PATH" RIGGING_KUBECONFIG="$controlplane/kubeconfig" RIGGING_CLUSTER_REQUIRE=1 \
  cargo test --workspace --test cluster --locked -- --test-threads 8

step "election sidecars on Leases of the real API server"
RIGGING_KUBECONFIG="$controlplane/kubeconfig" RIGGING_CLUSTER_REQUIRE=1 \
  cargo test -p rigging-sidecar --test sidecars --locked -- elect::leases

step "shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck -x "${scripts[@]}"

step "end-to-end (kind; skipped without a cluster unless RIGGING_E2E_REQUIRE=1)"
bash e2e/run.sh

echo
echo "scripts/test.sh: all checks passed"
