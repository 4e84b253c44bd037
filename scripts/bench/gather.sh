#!/usr/bin/env bash
# Scatter/gather benchmark: `rigging-sidecar gather` (the root) with hedging off and on,
# beside a plain fan-out written in Go, on the same leaves, in one run, the targets
# alternating within each round.
#
#   scripts/bench/gather.sh                 every case, 3 rounds (about 5 minutes after the
#                                           builds; the musl release build: about 5 minutes)
#   ROUNDS=2 DURATION=5 scripts/bench/gather.sh
#   CASES="rigging rigging-p95" RIGGING_BIN=target/release/rigging-sidecar scripts/bench/gather.sh
#   KEEP=1 scripts/bench/gather.sh          keeps the work directory (logs, latencies, /status)
#
# The leaves: 8 shards × 2 replicas, 16 processes of scripts/bench/gather-reference/ in
# `leaf` mode. Each answers every request after LEAF_SLEEP (1ms; Go's timers make it
# ≈ 1.1 ms) with {"hits":[{"doc":"s3-r1-42","score":42}]}, and with probability STALL
# (0.01) after STALL_FOR (100ms) instead. Each counts the requests it took.
#
# Cases (CASES, in this order by default), each driven at RATE fan-outs a second, open
# loop (a request does not wait for the one before it, so every case gets the same load,
# and the same CPU per fan-out: at these rates a process's CPU per request depends on the
# rate, every request being a wakeup of its own). The 16 leaves share one CPU: at
# RATE=300 they keep it about a third busy, at 500 about 60 %, where one leaf's hiccup
# is every leaf's and hedges stop helping.
#   leaf          one more leaf, with no stall, driven directly at RATE × 8 / 16 requests a
#                 second (what one replica gets in the fan-out cases): the leaves' own
#                 latency, the yardstick of the goals. The reference also reports its leaf
#                 requests' latency with the stalled answers left out: the same yardstick
#                 measured under the full load;
#   rigging       the root, `merge: {concat: {path: hits}}`, deadline DEADLINE (1s),
#                 leafTimeout LEAF_TIMEOUT (500ms), no hedging;
#   rigging-p95   the same with `hedge: {after: p95, budget: BUDGET}` (5%);
#   rigging-10ms  the same with `hedge: {after: 10ms, budget: BUDGET}`: the paper's wait;
#   reference     the program in `fanout` mode: for each request, plain parallel GETs
#                 (Go net/http, keep-alive) to one replica of every shard, round robin,
#                 under one timeout of DEADLINE, waiting for all, the `hits` arrays
#                 concatenated into one JSON document. No hedging, no retry.
# The load driver is the same program in `load` mode (Go net/http, keep-alive), which checks
# every answer: a 200, `Rigging-Coverage: 8/8`, 8 docs in the body.
#
# Pinning, on a machine of 2 CPUs: the roots and the reference fan-out (which is its own
# load driver) on CPU 0, alone; the 17 leaves and the load driver on CPU 1. Whatever does
# the fan-out has a CPU to itself, and the leaves get the same CPU in every case. The roots
# run with RIGGING_WORKER_THREADS=1 (tokio's current-thread scheduler).
#
# Measured, per run: the latency of every request after a warm-up of WARMUP seconds, p50,
# p99, p99.9 (exact, pooled over the rounds' quiet runs); extra requests: what the leaves
# counted less 8 per fan-out sent, as a share of 8 per fan-out; CPU per fan-out: the root's
# user+system ticks (/proc/PID/stat) over the run ÷ fan-outs sent (the reference: its own
# getrusage over its run, which includes its pacing, a few µs per fan-out); the leaves'
# CPU per leaf request, the same way; the time the root's (or reference's) threads and the
# leaves' spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat), which tells
# a run that was short of CPU; the share of the CPUs that other processes used meanwhile. A
# run during which that share was over DISTURBED or a compiler ran is left out of the
# figures when quiet runs exist. Hedges sent, won and refused (over the budget) come from
# the roots' rigging_gather_* counters; their /metrics and /status after each run are kept
# with KEEP=1.
#
# Knobs (environment): DURATION (15, seconds recorded per run), ROUNDS (3), RATE (300),
# WARMUP (1), CASES, STALL (0.01), STALL_FOR (100ms), LEAF_SLEEP (1ms), DEADLINE (1s),
# LEAF_TIMEOUT (500ms), BUDGET (5%), DISTURBED (0.08), KEEP (0), RIGGING_BIN (a
# rigging-sidecar binary; by default the static musl release build of the working tree, as
# the image ships it) with RIGGING_COMMIT (what it was built from, for the report).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-300}
WARMUP=${WARMUP:-1}
CASES=${CASES:-leaf rigging rigging-p95 rigging-10ms reference}
STALL=${STALL:-0.01}
STALL_FOR=${STALL_FOR:-100ms}
LEAF_SLEEP=${LEAF_SLEEP:-1ms}
DEADLINE=${DEADLINE:-1s}
LEAF_TIMEOUT=${LEAF_TIMEOUT:-500ms}
BUDGET=${BUDGET:-5%}
DISTURBED=${DISTURBED:-0.08}
KEEP=${KEEP:-0}
SHARDS=8
REPLICAS=2

