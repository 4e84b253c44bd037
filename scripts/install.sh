#!/usr/bin/env bash
# What Rigging's scripts need on a Debian machine, installed when missing; sourced by
# scripts/up.sh (the local cluster) and scripts/test.sh (every test).
#
#   install_cluster_tools   the local cluster's node (containerd, runc, CNI plugins,
#                           iptables, conntrack), its images (umoci, mmdebstrap, musl-tools
#                           and Rust's musl target, make for jemalloc), openssl
#   install_test_tools      all of the above, the real servers and clients the sidecar
#                           tests run against, shellcheck, and a Python venv (.venv) with
#                           the tools that check Kubernetes artefacts

cluster_packages=(
  containerd runc containernetworking-plugins iptables conntrack
  umoci mmdebstrap musl-tools openssl curl
  make # the sidecar's allocator, jemalloc, is C built with make
)
test_packages=(
  shellcheck
  redis-server redis-tools memcached nutcracker
  nginx-light haproxy prometheus postgresql varnish etcd-server nats-server
)
pip_packages=(pyyaml yamllint kubernetes-validate helm-python-sdk checkov)

install_step() { printf '\n==> %s\n' "$*"; }

install_apt() { # packages...
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  install_step "apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  # The packages' own services would hold the default ports (and containerd's socket);
  # the tests and the local cluster start their own.
  local svc
  for svc in containerd redis-server memcached nutcracker nginx haproxy prometheus postgresql \
    varnish etcd nats-server; do
    "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
  done
}

# The images' binaries are static musl builds, as the Dockerfile makes them.
install_musl_target() {
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl && return 0
  install_step "rustup target add x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
}

install_venv() {
  if [[ ! -x .venv/bin/python ]]; then
    install_step "python venv .venv"
    python3 -m venv .venv
  fi
  local stamp
  stamp=.venv/.installed-$(printf '%s\n' "${pip_packages[@]}" | sha256sum | cut -c1-12)
  [[ -f $stamp ]] && return 0
  install_step "pip install ${pip_packages[*]}"
  .venv/bin/pip install -q --disable-pip-version-check "${pip_packages[@]}"
  touch "$stamp"
}

install_cluster_tools() {
  install_apt "${cluster_packages[@]}"
  install_musl_target
}

install_test_tools() {
  install_apt "${cluster_packages[@]}" "${test_packages[@]}"
  install_musl_target
  install_venv
}
