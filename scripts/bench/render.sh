#!/usr/bin/env bash
# Benchmark of rigging-operator: `render` of 1,000 ReplicatedServices (goal < 1 s) and the
# idle RSS of `run` against a fake API server with nothing to reconcile.
#
#   scripts/bench/render.sh            prints a markdown table
#
# There is no reference tool that renders ReplicatedServices, so the table sets the
# 1,000-object render beside a 1-object render (process start, CRD schema build) measured
# in the same run, alternating, by hyperfine.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

install_apt hyperfine curl
cargo build --release -q -p rigging-operator
bin=$PWD/target/release/rigging-operator
work=$(mktemp -d)
cleanup() {
  stop_started $? "$work"
  rm -rf "$work"
}
trap cleanup EXIT

replicated_services 1000 bench >"$work/1000.yaml"
replicated_services 1 bench >"$work/1.yaml"
objects=$("$bin" render -f "$work/1000.yaml" | grep -c '^kind: ')
echo "render of 1,000 ReplicatedServices produces $objects objects" >&2

# hyperfine runs each command's batch in turn; two rounds alternate them A B A B.
for round in 1 2; do
  taskset -c 0 hyperfine --warmup 2 --runs 10 --style none \
    --export-json "$work/render-$round.json" \
    -n "1 ReplicatedService" "$bin render -f $work/1.yaml" \
    -n "1,000 ReplicatedServices" "$bin render -f $work/1000.yaml" >/dev/null
done

# Idle RSS: `run` against a fake API server that lists nothing and holds watches open.
api_port=$(free_port)
metrics_port=$(free_port)
python3 scripts/bench/fake_apiserver.py "$api_port" 2>"$work/apiserver.log" &
pids+=($!)
wait_port 127.0.0.1 "$api_port"
cat >"$work/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "http://127.0.0.1:$api_port"}}]
users: [{name: fake, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: fake, namespace: default}}]
current-context: fake
YAML
KUBECONFIG=$work/kubeconfig taskset -c 0 "$bin" run --no-leader-election \
  --metrics-addr "127.0.0.1:$metrics_port" 2>"$work/operator.log" &
op=$!
pids+=("$op")
wait_port 127.0.0.1 "$metrics_port"
for _ in $(seq 1 100); do
  watches=$(grep -c 'watch=true' "$work/apiserver.log" || true)
  ((watches >= 5)) && break
  sleep 0.1
done
sleep 3 # let allocations settle once every watch is open
rss=$(rss_kib "$op")
curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null

python3 - "$work" "$rss" "$watches" <<'PY'
import json, statistics, sys
work, rss, watches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows, cpu = {}, {}
for r in (1, 2):
    for res in json.load(open(f"{work}/render-{r}.json"))["results"]:
        rows.setdefault(res["command"], []).extend(res["times"])
        cpu.setdefault(res["command"], []).append(res["user"] + res["system"])
one, many = (statistics.median(rows[k]) for k in ("1 ReplicatedService", "1,000 ReplicatedServices"))
cpu_one, cpu_many = (statistics.mean(cpu[k]) for k in ("1 ReplicatedService", "1,000 ReplicatedServices"))
print("| what | median wall time | mean CPU (user+sys) | per ReplicatedService (CPU) |")
print("|---|---|---|---|")
print(f"| `render` of 1 ReplicatedService (start-up + schema) | {one*1000:.1f} ms | {cpu_one*1000:.1f} ms | — |")
print(f"| `render` of 1,000 ReplicatedServices (3,000 objects out) | {many*1000:.1f} ms | {cpu_many*1000:.1f} ms | {(cpu_many-cpu_one)/999*1e6:.0f} µs beyond start-up |")
print(f"| ratio 1,000 / 1 | {many/one:.1f}× | {cpu_many/cpu_one:.1f}× | goal: 1,000 in < 1 s |")
print()
print("| what | VmRSS |")
print("|---|---|")
print(f"| `rigging-operator run --no-leader-election`, idle, {watches} watches open on a fake API server | {rss/1024:.1f} MiB |")
PY