log() { printf 'gather.sh: %s\n' "$*" >&2; }
want() { [[ " $CASES " == *" $1 "* ]]; }

install_apt curl python3 >&2
command -v go >/dev/null || { log "go is needed for the leaves, the load driver and the reference"; exit 1; }

work=$(mktemp -d)
cleanup() {
  stop_started $? "$work"
  if ((KEEP)); then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- the binaries -------------------------------------------------------------------------
# The Go program, built with the Go toolchain (standard library only: nothing to download)
# and cached outside the repository, by the hash of its sources.
ref_src=scripts/bench/gather-reference
ref_key=$(cat "$ref_src/main.go" "$ref_src/go.mod" | sha256sum | cut -c1-16)
ref_cache=${XDG_CACHE_HOME:-$HOME/.cache}/rigging/gather-reference
REFERENCE=$ref_cache/gather-reference-$ref_key
if [[ ! -x $REFERENCE ]]; then
  log "building the reference program into $REFERENCE"
  mkdir -p "$ref_cache"
  (cd "$ref_src" && GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
    go build -o "$REFERENCE.tmp.$$" .)
  mv "$REFERENCE.tmp.$$" "$REFERENCE"
fi

want_rigging=0
for c in rigging rigging-p95 rigging-10ms; do want "$c" && want_rigging=1; done
measured="no Rigging case"
if ((want_rigging)); then
  sidecar_binary "$work"
  BIN=$work/rigging-sidecar
  "$BIN" gather --help >/dev/null 2>&1 || { log "$BIN has no gather subcommand"; exit 1; }
fi

# Background processes never write to our stdout: a command substitution around one
# would wait for it forever. spawn NAME CPU CMD… sets $started to the new PID.
started=
spawn() {
  local name=$1 cpu=$2
  shift 2
  taskset -c "$cpu" "$@" >"$work/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
}

# ---- the leaves -----------------------------------------------------------------------------
leaf_ports=() leaf_pids=() shard_lists=() shards_yaml=""
for ((s = 0; s < SHARDS; s++)); do
  list="" yaml=""
  for ((r = 0; r < REPLICAS; r++)); do
    p=$(free_port)
    spawn "leaf-$s-$r" 1 "$REFERENCE" -mode leaf -listen "127.0.0.1:$p" -shard "$s" -replica "$r" \
      -sleep "$LEAF_SLEEP" -stall "$STALL" -stall-for "$STALL_FOR"
    leaf_ports+=("$p")
    leaf_pids+=("$started")
    list+="${list:+,}127.0.0.1:$p"
    yaml+="${yaml:+, }\"127.0.0.1:$p\""
  done
  shard_lists+=("$list")
  shards_yaml+="  - replicas: [$yaml]"$'\n'
done
base_port=$(free_port)
spawn leaf-direct 1 "$REFERENCE" -mode leaf -listen "127.0.0.1:$base_port" -shard 99 -replica 0 \
  -sleep "$LEAF_SLEEP" -stall 0
base_pid=$started
for p in "${leaf_ports[@]}" "$base_port"; do wait_port 127.0.0.1 "$p"; done

# ---- the roots --------------------------------------------------------------------------------
declare -A root_port root_admin root_pid
start_root() { # NAME, then the config's hedge line (or nothing)
  local name=$1 hedge=${2:-}
  {
    echo "shards:"
    printf '%s' "$shards_yaml"
    echo "merge: {concat: {path: hits}}"
    echo "deadline: $DEADLINE"
    echo "leafTimeout: $LEAF_TIMEOUT"
    [[ -z $hedge ]] || echo "$hedge"
  } >"$work/$name.yaml"
  root_port[$name]=$(free_port)
  root_admin[$name]=$(free_port)
  spawn "$name" 0 env RIGGING_WORKER_THREADS=1 "$BIN" gather --config "$work/$name.yaml" \
    --listen "127.0.0.1:${root_port[$name]}" --admin "127.0.0.1:${root_admin[$name]}"
  root_pid[$name]=$started
}
want rigging && start_root rigging
want rigging-p95 && start_root rigging-p95 "hedge: {after: p95, budget: \"$BUDGET\"}"
want rigging-10ms && start_root rigging-10ms "hedge: {after: 10ms, budget: \"$BUDGET\"}"

# Every root answers a whole fan-out: a 200, coverage 8/8, a doc from every shard.
for name in "${!root_port[@]}"; do
  wait_port 127.0.0.1 "${root_port[$name]}"
  ok=0
  for _ in $(seq 1 100); do
    kill -0 "${root_pid[$name]}" 2>/dev/null || { log "$name exited on start"; exit 1; }
    if curl -fsS -D "$work/$name.check-headers" -o "$work/$name.check-body" \
      "http://127.0.0.1:${root_port[$name]}/search" 2>/dev/null &&
      grep -qi "^rigging-coverage: $SHARDS/$SHARDS" "$work/$name.check-headers" &&
      (($(grep -o '"doc"' "$work/$name.check-body" | wc -l) == SHARDS)); then
      ok=1
      break
    fi
    sleep 0.1
  done
  if ((!ok)); then
    log "$name does not answer a whole fan-out; its last answer:"
    cat "$work/$name.check-headers" "$work/$name.check-body" >&2 2>/dev/null || true
    exit 1
  fi
done

# ---- the runs -----------------------------------------------------------------------------------
# Sums of the leaves' own counts: "served stalled cancelled", of LEAF PORTS….
counts() {
  local p
  for p in "$@"; do curl -fsS "http://127.0.0.1:$p/count"; done |
    awk -F'[:,}]' '{s += $2; st += $4; c += $6} END {printf "%.0f %.0f %.0f\n", s, st, c}'
}
# Time the threads of the processes PID… have spent runnable but waiting for a CPU, in ns:
# the second field of /proc/PID/task/*/schedstat.
runq_ns() {
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/schedstat; done 2>/dev/null | awk '{s += $2} END {printf "%.0f", s}'
}
# User-mode ticks alone (field 14).
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
ticks_of() {
  local total=0 p
  for p in "$@"; do total=$((total + $(cpu_ticks "$p"))); done
  echo "$total"
}
# A JSON field of a summary file: field FILE KEY.
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

leaf_rate=$(calc "$RATE * $SHARDS / ($SHARDS * $REPLICAS)")
results=$work/results
: >"$results"

# run TARGET ROUND: one run of the driver (or the reference) against TARGET; appends one
# JSON line to $results and logs one line.
run() {
  local t=$1 round=$2 out=$work/run.$1.$2.json lat=$work/lat.$1.$2
  local leaf_ports_now leaf_pids_now fanout_pid=""
  if [[ $t == leaf ]]; then
    leaf_ports_now=("$base_port") leaf_pids_now=("$base_pid")
  else
    leaf_ports_now=("${leaf_ports[@]}") leaf_pids_now=("${leaf_pids[@]}")
  fi
  [[ $t == rigging* ]] && fanout_pid=${root_pid[$t]}
  [[ -z $fanout_pid ]] || curl -fsS "http://127.0.0.1:${root_admin[$t]}/metrics" >"$work/metrics-before.$t.$round" 2>/dev/null || true
  local t0 t1 busy0 busy1 ours0 ours1 leaf0 leaf1 root0=0 root1=0 user0=0 user1=0 c0 c1
  local wait0=0 wait1=0 lwait0 lwait1
  local all_pids=("${leaf_pids[@]}" "$base_pid" "${root_pid[@]}")
  c0=$(counts "${leaf_ports_now[@]}")
  t0=$(date +%s.%N) busy0=$(machine_busy) ours0=$(ticks_of "${all_pids[@]}")
  leaf0=$(ticks_of "${leaf_pids_now[@]}") lwait0=$(runq_ns "${leaf_pids_now[@]}")
  if [[ -n $fanout_pid ]]; then
    root0=$(cpu_ticks "$fanout_pid") user0=$(user_ticks "$fanout_pid") wait0=$(runq_ns "$fanout_pid")
  fi
  local common=(-warmup "${WARMUP}s" -duration "${DURATION}s" -out "$lat")
  case $t in
    leaf)
      taskset -c 1 "$REFERENCE" -mode load -url "http://127.0.0.1:$base_port/search" -rate "$leaf_rate" \
        -timeout 5s "${common[@]}" >"$out" 2>"$work/driver.$t.$round.log" ;;
    reference)
      taskset -c 0 "$REFERENCE" -mode fanout -leaves "${shard_lists[*]}" -rate "$RATE" -timeout "$DEADLINE" \
        "${common[@]}" >"$out" 2>"$work/driver.$t.$round.log" ;;
    *)
      taskset -c 1 "$REFERENCE" -mode load -url "http://127.0.0.1:${root_port[$t]}/search" -rate "$RATE" \
        -shards "$SHARDS" -timeout 5s "${common[@]}" >"$out" 2>"$work/driver.$t.$round.log" ;;
  esac
  if [[ -n $fanout_pid ]]; then
    root1=$(cpu_ticks "$fanout_pid") user1=$(user_ticks "$fanout_pid") wait1=$(runq_ns "$fanout_pid")
  fi
  leaf1=$(ticks_of "${leaf_pids_now[@]}") lwait1=$(runq_ns "${leaf_pids_now[@]}")
  t1=$(date +%s.%N) busy1=$(machine_busy) ours1=$(ticks_of "${all_pids[@]}")
  c1=$(counts "${leaf_ports_now[@]}")
  if [[ -n $fanout_pid ]]; then
    kill -0 "$fanout_pid" 2>/dev/null || { log "$t exited during the run"; exit 1; }
    curl -fsS "http://127.0.0.1:${root_admin[$t]}/metrics" >"$work/metrics-after.$t.$round" 2>/dev/null || true
    curl -fsS "http://127.0.0.1:${root_admin[$t]}/status" >"$work/status.$t.$round.json" 2>/dev/null || true
  fi
  # What the rest of the machine used meanwhile, as a share of all CPUs: all busy time less
  # the leaves', the roots' and the driver's (or the reference's).
  local others dist width=$SHARDS s0 st0 x0 s1 st1 x1
  [[ $t != leaf ]] || width=1
  others=$(awk -v b=$((busy1 - busy0)) -v o=$((ours1 - ours0)) -v d="$(field "$out" cpu_ms)" \
    -v hz="$CLK_TCK" -v s="$(calc "$t1 - $t0")" -v cpus="$(nproc)" \
    'BEGIN {r = (b - o - d / 1000 * hz) / (s * hz * cpus); printf "%.3f", r < 0 ? 0 : r}')
  dist=$(disturbed "$work/compilers" "${t0%.*}" "${t1%.*}" "$others" "$DISTURBED")
  read -r s0 st0 x0 <<<"$c0"
  read -r s1 st1 x1 <<<"$c1"
  TARGET=$t ROUND=$round OUT=$out LAT=$lat SERVED=$((s1 - s0)) STALLED=$((st1 - st0)) \
    CANCELLED=$((x1 - x0)) LEAF_TICKS=$((leaf1 - leaf0)) ROOT_TICKS=$((root1 - root0)) USER_TICKS=$((user1 - user0)) \
    ROOT_WAIT=$((wait1 - wait0)) LEAVES_WAIT=$((lwait1 - lwait0)) \
    OTHERS=$others DIST=$dist HZ=$CLK_TCK WIDTH=$width \
    python3 - >>"$results" <<'PY'
