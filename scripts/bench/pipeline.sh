#!/usr/bin/env bash
# Pub/sub pipeline benchmark: a copy → filter → sink pipeline of three `rigging-sidecar
# queue` processes beside JetStream's own throughput, in one run, on the same machine and
# the same nats-server (Debian's, JetStream on, its store in /dev/shm, on 127.0.0.1):
#
#   - raw JetStream (the reference): scripts/bench/pipeline-reference/ in `jetstream`
#     mode, a Go client on nats.go's jetstream package: async publish of N messages of
#     1 KiB to a stream of its own (each with a Nats-Msg-Id), a pull consumer in the same
#     process consuming and acking them;
#   - Rigging: the same program in `source` mode publishes N messages of 1 KiB JSON to
#     topic `in` (subject rigging.in, stream `rigging`, which the sidecars create), and
#       stage 1  --stage copy   --subscribe in     --output copied
#       stage 2  --stage filter --subscribe copied --output kept --filter 'message.keep'
#       stage 3  --subscribe kept --deliver-to the program in `sink` mode, an HTTP app
#                that answers every POST 200 with an empty body.
#     Every DROP_EVERY-th message has "keep": false: the filter drops it, and the sink
#     counts it as let through if it comes all the same.
#
#   scripts/bench/pipeline.sh                 N=100000: about 1.5 minutes, after the builds
#                                             (the musl release build: about 5 minutes)
#   N=20000 RIGGING_BIN=target/release/rigging-sidecar scripts/bench/pipeline.sh
#   KEEP=1 scripts/bench/pipeline.sh          keeps the work directory (logs, metrics)
#
# Four runs, in this order: raw JetStream as fast as it goes; Rigging as fast as it goes
# (the source publishes as fast as JetStream acks; the pipeline's rate is what reaches the
# sink); then, paced at half of Rigging's measured rate (`-rate`), Rigging again and raw
# JetStream at the same rate, for the latency of a pipeline that keeps up. For scale:
# Numaflow's docs: multi-partition edges are needed beyond ~10k TPS.
#
# Measured, per run: msgs/s, N over the time from the first publish to the last new
# arrival (in the sink, or in the reference's consumer); end-to-end latency, arrival time
# less the publish time carried in the payload, p50 and p99 (at full speed that is mostly
# the time a message waits in the backlog); CPU per message, µs: user+system ticks
# (/proc/PID/stat) of every process of the run — nats-server, the sidecars, the Go
# program(s) — over the run, ÷ N; missing ids, duplicates (a body id delivered again) and
# messages the filter should have dropped; the share of the CPUs that other processes used
# meanwhile (/proc/stat), which tells a disturbed run. Then what each sidecar counted
# (rigging_queue_* on its /metrics). Knobs (environment): N (100000), DROP_EVERY (10;
# 0: every message is kept), SIDECAR_FLAGS (more flags for every sidecar, e.g.
# "--max-in-flight 256"), RATE (the paced runs' msgs/s; default: half of Rigging's
# measured rate), TIMEOUT (600: seconds a run may take), IDLE (30: seconds without
# a new message after which a run gives up), RIGGING_BIN (a rigging-sidecar binary; by
# default the static musl release build, as the image ships it) with RIGGING_COMMIT (what
# it was built from, for the report), KEEP (0).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

N=${N:-100000}
DROP_EVERY=${DROP_EVERY:-10}
SIDECAR_FLAGS=${SIDECAR_FLAGS:-}
TIMEOUT=${TIMEOUT:-600}
IDLE=${IDLE:-30}
KEEP=${KEEP:-0}

log() { printf 'pipeline.sh: %s\n' "$*" >&2; }

install_apt nats-server curl python3 >&2
command -v go >/dev/null || { log "go is needed for the reference program"; exit 1; }

