#!/usr/bin/env bash
# Benchmark of a WorkQueue of many items on a real control plane (e2e/controlplane --no-node:
# etcd, kube-apiserver, kube-controller-manager; no kubelet), with a trivial worker:
#
#   scripts/bench/work_queue.sh                 queues of 1,000 and 10,000 items (5-15 min)
#   SIZES="1000" PARALLELISM=100 scripts/bench/work_queue.sh
#   OPERATOR=path/to/rigging-operator scripts/bench/work_queue.sh   a binary already built
#   KEEP=1 scripts/bench/work_queue.sh          keeps the work directory (operator log)
#   NODE=1 SIZES=200 scripts/bench/work_queue.sh   on the kit with its node: real pods
#                                               (the stand-in images), no stand-in kubelet
#   STOP_AFTER=300 scripts/bench/work_queue.sh  reports each queue as it is after 300 s,
#                                               finished or not (the kit completes about
#                                               3.3 items a second: 10,000 take ≈ 50 min)
#
# Without a node a pod stays Pending, so a stand-in plays the kubelet: it watches the
# queue's pods and marks each one Succeeded through the pod status subresource (one PATCH,
# exit code 0), and the Job controller completes its Job as it would after a real run. For
# each size N, one WorkQueue of N items (`item-00000` …, parallelism PARALLELISM (200),
# ttlSecondsAfterFinished TTL (0): finished Jobs are deleted once their results are
# recorded) goes in with `kubectl apply --server-side` (a client-side apply would store the
# list a third time, in an annotation limited to 256 KiB). Measured:
# - seconds from the apply to status.succeeded == N (all-succeeded);
# - the operator's CPU time (/proc/PID/stat) over that span, and its peak RSS (VmHWM) at
#   the end; one operator process per size, so that each peak is its own;
# - the largest object the operator writes: the WorkQueue's status (as JSON), the largest
#   Job and the largest results ConfigMap (each as the API server returns it, with
#   metadata and managedFields); and the WorkQueue as stored, which the user wrote;
# - bytes the operator sent per item: request bodies of Job creates, ConfigMap creates and
#   applies, and WorkQueue status patches, from the API server's
#   apiserver_request_body_size_bytes (no other client writes those).
#
# Goals (issue 21): time linear in N; RSS < 150 MiB at 10,000; no object over 256 KiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

SIZES=${SIZES:-1000 10000}
PARALLELISM=${PARALLELISM:-200}
TTL=${TTL:-0}
TIMEOUT=${TIMEOUT:-1800}
STOP_AFTER=${STOP_AFTER:-0}
NODE=${NODE:-0}
NS=bench

log() { printf 'work_queue.sh: %s\n' "$*" >&2; }

