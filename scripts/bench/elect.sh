#!/usr/bin/env bash
# Election sidecar benchmark: how long an election is without a leader when its leader
# goes, for `rigging-sidecar elect` beside the reference electors, in one run, on the
# same backends, alternating A B A B:
#
#   - Leases on a real API server (the control-plane kit, e2e/controlplane/up.sh): Rigging
#     and client-go's leader election (k8s.io/client-go/tools/leaderelection, LeaseLock);
#   - etcd, a 3-member cluster of Debian's etcd-server on 127.0.0.1 (data in /dev/shm):
#     Rigging and etcd's own election (go.etcd.io/etcd/client/v3/concurrency).
#
#   scripts/bench/elect.sh
#
# Three electors per election. Each round stops the leader — SIGKILL (failover: the
# others must wait out the lease) or SIGTERM (handoff: the leader releases) — and times,
# from the signal, until a surviving elector's `GET /leader` says it leads, and until
# every survivor names it; the stopped one is then started again, as a follower. Same
# timings everywhere: lease duration 4s, renew deadline 3s, retry period 500ms (etcd's
# session TTL is the lease duration). The reference electors are built from
# scripts/bench/elect-reference/ against the kit's Go module graph (no download).
#
# Prints a markdown table: per backend, elector and signal, the median, maximum and
# minimum time to a new leader, and to every survivor naming it, over ROUNDS rounds.
# Knobs (environment): ROUNDS (20), RIGGING_KUBECONFIG (use that cluster instead of
# starting the kit; kubectl must then be on PATH). About 9 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

ROUNDS=${ROUNDS:-20}
LEASE_DURATION=4s
RENEW_DEADLINE=3s
RETRY_PERIOD=500ms

log() { printf '%s\n' "$*" >&2; }

install_apt etcd-server curl python3 openssl
command -v go >/dev/null || { log "go is needed for the reference electors (and the kit)"; exit 1; }
cargo build --release -p rigging-sidecar >&2
BIN=$PWD/target/release/rigging-sidecar

work=$(mktemp -d)
shm=$(mktemp -d /dev/shm/rigging-bench-elect.XXXXXX)
controlplane=
cleanup() {
  stop_started $? "$work"
  [[ -n $controlplane ]] && bash e2e/controlplane/down.sh "$controlplane" >/dev/null 2>&1
  rm -rf "$work" "$shm"
}
trap cleanup EXIT