work=$(mktemp -d)
shm=$(mktemp -d /dev/shm/rigging-bench-pipeline.XXXXXX)
# pids: nats-server, then the sidecars, which drain and leave before their server goes.
sink_pid= # the sink of the run under way
cleanup() {
  local rc=$?
  stop_pid "$sink_pid"
  stop_started "$rc" "$work"
  rm -rf "$shm"
  if ((KEEP)); then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- the binaries ---------------------------------------------------------------------------
# The reference program, built with the Go module proxy and cached outside the repository,
# by the hash of its sources.
ref_src=scripts/bench/pipeline-reference
ref_key=$(cat "$ref_src/main.go" "$ref_src/go.mod" "$ref_src/go.sum" | sha256sum | cut -c1-16)
ref_cache=${XDG_CACHE_HOME:-$HOME/.cache}/rigging/pipeline-reference
REFERENCE=$ref_cache/pipeline-reference-$ref_key
if [[ ! -x $REFERENCE ]]; then
  log "building the reference program into $REFERENCE"
  mkdir -p "$ref_cache"
  (cd "$ref_src" && GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
    go build -o "$REFERENCE.tmp.$$" .)
  mv "$REFERENCE.tmp.$$" "$REFERENCE"
fi
nats_go=$(awk '$1 == "github.com/nats-io/nats.go" {print $2} $2 == "github.com/nats-io/nats.go" {print $3}' "$ref_src/go.mod" | head -1)

# The sidecar, copied: the tree's binary may be rebuilt while this runs.
sidecar_binary "$work"
BIN=$work/rigging-sidecar
"$BIN" queue --help >/dev/null 2>&1 || { log "$BIN has no queue subcommand"; exit 1; }

# ---- nats-server ------------------------------------------------------------------------------
nats_port=$(free_port)
NATS=nats://127.0.0.1:$nats_port
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$shm" >"$work/nats-server.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_port 127.0.0.1 "$nats_port"
nats_version=$(nats-server --version | awk '{print $NF}')

# A JSON field of a summary file: field FILE KEY.
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# The runs' figures, one "key=value" line per figure, for the table.
results=$work/results
: >"$results"
put() { printf '%s.%s=%s\n' "$1" "$2" "$3" >>"$results"; }

# Busy clock ticks of the whole machine (machine_busy) and the time, at the start and end
# of a run: what other processes used meanwhile, the share of the machine's CPUs that the
# run did not use, goes with its figures.
now() { date +%s.%N; }

# ---- raw JetStream ------------------------------------------------------------------------------
# reference RUN [-rate R]: the jetstream mode on stream `bench` (recreated each time).
reference() {
  local run=$1 before after busy0 busy1 t0 t1
  shift
  log "run $run: raw JetStream, $N messages $*"
  before=$(cpu_ticks "$nats_pid") busy0=$(machine_busy) t0=$(now)
  "$REFERENCE" -mode jetstream -nats "$NATS" -n "$N" -prefix "$run-" -timeout "${TIMEOUT}s" \
    -idle "${IDLE}s" "$@" >"$work/$run.json" 2>"$work/$run.log"
  after=$(cpu_ticks "$nats_pid") busy1=$(machine_busy) t1=$(now)
  put "$run" nats_ticks $((after - before))
  put "$run" busy_ticks $((busy1 - busy0))
  put "$run" wall "$(calc "$t1 - $t0")"
  put "$run" client_ticks "$(field "$work/$run.json" cpu_ticks)"
  put "$run" sidecar_ticks 0
}
reference jetstream-max

# ---- Rigging ---------------------------------------------------------------------------------------
sink_port=$(free_port)
read -ra extra <<<"$SIDECAR_FLAGS"
sidecar_pids=() admins=()
sidecar() { # NAME, then its flags
  local name=$1 admin
  shift
  admin=127.0.0.1:$(free_port)
  "$BIN" queue --nats "$NATS" --stream rigging --listen "127.0.0.1:$(free_port)" --admin "$admin" \
    "$@" "${extra[@]}" >"$work/sidecar-$name.log" 2>&1 &
  pids+=($!)
  sidecar_pids+=($!)
  admins+=("$admin")
}
sidecars_alive() {
  local p
  for p in "${sidecar_pids[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done
}
sidecar copy --consumer copy --subscribe in --stage copy --output copied
sidecar filter --consumer keep --subscribe copied --stage filter --filter 'message.keep' --output kept
sidecar sink --consumer sink --subscribe kept --deliver-to "http://127.0.0.1:$sink_port/"
for admin in "${admins[@]}"; do
  for _ in $(seq 1 300); do
    curl -fso /dev/null "http://$admin/readyz" && break
    sidecars_alive || { log "a sidecar exited on start"; exit 1; }
    sleep 0.1
  done
  curl -fso /dev/null "http://$admin/readyz" || { log "the sidecar with admin $admin is not ready after 30 s"; exit 1; }
done

sidecars_ticks() {
  local total=0 p
  for p in "${sidecar_pids[@]}"; do total=$((total + $(cpu_ticks "$p"))); done
  echo "$total"
}

# rigging RUN [-rate R]: a sink for the run's ids, then the source; returns when the sink
# has seen every id it expects, or gave up.
rigging() {
  local run=$1 nats0 side0 nats1 side1 busy0 busy1 t0 t1
  shift
  log "run $run: Rigging copy → filter → sink, $N messages $*"
  "$REFERENCE" -mode sink -listen "127.0.0.1:$sink_port" -n "$N" -prefix "$run-" \
    -drop-every "$DROP_EVERY" -timeout "${TIMEOUT}s" -idle "${IDLE}s" \
    >"$work/$run-sink.json" 2>"$work/$run-sink.log" &
  sink_pid=$!
  wait_port 127.0.0.1 "$sink_port"
  nats0=$(cpu_ticks "$nats_pid") side0=$(sidecars_ticks) busy0=$(machine_busy) t0=$(now)
  "$REFERENCE" -mode source -nats "$NATS" -stream rigging -n "$N" -prefix "$run-" \
    -drop-every "$DROP_EVERY" -timeout "${TIMEOUT}s" "$@" >"$work/$run-source.json" 2>"$work/$run-source.log"
  while kill -0 "$sink_pid" 2>/dev/null; do
    sidecars_alive || { log "a sidecar exited during run $run"; exit 1; }
    sleep 0.2
  done
  wait "$sink_pid"
  sink_pid=
  nats1=$(cpu_ticks "$nats_pid") side1=$(sidecars_ticks) busy1=$(machine_busy) t1=$(now)
  put "$run" nats_ticks $((nats1 - nats0))
  put "$run" busy_ticks $((busy1 - busy0))
  put "$run" wall "$(calc "$t1 - $t0")"
  put "$run" sidecar_ticks $((side1 - side0))
  put "$run" client_ticks $(($(field "$work/$run-source.json" cpu_ticks) + $(field "$work/$run-sink.json" cpu_ticks)))
  put "$run" publish_rate "$(field "$work/$run-source.json" rate)"
  cp "$work/$run-sink.json" "$work/$run.json"
  local i=0 admin
  for admin in "${admins[@]}"; do
    curl -fsS "http://$admin/metrics" >"$work/$run-metrics-$i.txt" || true
    i=$((i + 1))
  done
}
rigging rigging-max

half=${RATE:-$(awk -v r="$(field "$work/rigging-max.json" rate)" 'BEGIN {printf "%d", r / 2}')}
((half > 0)) || { log "Rigging delivered nothing: no half rate to run at"; exit 1; }
rigging rigging-half -rate "$half"
reference jetstream-half -rate "$half"
rss=()
for p in "${sidecar_pids[@]}"; do rss+=("$(rss_kib "$p")"); done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the table --------------------------------------------------------------------------------------
WORK=$work RESULTS=$results N=$N HALF=$half CLK_TCK=$CLK_TCK DROP_EVERY=$DROP_EVERY \
  MEASURED=$measured NATS_VERSION=$nats_version NATS_GO=$nats_go SIDECAR_FLAGS=$SIDECAR_FLAGS \
  RSS="${rss[*]}" LOAD_END=$load_end CPUS=$(nproc) python3 - <<'PY'
import json, os, time

env = os.environ
n, half, hz = int(env["N"]), int(env["HALF"]), int(env["CLK_TCK"])
figures = {}
for line in open(env["RESULTS"]):
    key, value = line.rstrip("\n").split("=", 1)
    run, name = key.split(".", 1)
    figures.setdefault(run, {})[name] = float(value)
runs = {run: json.load(open(os.path.join(env["WORK"], run + ".json"))) for run in figures}


def us(run, name):
    return figures[run][name] * 1e6 / hz / n


rows = [
    ("jetstream-max", "raw JetStream (nats.go async publish + pull consumer)", "as fast as it goes"),
    ("rigging-max", "Rigging copy → filter → sink (3 sidecars)", "as fast as it goes"),
    ("jetstream-half", "raw JetStream (nats.go async publish + pull consumer)", f"paced at {half} msgs/s"),
    ("rigging-half", "Rigging copy → filter → sink (3 sidecars)", f"paced at {half} msgs/s"),
]
reference = {"rigging-max": "jetstream-max", "rigging-half": "jetstream-half"}
flags = f", sidecar flags `{env['SIDECAR_FLAGS']}`" if env["SIDECAR_FLAGS"] else ""
drop = f"every {env['DROP_EVERY']}th message with \"keep\": false" if int(env["DROP_EVERY"]) > 0 else "every message kept"
print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `scripts/bench/pipeline.sh` (N={n}), "
      f"{env['MEASURED']}{flags}; nats-server {env['NATS_VERSION']} (JetStream, file store in /dev/shm), "
      f"nats.go {env['NATS_GO']}; {env['CPUS']} CPUs, load average {env['LOAD_END']} at the end.")