install_apt curl python3
work=$(mktemp -d)
operator_binary "$work"
op=
completer=
cleanup() {
  stop_pid "$completer"
  stop_pid "$op"
  e2e/controlplane/down.sh "$work/cp" >/dev/null 2>&1 || true
  if [[ ${KEEP:-0} == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'log "failed; last lines of the operator log:"; tail -n 20 "$work"/operator-*.log >&2 || true' ERR

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

if ((NODE)); then
  start_kit "$work"
  e2e/images/build.sh --import "$work/cp" standins >/dev/null
else
  start_kit "$work" --no-node
fi

# The poller and the table; the stand-in kubelet and the API server's connections are
# scripts/bench/kit_api.py's.
cat >"$work/bench.py" <<'PY'
import json, os, sys, time

sys.path.insert(0, os.environ["BENCH_DIR"])
from kit_api import connect, request

ns = os.environ["NS"]

def body_bytes(conn):
    """Request bodies the API server received, by (resource, verb), from its metrics."""
    _, text = request(conn, "GET", "/metrics")
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("apiserver_request_body_size_bytes_sum{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
            key = (labels["resource"].strip('"'), labels["verb"].strip('"'))
            out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out

def run(n, timeout, stop_after):
    """Waits for all-succeeded (or `stop_after` seconds, when not 0); prints seconds, then
    the sizes and bytes as JSON."""
    conn = connect()
    start = float(os.environ["START"])
    before = json.loads(os.environ["BEFORE"])
    last = 0
    while True:
        status, body = request(conn, "GET", f"/apis/rigging.dev/v1alpha1/namespaces/{ns}/workqueues/q{n}")
        wq = json.loads(body)
        s = wq.get("status") or {}
        if s.get("succeeded") == n and s.get("observedGeneration") == wq["metadata"]["generation"]:
            break
        if stop_after and time.time() - start > stop_after:
            break
        if time.time() - start > timeout:
            sys.exit(f"q{n}: not all succeeded after {timeout} s: {json.dumps(s)[:500]}")
        if time.time() - last > 15:
            print(f"  {time.time() - start:6.1f} s: pending {s.get('pending')}, running {s.get('running')}, "
                  f"succeeded {s.get('succeeded')}, failed {s.get('failed')}", file=sys.stderr)
            last = time.time()
        time.sleep(0.5)
    elapsed = time.time() - start
    after = body_bytes(conn)
    delta = lambda r, v: after.get((r, v), 0) - before.get(f"{r} {v}", 0)
    written = {f"{r} {v}": delta(r, v) for r, v in [("jobs", "create"), ("configmaps", "create"),
               ("configmaps", "apply"), ("configmaps", "patch"), ("workqueues", "patch"), ("workqueues", "apply")]}
    # The operator's status writes are the WorkQueue patches after the user's own apply.
    written["workqueues patch"] -= float(os.environ["APPLY_BYTES"])
    _, cms = request(conn, "GET", f"/api/v1/namespaces/{ns}/configmaps?labelSelector=rigging.dev%2Fwork-queue%3Dq{n}")
    cms = json.loads(cms)["items"]
    sizes = {cm["metadata"]["name"]: len(json.dumps(cm, separators=(",", ":"))) for cm in cms}
    results = {k: v for k, v in sizes.items() if "-results-" in k}
    _, jobs = request(conn, "GET", f"/apis/batch/v1/namespaces/{ns}/jobs?labelSelector=rigging.dev%2Fwork-queue%3Dq{n}")
    jobs = json.loads(jobs)["items"]
    print(json.dumps({
        "n": n, "seconds": elapsed,
        "status_bytes": len(json.dumps(wq.get("status"), separators=(",", ":"))),
        "object_bytes": len(json.dumps(wq, separators=(",", ":"))),
        "succeeded": s.get("succeeded", 0),
        "job_max": max((len(json.dumps(j, separators=(",", ":"))) for j in jobs), default=0),
        "other_cms": sorted(k for k in sizes if "-results-" not in k),
        "results_cms": len(results), "results_cm_max": max(results.values(), default=0),
        "written": written, "recorded": (s.get("results") or {}).get("recorded"),
    }))

def snapshot():
    print(json.dumps({f"{r} {v}": b for (r, v), b in body_bytes(connect()).items()}))

def table():
    rows = [json.loads(l) for l in sys.stdin if l.strip()]
    e = os.environ
    kib = lambda b: f"{b / 1024:.1f} KiB"
    print(f"Run {e['DATE']}, `scripts/bench/work_queue.sh` (parallelism {e['PARALLELISM']}, "
          f"ttlSecondsAfterFinished {e['TTL']}, {e['PODS']}), {e['NPROC']} CPUs; "
          f"load average {e['LOAD']} at the start, {e['LOAD_END']} at the end.")
    print()
    print("| items | apply → all succeeded | per item | operator CPU | operator peak RSS | status | WorkQueue as stored "
          "| largest Job | results ConfigMaps (largest) | other ConfigMaps | operator bytes written per item |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["n"]
        written = sum(r["written"].values())
        done = f"{r['seconds']:.1f} s" if r["succeeded"] == n else f"stopped at {r['seconds']:.0f} s, {r['succeeded']:,} succeeded"
        print(f"| {n:,} | {done} | {1000 * r['seconds'] / max(r['succeeded'], 1):.1f} ms | {r['cpu_s']:.1f} s "
              f"| {r['hwm_kib'] / 1024:.1f} MiB | {kib(r['status_bytes'])} | {kib(r['object_bytes'])} "
              f"| {kib(r['job_max'])} | {r['results_cms']} ({kib(r['results_cm_max'])}) "
              f"| {', '.join(r['other_cms']) or 'none'} "
              f"| {written / max(r['succeeded'], 1):,.0f} B |")
    print()
    for r in rows:
        print(f"Bytes the operator sent for {r['n']:,} items, by request: " +
              ", ".join(f"{k} {v / 1024:,.0f} KiB" for k, v in r["written"].items() if v) + ".")

cmd = sys.argv[1]
if cmd == "table":
    table()
elif cmd == "run":
    run(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
elif cmd == "metrics":
    snapshot()
PY
SERVER=$("${kubectl[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
export WORK=$work NS SERVER BENCH_DIR=$PWD/scripts/bench
bench() { python3 "$work/bench.py" "$@"; }

"${kubectl[@]}" create namespace "$NS" >/dev/null
if ((!NODE)); then
  python3 scripts/bench/kit_api.py complete 2>"$work/completer.log" &
  completer=$!
fi

queue() { # the WorkQueue of N items, as YAML
  local n=$1 i
  cat <<YAML
apiVersion: rigging.dev/v1alpha1
kind: WorkQueue
metadata: {name: q$n, namespace: $NS}
spec:
  parallelism: $PARALLELISM
  retries: 0
  ttlSecondsAfterFinished: $TTL
  worker:
    template:
      spec:
        containers: [{name: worker, image: busybox:1.36, command: [sh, -c, 'cat "\$WORK_ITEM_FILE"']}]
  items:
YAML
  for ((i = 0; i < n; i++)); do printf '    - item-%05d\n' "$i"; done
}

rows=()
for n in $SIZES; do
  metrics_port=$(free_port)
  "$work/rigging-operator" run --no-leader-election --namespace "$NS" \
    --metrics-addr "127.0.0.1:$metrics_port" 2>"$work/operator-$n.log" &
  op=$!
  wait_port 127.0.0.1 "$metrics_port"
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  queue "$n" >"$work/q$n.yaml"
  before=$(bench metrics)
  ticks0=$(cpu_ticks "$op")
  log "q$n: applying $n items"
  start=$(date +%s.%N)
  "${kubectl[@]}" apply --server-side -f "$work/q$n.yaml" >/dev/null
  apply_bytes=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(b.get("workqueues patch",0)+b.get("workqueues apply",0)-a.get("workqueues patch",0)-a.get("workqueues apply",0))' \
    "$before" "$(bench metrics)")
  result=$(START=$start BEFORE=$before APPLY_BYTES=$apply_bytes bench run "$n" "$TIMEOUT" "$STOP_AFTER")
  cpu=$(calc "($(cpu_ticks "$op") - $ticks0) / $CLK_TCK")
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$op/status")
  rows+=("$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["cpu_s"]=float(sys.argv[2]); r["hwm_kib"]=int(sys.argv[3]); print(json.dumps(r))' "$result" "$cpu" "$hwm")")
  log "q$n: done in $(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["seconds"], 1))' "$result") s"
  kill "$op"
  wait "$op" 2>/dev/null || true
  op=
done

pods="a stand-in completing each pod"
((NODE)) && pods="real pods on the kit's node"
printf '%s\n' "${rows[@]}" | DATE=$(date -u '+%Y-%m-%d %H:%M UTC') NPROC=$(nproc) PODS=$pods \
  LOAD=$load_at_start LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg) PARALLELISM=$PARALLELISM TTL=$TTL \
  bench table
