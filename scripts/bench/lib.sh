#!/usr/bin/env bash
# Shared helpers for scripts/bench/*.sh (sourced, not run).
# shellcheck disable=SC2034 # variables here are used by the scripts that source this file

# install_apt: Debian packages installed when missing, their own services stopped.
# shellcheck source=scripts/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/../install.sh"

# CPU time (user+system) of a process, in clock ticks: fields 14 and 15 of /proc/PID/stat.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# Resident set size of a process, in KiB.
rss_kib() {
  awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# The anonymous part of that (heap, stacks): what the process allocated, as opposed to
# pages of its binary and libraries.
anon_kib() {
  awk '/^RssAnon:/ {print $2}' "/proc/$1/status"
}

# Arithmetic on decimals (awk's): calc "1.5 * 2".
calc() { awk "BEGIN { print $1 }"; }

# Puts the operator to measure at DIR/rigging-operator: a copy of $OPERATOR when set, else
# of a fresh build of what the image ships (Dockerfile: release, static musl), a copy
# because the tree's binary may be rebuilt while a benchmark runs.
operator_binary() {
  if [[ -n ${OPERATOR:-} ]]; then
    cp "$OPERATOR" "$1/rigging-operator"
  else
    local target=x86_64-unknown-linux-musl
    cargo build --release --locked -q --target "$target" -p rigging-operator
    cp "${CARGO_TARGET_DIR:-target}/$target/release/rigging-operator" "$1/rigging-operator"
  fi
}

# Stops the background process PID (empty: nothing to stop) and reaps it.
stop_pid() {
  [[ -n $1 ]] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# The background processes a script started, oldest first (pids+=("$!")).
pids=()

# What a script's EXIT trap does first: after a failure (RC not 0) the last lines of WORK's
# logs (and of any further files named), then every process in pids stopped, newest first,
# so that a client leaves before the server it talks to.
stop_started() { # RC WORK [FILE...]
  local rc=$1 work=$2 i
  shift 2
  if ((rc != 0)); then
    printf 'failed; logs:\n' >&2
    tail -n 20 "$work"/*.log "$@" >&2 2>/dev/null || true
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
}

# Starts the control-plane kit in WORK/cp (further arguments go to up.sh, such as
# --no-node), points KUBECONFIG and the array `kubectl` at it, and installs Rigging's
# CRDs, returning once the API server serves them.
start_kit() {
  local work=$1 crd
  shift
  e2e/controlplane/up.sh "$@" "$work/cp" 2>&1 | tail -n 1 >&2
  export KUBECONFIG=$work/cp/kubeconfig
  kubectl=("$work/cp/bin/kubectl")
  "${kubectl[@]}" apply -f crds/ >/dev/null
  for crd in replicatedservices shardedservices workqueues; do
    wait_condition "crd/$crd.rigging.dev" Established
  done
}

# Undoes start_kit, or with KIT set (a kit the user brought) deletes only the namespace NS
# the benchmark made in it; then removes WORK.
stop_kit() { # WORK NS
  if [[ -n ${KIT:-} ]]; then
    "${kubectl[@]}" delete namespace "$2" --wait=false >/dev/null 2>&1 || true
  else
    e2e/controlplane/down.sh "$1/cp" >/dev/null 2>&1 || true
  fi
  rm -rf --one-file-system "$1"
}

# Waits (up to 60 s) until OBJECT (kind/name) has the condition TYPE True. Not `kubectl
# wait`: it fails while the object has no conditions yet.
wait_condition() {
  local object=$1 type=$2 _
  for _ in $(seq 1 120); do
    [[ $("${kubectl[@]}" get "$object" \
      -o jsonpath="{.status.conditions[?(@.type==\"$type\")].status}") == True ]] && return 0
    sleep 0.5
  done
  echo "$object: no condition $type=True within 60 s" >&2
  return 1
}

# Clock ticks per second, for cpu_ticks.
CLK_TCK=$(getconf CLK_TCK)

# Busy clock ticks of the whole machine (user, nice, system, irq, softirq, steal): less the
# ticks of a benchmark's own processes over a run, what other processes used meanwhile.
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# CPU ticks of a process and its children.
tree_ticks() {
  local total kid kids
  total=$(cpu_ticks "$1")
  read -ra kids <<<"$(cat /proc/"$1"/task/*/children 2>/dev/null)"
  for kid in "${kids[@]}"; do total=$((total + $(cpu_ticks "$kid"))); done
  echo "$total"
}

# others_share BUSY OURS TIMES SECS: the share of the machine's CPUs that other processes
# used during a wrk run of SECS seconds: all BUSY ticks less OURS (the servers' and the
# proxy's) and wrk's. TIMES is the children's line of bash's `times` run in wrk's subshell.
others_share() {
  awk -v b="$1" -v o="$2" -v w="$3" -v hz="$CLK_TCK" -v secs="$4" -v cpus="$(nproc)" 'BEGIN {
    split(w, t, " "); wrk = 0
    for (i = 1; i <= 2; i++) { m = t[i]; sub(/m.*/, "", m); x = t[i]; sub(/^[0-9]+m/, "", x); sub(/s$/, "", x); wrk += m * 60 + x }
    r = (b - o - wrk * hz) / (secs * hz * cpus); printf "%.3f", r < 0 ? 0 : r }'
}