print()
print(f"{n} messages of 1 KiB JSON per run ({drop}: the filter drops those). One process each, nothing pinned.")
print()
print("| pipeline | publishing | msgs/s | ÷ raw JetStream | p50 ms | p99 ms | p99 ÷ raw | CPU µs/msg | of it nats-server | sidecars | Go program(s) | missing | duplicates | filtered out | let through | others' CPU |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for run, name, pace in rows:
    s, f = runs[run], figures[run]
    ref = runs.get(reference.get(run, ""), None)
    ratio = f"{s['rate'] / ref['rate']:.2f}×" if ref and ref["rate"] else "—"
    p99_ratio = f"{s['p99_ms'] / ref['p99_ms']:.1f}×" if ref and ref["p99_ms"] else "—"
    cpu = us(run, "nats_ticks") + us(run, "sidecar_ticks") + us(run, "client_ticks")
    filtered = s["messages"] - s["expected"]
    sidecars = f"{us(run, 'sidecar_ticks'):.1f}" if run.startswith("rigging") else "—"
    ours = f["nats_ticks"] + f["sidecar_ticks"] + f["client_ticks"]
    others = max(0.0, (f["busy_ticks"] - ours) / (f["wall"] * hz * int(env["CPUS"])))
    print(f"| {name} | {pace} | {s['rate']:.0f} | {ratio} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {p99_ratio} | "
          f"{cpu:.1f} | {us(run, 'nats_ticks'):.1f} | {sidecars} | {us(run, 'client_ticks'):.1f} | "
          f"{s['missing']} | {s['duplicates']} | {filtered if run.startswith('rigging') else '—'} | "
          f"{s['leaked'] if run.startswith('rigging') else '—'} | {others:.0%} |")
print()
notes = []
for run, _, _ in rows:
    s = runs[run]
    if s["end"] != "complete":
        notes.append(f"{run} ended on {s['end']} with {s['missing']} of {s['expected']} ids missing "
                     f"(first: {', '.join(s['missing_sample'])})")
    if s["duplicates"] and "header_ids" in s:
        notes.append(f"{run}: {s['deliveries']} deliveries carried {s['header_ids']} distinct Rigging-Message-Id "
                     f"values for {s['received'] + s['leaked'] + s['strays']} distinct body ids")
    for k in ("strays", "bad", "publish_errors", "ack_errors", "no_header", "read_errors"):
        if s.get(k):
            notes.append(f"{run}: {k.replace('_', ' ')} {s[k]}")
if notes:
    print("Notes: " + "; ".join(notes) + ".")
    print()
# What each sidecar counted over both Rigging runs (its /metrics after them, every label
# summed): each message delivered for the first time ends acked, filtered or dead-lettered.
stages = ["copy", "filter", "sink"]
names = ["delivered", "redelivered", "acked", "filtered", "failed", "dead_lettered", "out"]
counted = []
for i in range(3):
    c = dict.fromkeys(names, 0.0)
    try:
        for line in open(os.path.join(env["WORK"], f"rigging-half-metrics-{i}.txt")):
            if line.startswith("rigging_queue_"):
                metric = line.split("{")[0].split()[0][len("rigging_queue_"):].removesuffix("_total")
                if metric in c:
                    c[metric] += float(line.split()[-1])
    except FileNotFoundError:
        pass
    counted.append(c)
print(f"What the sidecars counted over both Rigging runs ({2 * n} messages in), from their /metrics:")
print()
print("| stage | delivered | redelivered | acked | filtered | failed | dead-lettered | published downstream |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for stage, c in zip(stages, counted):
    print(f"| {stage} | " + " | ".join(f"{c[k]:.0f}" for k in names) + " |")
print()
print(f"msgs/s: N over the time from the first publish to the last new arrival; Rigging's source "
      f"published at {figures['rigging-max']['publish_rate']:.0f} msgs/s in the full-speed run. Latency: arrival less the "
      "publish time in the payload (at full speed mostly the wait in the backlog). CPU: user+system "
      "time of nats-server, the sidecars and the Go program(s) over the run, ÷ N. Others' CPU: the share of the "
      f"machine's {env['CPUS']} CPUs that other processes used during the run (a compiler or test run beside "
      "it makes the figures of that run worth less). Sidecars' RSS after the "
      f"runs: {', '.join(f'{int(k) / 1024:.1f}' for k in env['RSS'].split())} MiB.")
PY