import json, os, sys
e = os.environ
d = json.load(open(e["OUT"]))
width, hz = int(e["WIDTH"]), int(e["HZ"])
sent = d["sent"]
r = dict(target=e["TARGET"], round=int(e["ROUND"]), lat=e["LAT"], sent=sent, rate=d["rate"],
         p50=d.get("p50_ms", 0), p99=d.get("p99_ms", 0), p999=d.get("p999_ms", 0), max=d.get("max_ms", 0),
         whole=d["whole"], partial=d["partial"], non200=d["non200"], failed=d["failed"], bad=d["bad"],
         served=int(e["SERVED"]), stalled=int(e["STALLED"]), cancelled=int(e["CANCELLED"]),
         extra=(int(e["SERVED"]) - width * sent) / (width * sent) if sent else 0,
         leaf_us=int(e["LEAF_TICKS"]) * 1e6 / hz / max(1, int(e["SERVED"])),
         others=float(e["OTHERS"]), disturbed=int(e["DIST"]), max_lag=d["max_lag_ms"],
         leaves_wait_ms=int(e["LEAVES_WAIT"]) / 1e6)
if e["TARGET"] == "reference":
    r["cpu_us"], r["user_us"] = d["cpu_us_per"], d["user_us_per"]
    r["wait_ms"] = d["runq_wait_ms"]
    r["leaf_unstalled_p50"] = d.get("leaf_unstalled_p50_ms", 0)
    r["leaf_unstalled_p99"] = d.get("leaf_unstalled_p99_ms", 0)