# Other people compile on this machine: watch_compilers FILE starts, in the background
# ($! is its PID, for the caller to stop), a loop that appends "UNIX-SECONDS COUNT" of the
# compilers running to FILE once a second, so that a run they disturbed can be told apart.
watch_compilers() {
  (
    while sleep 1; do
      n=0
      for p in rustc cc1 cc1plus rust-lld ld.lld compile link; do n=$((n + $(pgrep -cx "$p" || true))); done
      echo "$(date +%s) $n"
    done
  ) >"$1" 2>/dev/null &
}

# disturbed FILE T0 T1 OTHERS MAX: 1 when watch_compilers' FILE saw a compiler between the
# unix seconds T0 and T1, or OTHERS (the share of the machine's CPUs that other processes
# used) is over MAX; else 0.
disturbed() {
  awk -v a="$2" -v b="$3" -v o="$4" -v max="$5" \
    '$1 >= a && $1 <= b && $2 > 0 {d = 1} END {print (d || o > max) ? 1 : 0}' "$1"
}

# Puts the sidecar to measure at DIR/rigging-sidecar and sets $measured to what it is, for
# the report: a copy of $RIGGING_BIN when set (built elsewhere, e.g. from `git archive` of
# a commit; $RIGGING_COMMIT names it), else of a fresh build of what the image ships
# (release, static musl). A copy, because the tree's binary may be rebuilt while a
# benchmark runs.
sidecar_binary() {
  if [[ -n ${RIGGING_BIN:-} ]]; then
    cp "$RIGGING_BIN" "$1/rigging-sidecar"
    measured="binary $RIGGING_BIN (${RIGGING_COMMIT:-commit not given: set RIGGING_COMMIT})"
  else
    local target=x86_64-unknown-linux-musl
    install_apt musl-tools >&2
    install_musl_target >&2
    printf 'building rigging-sidecar (release, %s)\n' "$target" >&2
    cargo build --release --locked -q --target "$target" -p rigging-sidecar
    cp "${CARGO_TARGET_DIR:-target}/$target/release/rigging-sidecar" "$1/rigging-sidecar"
    measured="working tree at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') (release, $target)"
    git diff --quiet HEAD -- sidecars crds Cargo.lock 2>/dev/null || measured+=" with uncommitted changes"
  fi
}

# perf_profile PID OUT_DIR LOAD_CMD…: a perf profile (cpu-clock, DWARF call graphs) of
# process PID while LOAD_CMD runs, written to OUT_DIR and broken down by function and by
# crate with profile_breakdown.py, whose summary goes to stderr. Needs linux-perf.
perf_profile() {
  local pid=$1 out=$2 perf_pid
  shift 2
  mkdir -p "$out"
  perf record -q -e cpu-clock -F 1000 --call-graph dwarf,8192 -p "$pid" -o "$out/perf.data" \
    >"$out/perf.log" 2>&1 &
  perf_pid=$!
  sleep 0.5
  "$@" >"$out/load.log" 2>&1 || true
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" || true
  python3 "$(dirname "${BASH_SOURCE[0]}")/profile_breakdown.py" perf "$out/perf.data" "$out" >&2
  echo "profile written to $out (perf.data, self.txt, children.txt, callgraph.txt, by-crate.txt)" >&2
}

# Waits until something accepts TCP connections on HOST:PORT (up to 10 s).
wait_port() {
  local host=$1 port=$2 i
  for i in $(seq 1 1000); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.01
  done
  echo "nothing listens on $host:$port" >&2
  return 1
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# N ReplicatedServices in namespace NS, every other one with TLS, autoscaling, session
# affinity and a PDB: the workload of render.sh and operator.sh.
replicated_services() {
  local n=$1 ns=$2 i
  for ((i = 0; i < n; i++)); do
    cat <<YAML
---
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata:
  name: svc-$i
  namespace: $ns
spec:
  port: 8080
  template:
    spec:
      containers:
        - name: app
          image: nginxinc/nginx-unprivileged:1.27-alpine
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: 8080}}
          resources: {requests: {cpu: 100m, memory: 64Mi}}
YAML
    if ((i % 2)); then
      cat <<YAML
  service: {port: 443, sessionAffinity: ClientIP}
  autoscaling: {minReplicas: 2, maxReplicas: 10}
  disruptionBudget: {minAvailable: 1}
  tls: {secretName: svc-$i-tls}
YAML
    fi
  done
}
