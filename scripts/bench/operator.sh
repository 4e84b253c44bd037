#!/usr/bin/env bash
# Benchmark of rigging-operator on a real control plane (e2e/controlplane: etcd,
# kube-apiserver, kube-controller-manager; no kubelet, so pods stay Pending):
#
#   scripts/bench/operator.sh            prints a markdown table (5 to 10 minutes)
#   N=200 STEADY=30 scripts/bench/operator.sh
#   KEEP=1 scripts/bench/operator.sh     keeps the work directory (audit log, operator log)
#   OPERATOR=path/to/rigging-operator scripts/bench/operator.sh   a binary already built
#
# 0. Baseline: before the operator starts, the same apply into another namespace, which no
#    operator watches: what kubectl and the API server take for the objects alone.
# 1. Convergence: N (1,000) ReplicatedServices, every other one with TLS, autoscaling,
#    session affinity and a PDB, go in with one `kubectl apply --server-side`. From the
#    moment that command starts, a poller (its own User-Agent, metadata-only lists for the
#    children) checks every 0.5 s that every ReplicatedService has
#    status.observedGeneration == metadata.generation and its three conditions, and that
#    every expected Deployment, Service, PDB and HPA exists. Measured: seconds until both
#    hold, the operator's API requests by verb (from the API server's audit log,
#    CONTROLPLANE_AUDIT_LOG=1; the operator's requests carry the User-Agent
#    rigging-operator/<version>), its CPU time (/proc/PID/stat) and its peak RSS
#    (VmHWM). The kit's service range holds only 253 ClusterIPs, so the script first adds
#    a ServiceCIDR of 4,094 more. No convergence in TIMEOUT (300) seconds fails the run.
# 2. Settling: after convergence the operator still follows what kube-controller-manager
#    does (the HPAs scale their Deployments to minReplicas, Deployment status fills in), so
#    the script waits until the operator has written nothing for QUIET (10) seconds (at
#    most SETTLE_LIMIT, 420), and reports when its last write came.
# 3. Steady state, with --resync-period RESYNC (5s), for STEADY (60) seconds: the
#    resourceVersion of every ReplicatedService and child before and after, the operator's
#    requests and reconciliations (/metrics) in that window. Every object whose
#    resourceVersion moved is attributed, from the audit log, to whoever wrote it in the
#    window (the operator, or a controller of kube-controller-manager by its User-Agent),
#    and cross-checked with the managers whose managedFields entry changed.
#
# Goals (issue 21), beside the apply alone: N = 1,000 converged in < 10 s, at most 1.2
# status writes per ReplicatedService from the apply until the operator settles, peak RSS
# < 64 MiB, and no object changed by the operator at steady state.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

N=${N:-1000}
RESYNC=${RESYNC:-5s}
STEADY=${STEADY:-60}
QUIET=${QUIET:-10}
TIMEOUT=${TIMEOUT:-300}
SETTLE_LIMIT=${SETTLE_LIMIT:-420}
NS=bench

log() { printf 'operator.sh: %s\n' "$*" >&2; }

install_apt curl python3
work=$(mktemp -d)
operator_binary "$work"
op=
sampler=
cleanup() {
  stop_pid "$sampler"
  stop_pid "$op"
  e2e/controlplane/down.sh "$work/cp" >/dev/null 2>&1 || true
  if [[ ${KEEP:-0} == 1 ]]; then log "kept $work (audit log: $work/cp/logs/audit.log)"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'log "failed; last lines of the operator log:"; tail -n 20 "$work/operator.log" >&2 || true' ERR

compilers() { # compiler processes running now (rustc, cc, Go's compile)
  local c total=0
  for c in rustc cc1 cc1plus compile; do total=$((total + $(pgrep -c -x "$c" || true))); done
  echo "$total"
}
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
# Was the machine busy? Compiler processes, sampled every 2 s for the whole run.
while :; do compilers; sleep 2; done >"$work/compilers" &
sampler=$!

CONTROLPLANE_AUDIT_LOG=1 start_kit "$work" --no-node
"${kubectl[@]}" create namespace "$NS" >/dev/null
# The kit's service range (10.0.0.0/24) holds 253 Services; N ReplicatedServices need N.
# A second ServiceCIDR (networking.k8s.io/v1) adds 4,094 ClusterIPs without a restart.
"${kubectl[@]}" apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: rigging-bench}
spec: {cidrs: [10.0.16.0/20]}
YAML
wait_condition servicecidr/rigging-bench Ready

replicated_services "$N" "$NS" >"$work/rs.yaml"