elif e["TARGET"].startswith("rigging"):
    r["cpu_us"] = int(e["ROOT_TICKS"]) * 1e6 / hz / max(1, sent)
    r["user_us"] = int(e["USER_TICKS"]) * 1e6 / hz / max(1, sent)
    r["wait_ms"] = int(e["ROOT_WAIT"]) / 1e6
print(json.dumps(r))
cpu = f" cpu {r['cpu_us']:.0f}us/fan-out, waited {r['wait_ms']:.0f}ms for a CPU;" if "cpu_us" in r else ""
print(f"  {r['target']}: {r['rate']:.0f}/s p50 {r['p50']:.2f} p99 {r['p99']:.2f} p99.9 {r['p999']:.2f} ms;"
      f" extra {r['extra']:+.2%};{cpu} leaves {r['leaf_us']:.0f}us/req, waited {r['leaves_wait_ms']:.0f}ms; partial {r['partial']} non200 {r['non200']}"
      f" failed {r['failed']} bad {r['bad']}; lag {r['max_lag']:.1f}ms; others {r['others']:.2f}"
      + (" DISTURBED" if r["disturbed"] else ""), file=sys.stderr)
PY
}

# Targets alternate within a round; the order rotates from round to round, so no target
# always runs first (or right after the same neighbour).
read -ra targets <<<"$CASES"
rotate() { # $1 = round
  local i n=${#targets[@]}
  for ((i = 0; i < n; i++)); do printf '%s ' "${targets[(i + $1) % n]}"; done
}

watch_compilers "$work/compilers"
pids+=($!)
started_at=$(date -u '+%F %H:%M UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS"
  for t in $(rotate "$round"); do run "$t" "$round"; done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A rss
for name in "${!root_pid[@]}"; do rss[$name]=$(rss_kib "${root_pid[$name]}"); done

# ---- the table ------------------------------------------------------------------------------------
WORK=$work RESULTS=$results CASES=$CASES RATE=$RATE LEAF_RATE=$leaf_rate DURATION=$DURATION \
  ROUNDS=$ROUNDS WARMUP=$WARMUP STALL=$STALL STALL_FOR=$STALL_FOR LEAF_SLEEP=$LEAF_SLEEP \
  DEADLINE=$DEADLINE LEAF_TIMEOUT=$LEAF_TIMEOUT BUDGET=$BUDGET DISTURBED=$DISTURBED \
  MEASURED=$measured STARTED=$started_at LOAD_START=$load_start LOAD_END=$load_end CPUS=$(nproc) \
  RSS="$(for n in "${!rss[@]}"; do printf '%s=%s ' "$n" "${rss[$n]}"; done)" python3 - <<'PY'
import json, math, os, re, statistics

e = os.environ
runs = [json.loads(line) for line in open(e["RESULTS"])]
names = {
    "leaf": "leaf direct, no stall",
    "rigging": "Rigging root, hedging off",
    "rigging-p95": f"Rigging root, hedge after p95, budget {e['BUDGET']}",
    "rigging-10ms": f"Rigging root, hedge after 10ms, budget {e['BUDGET']}",
    "reference": "Go reference fan-out (net/http, plain parallel)",
}


def pick(target):
    """The target's runs that count: the quiet ones, or all when none was quiet."""
    mine = [r for r in runs if r["target"] == target]
    quiet = [r for r in mine if not r["disturbed"]]
    return (quiet or mine), len(quiet), len(mine)


def pooled(rs):
    lat = []
    for r in rs:
        with open(r["lat"]) as f:
            lat.extend(int(x) for x in f)
    lat.sort()
    if not lat:
        return {}

    def rank(p):
        return lat[min(len(lat) - 1, max(0, math.ceil(p / 100 * len(lat)) - 1))] / 1e6

    return {"n": len(lat), "p50": rank(50), "p99": rank(99), "p999": rank(99.9), "max": lat[-1] / 1e6}


def median(rs, key):
    values = [r[key] for r in rs if key in r]
    return statistics.median(values) if values else None


def metric_deltas(target, rs):
    """The root's rigging_gather_*_total counters, summed over shards, after less before, over the runs."""
    totals = {}
    for r in rs:
        snap = {}
        for when in ("before", "after"):
            path = os.path.join(e["WORK"], f"metrics-{when}.{target}.{r['round']}")
            values = {}
            if os.path.exists(path):
                for line in open(path):
                    m = re.match(r"^rigging_gather_([a-z_]+)_total(?:\{([^}]*)\})?\s+([0-9.eE+-]+)$", line)
                    if m:
                        labels = ",".join(x for x in (m.group(2) or "").split(",") if x and not x.startswith("shard="))
                        key = m.group(1) + (f"{{{labels}}}" if labels else "")
                        values[key] = values.get(key, 0.0) + float(m.group(3))
            snap[when] = values
        for k, v in snap["after"].items():
            totals[k] = totals.get(k, 0.0) + v - snap["before"].get(k, 0.0)
    return totals


rows = {}
for target in e["CASES"].split():
    rs, quiet, total = pick(target)
    if not rs:
        continue
    sent = sum(r["sent"] for r in rs)
    width = 1 if target == "leaf" else 8
    rows[target] = dict(
        lat=pooled(rs), rate=median(rs, "rate"), cpu=median(rs, "cpu_us"), user=median(rs, "user_us"),
        leaf_us=median(rs, "leaf_us"),
        extra=(sum(r["served"] for r in rs) - width * sent) / (width * sent) if sent else 0,
        hedge_metrics=metric_deltas(target, rs) if target.startswith("rigging") else {},
        incomplete=sum(r["partial"] + r["non200"] + r["failed"] + r["bad"] for r in rs),
        stalled=sum(r["stalled"] for r in rs), cancelled=sum(r["cancelled"] for r in rs),
        quiet=f"{quiet}/{total}", runs=rs,
        others=statistics.median(r["others"] for r in rs),
        leaf_unstalled_p99=median(rs, "leaf_unstalled_p99"), leaf_unstalled_p50=median(rs, "leaf_unstalled_p50"),
    )

print(f"Run {e['STARTED']}, `scripts/bench/gather.sh` (ROUNDS={e['ROUNDS']} DURATION={e['DURATION']} RATE={e['RATE']}), "
      f"{e['MEASURED']}; {e['CPUS']} CPUs, load average {e['LOAD_START']} at the start, {e['LOAD_END']} at the end.")
print()
print(f"8 shards × 2 replicas, each leaf a process answering after {e['LEAF_SLEEP']} (a stall of {e['STALL_FOR']} "
      f"with probability {e['STALL']}); {e['RATE']} fan-outs/s, open loop, {e['DURATION']} s recorded per run after "
      f"{e['WARMUP']} s of warm-up; the leaf row at {float(e['LEAF_RATE']):g} requests/s, what one replica gets. Roots: "
      f"deadline {e['DEADLINE']}, leafTimeout {e['LEAF_TIMEOUT']}; the reference's timeout {e['DEADLINE']}. Latencies "
      "pooled over the runs counted; rates and CPU are medians.")
print()
print("| target | req/s | p50 ms | p99 ms | p99.9 ms | max ms | extra requests | CPU µs per fan-out (of it user) | leaf CPU µs/req | incomplete | runs counted |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for target, row in rows.items():
    lat = row["lat"]
    extra = "—" if target == "leaf" else f"{row['extra']:+.2%}"
    cpu = "—" if row["cpu"] is None else f"{row['cpu']:.0f} ({row['user']:.0f})"
    print(f"| {names[target]} | {row['rate']:.0f} | {lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} | "
          f"{lat.get('p999', 0):.2f} | {lat.get('max', 0):.1f} | {extra} | {cpu} | {row['leaf_us']:.0f} | "
          f"{row['incomplete']} | {row['quiet']} |")
print()
for target, row in rows.items():
    if row["hedge_metrics"]:
        shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(row["hedge_metrics"].items()) if v)
        print(f"- {names[target]}: its counters over the runs counted: {shown or 'none moved'}; the leaves "
              f"stalled {row['stalled']} answers and saw {row['cancelled']} requests cancelled.")
ref = rows.get("reference")
if ref and ref["leaf_unstalled_p99"]:
    print(f"- The leaf requests of the reference fan-out, as it saw them under the full load: "
          f"p50 {ref['leaf_unstalled_p50']:.2f} ms, p99 {ref['leaf_unstalled_p99']:.2f} ms without the stalled ones.")
print()
print("Per run (p50/p99/p99.9 ms; extra requests; CPU µs per fan-out; ms the root (or reference) and the leaves "
      "spent runnable, waiting for a CPU; others' share of the CPUs; * = disturbed):")
for target, row in rows.items():
    parts = []
    for r in (x for x in runs if x["target"] == target):
        cpu = f" {r['cpu_us']:.0f}" if "cpu_us" in r else ""
        wait = f"{r['wait_ms']:.0f}/" if "wait_ms" in r else ""
        parts.append(f"{r['p50']:.2f}/{r['p99']:.2f}/{r['p999']:.2f} {r['extra']:+.1%}{cpu} {wait}{r['leaves_wait_ms']:.0f} "
                     f"{r['others']:.2f}{'*' if r['disturbed'] else ''}")
    print(f"- {target}: " + "; ".join(parts))
print()

leaf, off, p95, ref = rows.get("leaf"), rows.get("rigging"), rows.get("rigging-p95"), rows.get("reference")


def verdict(ok, value, goal):
    return "**met**" if ok else f"**missed** by {value / goal - 1:.0%}"


if p95:
    yardsticks = []
    if leaf:
        yardsticks.append(("one leaf alone, driven directly", leaf["lat"]["p99"]))
    if ref and ref["leaf_unstalled_p99"]:
        yardsticks.append(("the reference's own leaf requests, stalled ones left out", ref["leaf_unstalled_p99"]))
    for what, own in yardsticks:
        goal, got = 3 * own, p95["lat"]["p99"]
        print(f"- Goal: with hedging, p99 under 3× the leaves' own p99 without stalls. Against {what} "
              f"({own:.2f} ms × 3 = {goal:.2f} ms): {got:.2f} ms, {verdict(got < goal, got, goal)}.")
    print(f"- Goal: at most 5 % extra requests: {p95['extra']:+.2%}, {verdict(p95['extra'] <= 0.05, p95['extra'], 0.05)}.")
if leaf and off and off["cpu"] is not None:
    own = leaf["lat"]["p50"] * 1000
    print(f"- Goal: root overhead per fan-out under 10 % of a leaf's own time (the leaf's p50, {own:.0f} µs: "
          f"{own / 10:.0f} µs). The root's CPU per fan-out, hedging off, is {off['cpu']:.0f} µs = {off['cpu'] / own:.0%}, "
          f"{verdict(off['cpu'] < own / 10, off['cpu'], own / 10)}.")
    if ref:
        added = off["lat"]["p50"] - ref["lat"]["p50"]
        print(f"  In latency, the root's p50 less the reference's (the same fan-out made in the client's own "
              f"process): {added:+.2f} ms = {added * 1000 / own:+.0%} of the leaf's p50.")
print()
print("The paper's figure, not ours: in 'The Tail at Scale' (Dean and Barroso, CACM 2013), a backup request after "
      "10 ms cut the 99.9th-percentile latency of a 1,000-key BigTable fan-out read from 1,800 ms to 74 ms, at 2 % more requests.")
rss = dict(x.split("=") for x in e["RSS"].split())
if rss:
    print()
    print("Roots' RSS after the runs: " + ", ".join(f"{k} {int(v) / 1024:.1f} MiB" for k, v in sorted(rss.items())) + ".")
PY