# ---- the reference electors, built against the kit's module graph -------------------
kit_bin=$(e2e/controlplane/build.sh)
kit_src=$(dirname "$kit_bin")/src
mkdir -p "$work/reference"
sed 's|^module .*|module rigging.dev/bench/elect-reference|' "$kit_src/go.mod" >"$work/reference/go.mod"
cp "$kit_src/go.sum" scripts/bench/elect-reference/main.go "$work/reference/"
log "building the reference electors (client-go $(sed -n 's|^[[:space:]]*k8s.io/client-go => k8s.io/client-go \(.*\)$|\1|p' "$kit_src/go.mod"))"
(cd "$work/reference" && GOPROXY=off GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$work/elect-reference" .)

# ---- Leases: the control-plane kit --------------------------------------------------
if [[ -n ${RIGGING_KUBECONFIG:-} ]]; then
  kubeconfig=$RIGGING_KUBECONFIG
  kubectl=(kubectl --kubeconfig "$kubeconfig")
else
  controlplane=$work/controlplane
  bash e2e/controlplane/up.sh "$controlplane" >&2
  kubeconfig=$controlplane/kubeconfig
  kubectl=("$controlplane/bin/kubectl" --kubeconfig "$kubeconfig")
fi
namespace=rigging-bench-elect-$$
"${kubectl[@]}" create namespace "$namespace" >/dev/null
kubernetes=$("${kubectl[@]}" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')

# ---- etcd: three members on 127.0.0.1 -------------------------------------------------
members=()
cluster=
for i in 1 2 3; do
  members+=("m$i $(free_port) $(free_port)")
done
for m in "${members[@]}"; do
  read -r name _ peer <<<"$m"
  cluster+="${cluster:+,}$name=http://127.0.0.1:$peer"
done
endpoints=()
for m in "${members[@]}"; do
  read -r name client peer <<<"$m"
  etcd --name "$name" --data-dir "$shm/$name" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token rigging-bench \
    --log-level error --logger zap >"$work/etcd-$name.log" 2>&1 &
  pids+=($!)
  endpoints+=("http://127.0.0.1:$client")
done
for endpoint in "${endpoints[@]}"; do
  for _ in $(seq 1 300); do
    curl -fsS "$endpoint/health" 2>/dev/null | grep -q '"health":"true"' && break
    sleep 0.1
  done
  curl -fsS "$endpoint/health" | grep -q '"health":"true"' || { log "etcd at $endpoint is not healthy"; exit 1; }
done
etcd_version=$(etcd --version | sed -n 's/^etcd Version: //p')

log "electing: Leases on Kubernetes $kubernetes, etcd $etcd_version (3 members); $ROUNDS rounds per signal"
BIN=$BIN REFERENCE=$work/elect-reference KUBECONFIG=$kubeconfig NAMESPACE=$namespace \
  ENDPOINTS=$(
    IFS=,
    echo "${endpoints[*]}"
  ) ROUNDS=$ROUNDS WORK=$work \
  LEASE_DURATION=$LEASE_DURATION RENEW_DEADLINE=$RENEW_DEADLINE RETRY_PERIOD=$RETRY_PERIOD \
  KUBERNETES=$kubernetes ETCD_VERSION=$etcd_version \
  python3 - <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time, urllib.request

env = os.environ
timing = ["--lease-duration", env["LEASE_DURATION"], "--renew-deadline", env["RENEW_DEADLINE"],
          "--retry-period", env["RETRY_PERIOD"]]
endpoints = env["ENDPOINTS"].split(",")
# Identity and namespace come from the flags alone.
child_env = {k: v for k, v in env.items() if k not in ("POD_NAME", "POD_NAMESPACE")}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Elector:
    """One elector process of a group; `argv(identity, admin)` builds its command line."""

    def __init__(self, group, identity):
        self.group, self.identity, self.proc, self.admin = group, identity, None, None
        self.start()

    def start(self):
        self.admin = f"127.0.0.1:{free_port()}"
        out = open(os.path.join(env["WORK"], f"{self.group.name}-{self.identity}.log"), "ab")
        self.proc = subprocess.Popen(self.group.argv(self.identity, self.admin), stdout=out,
                                     stderr=out, env=child_env)

    def view(self):
        try:
            with urllib.request.urlopen(f"http://{self.admin}/leader", timeout=0.3) as r:
                return json.load(r)
        except Exception:
            return None


class Group:
    def __init__(self, name, backend, elector, argv):
        self.name, self.backend, self.elector, self.argv = name, backend, elector, argv
        self.electors = [Elector(self, f"{name}-{i}") for i in range(3)]
        self.results = {"SIGKILL": [], "SIGTERM": []}

    def steady(self, within=60.0):
        """The leader once exactly one elector leads and every other one names it."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            views = [e.view() for e in self.electors]
            if all(views):
                leaders = [e for e, v in zip(self.electors, views) if v.get("isLeader")]
                if len(leaders) == 1 and all(v.get("leader") == leaders[0].identity for v in views):
                    return leaders[0]
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: no steady leader within {within}s")

    def round(self, sig):
        old = self.steady()
        survivors = [e for e in self.electors if e is not old]
        t0 = time.monotonic()
        old.proc.send_signal(sig)
        new, t_new, t_all = None, None, None
        while t_all is None:
            now = time.monotonic()
            if now - t0 > 60:
                raise SystemExit(f"{self.name}: no new leader 60s after {sig.name}")
            views = [(e, e.view()) for e in survivors]
            if new is None:
                for e, v in views:
                    if v and v.get("isLeader"):
                        new, t_new = e, now
            if new is not None and all(v and v.get("leader") == new.identity for _, v in views):
                t_all = now
            time.sleep(0.01)
        code = old.proc.wait(timeout=30)
        if sig == signal.SIGTERM and code != 0:
            raise SystemExit(f"{self.name}: {old.identity} exited {code} on SIGTERM")
        self.results[sig.name].append((t_new - t0, t_all - t0))
        old.start()


def rigging(backend_args):
    return lambda identity, admin: [env["BIN"], "elect", *backend_args, "--election", "bench",
                                    "--identity", identity, "--admin", admin, *timing]


def reference(backend_args):
    return lambda identity, admin: [env["REFERENCE"], *backend_args, "-election", "bench-reference",
                                    "-identity", identity, "-admin", admin,
                                    "-lease-duration", env["LEASE_DURATION"],
                                    "-renew-deadline", env["RENEW_DEADLINE"],
                                    "-retry-period", env["RETRY_PERIOD"]]


lease = ["--backend", "lease", "--namespace", env["NAMESPACE"]]
etcd = ["--backend", "etcd"] + [a for e in endpoints for a in ("--etcd-endpoint", e)]
groups = [
    Group("rigging-lease", "Leases", "rigging-sidecar elect", rigging(lease)),
    Group("client-go", "Leases", "client-go leaderelection", reference(["-backend", "lease", "-namespace", env["NAMESPACE"]])),
    Group("rigging-etcd", "etcd", "rigging-sidecar elect", rigging(etcd)),
    Group("etcd-concurrency", "etcd", "etcd concurrency.Election", reference(["-backend", "etcd", "-etcd-endpoints", env["ENDPOINTS"]])),
]
try:
    rounds = int(env["ROUNDS"])
    for sig in (signal.SIGKILL, signal.SIGTERM):
        for r in range(rounds):
            for g in groups:
                g.round(sig)
            print(f"  {sig.name} round {r + 1}/{rounds}", file=sys.stderr, flush=True)
finally:
    for g in groups:
        for e in g.electors:
            if e.proc.poll() is None:
                e.proc.kill()
                e.proc.wait()


def ms(seconds):
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


print(f"Lease duration {env['LEASE_DURATION']}, renew deadline {env['RENEW_DEADLINE']}, retry period "
      f"{env['RETRY_PERIOD']}; 3 electors per election; Kubernetes {env['KUBERNETES']} (the kit), etcd "
      f"{env['ETCD_VERSION']} (3 members).\n")
print("| backend | elector | leader stopped by | rounds | new leader: median | max | min | named by every survivor: median | max | vs reference (median) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for sig in ("SIGKILL", "SIGTERM"):
    for i, g in enumerate(groups):
        new = [n for n, _ in g.results[sig]]
        every = [a for _, a in g.results[sig]]
        ratio = "—"
        if g.elector.startswith("rigging"):
            ref = statistics.median(n for n, _ in groups[i + 1].results[sig])
            ratio = f"{statistics.median(new) / ref:.2f}×"
        print(f"| {g.backend} | {g.elector} | {sig} | {len(new)} | {ms(statistics.median(new))} | {ms(max(new))} | "
              f"{ms(min(new))} | {ms(statistics.median(every))} | {ms(max(every))} | {ratio} |")
PY