# The poller, the audit-log counts, the snapshots and the table.
cat >"$work/bench.py" <<'PY'
import collections, datetime, http.client, json, os, ssl, sys, time, urllib.parse

work, ns, n = os.environ["WORK"], os.environ["NS"], int(os.environ["N"])
results_path = f"{work}/results.json"
audit_path = f"{work}/cp/logs/audit.log"
server = urllib.parse.urlparse(os.environ["SERVER"])
tls = ssl.create_default_context(cafile=f"{work}/cp/pki/ca.crt")
tls.load_cert_chain(f"{work}/cp/pki/admin.crt", f"{work}/cp/pki/admin.key")
conn = None
KINDS = {  # kind: (list path, expected names)
    "ReplicatedService": (f"/apis/rigging.dev/v1alpha1/namespaces/{ns}/replicatedservices", range(n)),
    "Deployment": (f"/apis/apps/v1/namespaces/{ns}/deployments", range(n)),
    "Service": (f"/api/v1/namespaces/{ns}/services", range(n)),
    "PodDisruptionBudget": (f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", range(1, n, 2)),
    "HorizontalPodAutoscaler": (f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers", range(1, n, 2)),
}
METADATA = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"

def results():
    try:
        return json.load(open(results_path))
    except FileNotFoundError:
        return {}

def save(**kw):
    r = results()
    r.update(kw)
    json.dump(r, open(results_path, "w"))

def get(path, accept="application/json"):
    global conn
    for attempt in (1, 2):
        if conn is None:
            conn = http.client.HTTPSConnection(server.hostname, server.port, context=tls, timeout=30)
        try:
            conn.request("GET", path, headers={"Accept": accept, "User-Agent": "rigging-bench-poller"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
            return json.loads(body)["items"]
        except (http.client.HTTPException, OSError):
            conn = None
            if attempt == 2:
                raise

def names(kind, metadata_only=True):
    path, _ = KINDS[kind]
    return get(path, METADATA if metadata_only else "application/json")

def converge(start, timeout):
    """Polls every 0.5 s until every status is current and every child exists."""
    polls, last_report = 0, 0
    while True:
        polls += 1
        missing = {}
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
            have = {o["metadata"]["name"] for o in names(kind)}
            missing[kind] = sum(f"svc-{i}" not in have for i in KINDS[kind][1])
        stale = "not checked yet"
        if not any(missing.values()):
            items = names("ReplicatedService", metadata_only=False)
            stale = n - sum(
                (o.get("status") or {}).get("observedGeneration") == o["metadata"].get("generation")
                and {"Ready", "Progressing", "Degraded"} <= {c["type"] for c in (o.get("status") or {}).get("conditions", [])}
                for o in items)
        now = time.time()
        if stale == 0:
            save(converge_s=now - start, converge_end=now, polls=polls)
            return
        if now - start > timeout:
            sys.exit(f"not converged after {timeout} s: children missing {missing}, stale statuses {stale}")
        if now - last_report >= 10:
            print(f"  {now - start:5.1f} s: children missing {missing}, stale statuses {stale}", file=sys.stderr)
            last_report = now
        time.sleep(0.5)

def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

def is_operator(e):
    return (e.get("userAgent") or "").startswith("rigging-operator/")

def who(e):
    if is_operator(e):
        return "operator"
    ua = e.get("userAgent") or "-"
    prog = ua.split("/")[0]
    return f"{prog} ({ua.rsplit('/', 1)[-1]})" if prog == "kube-controller-manager" else prog

WRITES = {"create", "update", "patch", "delete", "deletecollection"}

def audit(since, until):
    """Every request received in [since, until], once (a watch logs two stages)."""
    seen = set()
    with open(audit_path) as f:
        for line in f:
            e = json.loads(line)
            if e["auditID"] in seen:
                continue
            t = ts(e["requestReceivedTimestamp"])
            if since <= t <= until:
                seen.add(e["auditID"])
                yield e

def requests(since, until):
    verbs, writes, agents = collections.Counter(), collections.Counter(), collections.Counter()
    for e in audit(since, until):
        agents[who(e)] += 1
        if is_operator(e):
            verbs[e["verb"]] += 1
            if e["verb"] in WRITES:
                ref = e.get("objectRef") or {}
                sub = ref.get("subresource")
                writes[f'{e["verb"]} {ref.get("resource")}{"/" + sub if sub else ""}'] += 1
    return dict(verbs), dict(writes), dict(agents)

def settle(quiet, limit, start):
    """Waits until the operator has sent no write since `start` for `quiet` seconds (at
    most `limit`)."""
    last_write, offset, writes, by = start, 0, 0, collections.Counter()
    while True:
        with open(audit_path, "rb") as f:
            f.seek(offset)
            for line in f:
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                e = json.loads(line)
                t = ts(e["requestReceivedTimestamp"])
                if is_operator(e) and e["verb"] in WRITES and e["stage"] == "ResponseComplete" and t > start:
                    writes += 1
                    last_write = max(last_write, t)
                    ref = e.get("objectRef") or {}
                    by[ref.get("resource", "?") + ("/" + ref["subresource"] if ref.get("subresource") else "")] += 1
        now = time.time()
        if now - last_write >= quiet or now - start >= limit:
            save(settle_s=now - start, settle_last=last_write - start, settle_writes=writes, settle_quiet=now - last_write >= quiet, settle_by=dict(by))
            return
        time.sleep(1)

def snapshot(out):
    snap = {}
    for kind in KINDS:
        for o in names(kind):
            m = o["metadata"]
            fields = {f'{mf["manager"]} {mf["operation"]}{" " + mf["subresource"] if mf.get("subresource") else ""}':
                      (mf.get("time"), json.dumps(mf.get("fieldsV1"), sort_keys=True))
                      for mf in m.get("managedFields", [])}
            snap[f'{kind}/{m["name"]}'] = {"rv": m["resourceVersion"], "managers": fields}
    json.dump({"time": time.time(), "objects": snap}, open(out, "w"))

RESOURCE = {"replicatedservices": "ReplicatedService", "deployments": "Deployment", "services": "Service",
            "poddisruptionbudgets": "PodDisruptionBudget", "horizontalpodautoscalers": "HorizontalPodAutoscaler"}

def steady(before, after, metrics_before, metrics_after):
    a, b = json.load(open(before)), json.load(open(after))
    since, until = a["time"], b["time"]
    changed = sorted(k for k, v in b["objects"].items() if a["objects"].get(k, {}).get("rv") != v["rv"])
    changed += sorted(set(a["objects"]) - set(b["objects"]))
    writers = collections.defaultdict(set)
    for e in audit(since, until):
        ref = e.get("objectRef") or {}
        if e["verb"] in WRITES and ref.get("namespace") == ns and ref.get("resource") in RESOURCE:
            writers[f'{RESOURCE[ref["resource"]]}/{ref.get("name")}'].add(
                who(e) + (f' {ref["subresource"]}' if ref.get("subresource") else ""))
    by_writer, by_manager = collections.Counter(), collections.Counter()
    operator_changed = 0
    for k in changed:
        w = writers.get(k, set())
        kind = k.split("/")[0]
        by_writer[f'{kind} by {" + ".join(sorted(w)) or "nobody in the audit log"}'] += 1
        operator_changed += any(x.startswith("operator") for x in w)
        ma, mb = a["objects"].get(k, {}).get("managers", {}), b["objects"].get(k, {}).get("managers", {})
        for mgr in sorted(set(ma) | set(mb)):
            if ma.get(mgr) != mb.get(mgr):
                by_manager[f"{kind}: {mgr}"] += 1
    verbs, writes, agents = requests(since, until)
    def metric(path, name, label=None):
        total = 0.0
        for line in open(path):
            if line.startswith((name + "{", name + " ")) and (label is None or label in line):
                total += float(line.rsplit(" ", 1)[1])
        return total
    recon = metric(metrics_after, "rigging_operator_reconciliations_total") - metric(metrics_before, "rigging_operator_reconciliations_total")
    applied = metric(metrics_after, "rigging_operator_applies_total", 'outcome="applied"') - metric(metrics_before, "rigging_operator_applies_total", 'outcome="applied"')
    unchanged = metric(metrics_after, "rigging_operator_applies_total", 'outcome="unchanged"') - metric(metrics_before, "rigging_operator_applies_total", 'outcome="unchanged"')
    errors = metric(metrics_after, "rigging_operator_reconcile_errors_total") - metric(metrics_before, "rigging_operator_reconcile_errors_total")
    save(steady_s=until - since, steady_objects=len(b["objects"]), steady_changed=len(changed),
         steady_operator_changed=operator_changed, steady_by_writer=dict(by_writer),
         steady_by_manager=dict(by_manager), steady_verbs=verbs, steady_writes=writes,
         steady_agents=agents, steady_reconciliations=recon, steady_applied=applied,
         steady_unchanged=unchanged, steady_errors=errors)

def fmt_verbs(v):
    total = sum(v.values())
    return f"{total}" + (" (" + ", ".join(f"{k} {c}" for k, c in sorted(v.items(), key=lambda x: -x[1])) + ")" if v else "")

def table():
    r = results()
    env = os.environ
    pct = lambda cpu, wall: f"{cpu:.1f} s ({100 * cpu / wall:.0f} % of one CPU)"
    hwm, hwm_conv = r["hwm_kib"] / 1024, r["hwm_conv_kib"] / 1024
    yes = lambda ok: "yes" if ok else "**no**"
    print(f"Run {env['DATE']}, `scripts/bench/operator.sh` (N={n}, `--resync-period {env['RESYNC']}`), "
          f"{env['NPROC']} CPUs, Linux {env['KERNEL']}, Kubernetes {env['K8S']}; load average "
          f"{env['LOAD']} at the start, {env['LOAD_END']} at the end; compilers (rustc, cc1, Go) running "
          f"in {env['COMPILERS']} (one sample every 2 s).")
    print()
    print("| what | figure | goal | met |")
    print("|---|---|---|---|")
    print(f"| `kubectl apply --server-side` of the {n:,} ReplicatedServices alone (before the operator starts, "
          f"into another namespace: no operator, no children) | {r['baseline_s']:.1f} s | — | — |")
    print(f"| {n:,} ReplicatedServices: `kubectl apply --server-side` start → every child exists and every status is current | "
          f"{r['converge_s']:.1f} s (the apply itself {r['apply_s']:.1f} s; converged "
          f"{r['converge_s'] - r['apply_s']:.1f} s after it returned) | < 10 s | {yes(r['converge_s'] < 10)} |")
    print(f"| operator API requests during convergence | {fmt_verbs(r['converge_verbs'])} | — | — |")
    print(f"| … writes, by resource | {', '.join(f'{k} {c}' for k, c in sorted(r['converge_writes'].items()))} | — | — |")
    print(f"| operator CPU during convergence | {pct(r['converge_cpu_s'], r['converge_s'])} | — | — |")
    print("| control plane CPU during convergence | " + ", ".join(
        f"{k[4:]} {pct(v, r['converge_s'])}" for k, v in sorted(r.items()) if k.startswith("cpu_")) + " | — | — |")
    print(f"| operator peak RSS (VmHWM) | {hwm_conv:.1f} MiB at convergence, {hwm:.1f} MiB at the end | < 64 MiB | {yes(hwm < 64)} |")
    quiet = "" if r["settle_quiet"] else f" (not quiet after {r['settle_s']:.0f} s: the limit)"
    print(f"| after convergence: the operator's last write (the script waits until it has written nothing for {env['QUIET']} s) | "
          f"{r['settle_last']:.1f} s later{quiet}; {r['settle_writes']} writes in between"
          + (f" ({', '.join(f'{k} {c}' for k, c in sorted(r['settle_by'].items()))})" if r["settle_by"] else "")
          + " | — | — |")
    status = r["converge_writes"].get("patch replicatedservices/status", 0) + r["settle_by"].get("replicatedservices/status", 0)
    print(f"| status writes per ReplicatedService, from the apply until the operator settled | "
          f"{status / n:.2f} ({status:,} status patches) | ≤ 1.2 | {yes(status / n <= 1.2)} |")
    recon = r["steady_reconciliations"]
    print(f"| steady state, {r['steady_s']:.0f} s: operator reconciliations | {recon:.0f} "
          f"({r['steady_unchanged']:.0f} children found unchanged in the cache, {r['steady_applied']:.0f} applied, "
          f"{r['steady_errors']:.0f} errors) | — | — |")
    print(f"| steady state: operator API requests | {fmt_verbs(r['steady_verbs'])} | — | — |")
    per = f", {1e6 * r['steady_cpu_s'] / recon:.0f} µs per reconciliation" if recon else ""
    print(f"| steady state: operator CPU | {pct(r['steady_cpu_s'], r['steady_s'])}{per} | — | — |")
    print(f"| steady state: objects whose resourceVersion moved, of {r['steady_objects']:,} (ReplicatedServices and children) | "
          f"{r['steady_changed']} | — | — |")
    print(f"| steady state: … of them written by the operator | {r['steady_operator_changed']} | 0 | "
          f"{yes(r['steady_operator_changed'] == 0)} |")
    print()
    if r["steady_by_writer"]:
        print("Objects changed at steady state, by who wrote them (audit log): " +
              "; ".join(f"{k}: {c}" for k, c in sorted(r["steady_by_writer"].items())) + ".")
        print()
        print("managedFields entries that changed: " +
              "; ".join(f"{k}: {c}" for k, c in sorted(r["steady_by_manager"].items())) + ".")
        print()
    for phase, key in (("during convergence", "converge_agents"), ("at steady state", "steady_agents")):
        print(f"Requests {phase} by client (audit log): " +
              ", ".join(f"{k} {c}" for k, c in sorted(r[key].items(), key=lambda x: -x[1])) + ".")
        print()

cmd = sys.argv[1]
if cmd == "converge":
    converge(float(sys.argv[2]), float(sys.argv[3]))
elif cmd == "requests":
    verbs, writes, agents = requests(float(sys.argv[3]), float(sys.argv[4]))
    save(**{f"{sys.argv[2]}_verbs": verbs, f"{sys.argv[2]}_writes": writes, f"{sys.argv[2]}_agents": agents})
elif cmd == "settle":
    settle(float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
elif cmd == "snapshot":
    snapshot(sys.argv[2])
elif cmd == "steady":
    steady(*sys.argv[2:6])
elif cmd == "table":
    table()
elif cmd == "set":
    save(**{k: float(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])})
elif cmd == "get":
    print(json.dumps(results()[sys.argv[2]]))
PY
SERVER=$("${kubectl[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
export WORK=$work NS N SERVER
bench() { python3 "$work/bench.py" "$@"; }

# The apply alone, for scale: the same objects into a namespace no operator watches.
"${kubectl[@]}" create namespace "$NS-baseline" >/dev/null
sed "s/^  namespace: $NS\$/  namespace: $NS-baseline/" "$work/rs.yaml" >"$work/rs-baseline.yaml"
log "applying $N ReplicatedServices with no operator (baseline)"
t=$(date +%s.%N)
"${kubectl[@]}" apply --server-side -f "$work/rs-baseline.yaml" >/dev/null
bench set baseline_s="$(calc "$(date +%s.%N) - $t")"

metrics_port=$(free_port)
"$work/rigging-operator" run --no-leader-election --namespace "$NS" \
  --metrics-addr "127.0.0.1:$metrics_port" --resync-period "$RESYNC" 2>"$work/operator.log" &
op=$!
wait_port 127.0.0.1 "$metrics_port"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null
sleep 2 # every watch open
metrics() { curl -fsS "http://127.0.0.1:$metrics_port/metrics"; }

# 1. Convergence.
log "applying $N ReplicatedServices"
ticks0=$(cpu_ticks "$op")
# The control plane's own CPU over the same span: what the operator competes with.
declare -A cp_pid cp_ticks
while read -r name pid; do cp_pid[$name]=$pid; done <"$work/cp/pids"
for name in "${!cp_pid[@]}"; do cp_ticks[$name]=$(cpu_ticks "${cp_pid[$name]}"); done
start=$(date +%s.%N)
"${kubectl[@]}" apply --server-side -f "$work/rs.yaml" >/dev/null
bench set apply_s="$(calc "$(date +%s.%N) - $start")"
bench converge "$start" "$TIMEOUT"
bench set converge_cpu_s="$(calc "($(cpu_ticks "$op") - $ticks0) / $CLK_TCK")" \
  hwm_conv_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$op/status")"
for name in "${!cp_pid[@]}"; do
  bench set "cpu_$name=$(calc "($(cpu_ticks "${cp_pid[$name]}") - ${cp_ticks[$name]}) / $CLK_TCK")"
done
bench requests converge "$start" "$(bench get converge_end)"
log "converged in $(bench get converge_s) s"

# 2. Settling.
bench settle "$QUIET" "$SETTLE_LIMIT" "$(bench get converge_end)"
log "the operator's last write came $(bench get settle_last) s after convergence"

# 3. Steady state.
metrics >"$work/metrics-before"
bench snapshot "$work/before.json"
ticks=$(cpu_ticks "$op")
log "steady state: watching for $STEADY s"
sleep "$STEADY"
bench set steady_cpu_s="$(calc "($(cpu_ticks "$op") - $ticks) / $CLK_TCK")"
metrics >"$work/metrics-after"
bench snapshot "$work/after.json"
bench set hwm_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$op/status")"
bench steady "$work/before.json" "$work/after.json" "$work/metrics-before" "$work/metrics-after"

busy=$(awk '$1 > 0 {busy++} $1 > max {max = $1}
  END {printf "%d of %d samples, at most %d at once", busy, NR, max}' "$work/compilers")
DATE=$(date -u '+%Y-%m-%d %H:%M UTC') NPROC=$(nproc) KERNEL=$(uname -r) \
  K8S=$("${kubectl[@]}" version -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') \
  LOAD=$load_at_start LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg) COMPILERS=$busy \
  RESYNC=$RESYNC QUIET=$QUIET bench table
