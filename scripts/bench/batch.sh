#!/usr/bin/env bash
# Coordinated batch benchmark: `rigging-sidecar reduce` (Rigging's built-in reducer) beside
# the Python reference (scripts/bench/batch-reference/reduce.py, nats-py), reading the same
# outputs from the same JetStream KV bucket, in one run, the two alternating within each
# round.
#
#   scripts/bench/batch.sh                  10,000 and 100,000 outputs, `sum`, 3 rounds (about
#                                           1.5 minutes after the builds; the musl release
#                                           build: about 6 minutes)
#   COUNTS=10000 ROUNDS=5 scripts/bench/batch.sh
#   REDUCERS="sum count histogram concat" scripts/bench/batch.sh     about 5 minutes
#   TARGETS=reference scripts/bench/batch.sh        the reference alone (no build)
#   RIGGING_BIN=target/release/rigging-sidecar scripts/bench/batch.sh
#   KEEP=1 scripts/bench/batch.sh           keeps the work directory (logs, results)
#
# A nats-server of its own (Debian's, JetStream on, its store in /dev/shm, on 127.0.0.1, a
# free port), pinned to CPU 0. For each count N (COUNTS), a loader
# (batch-reference/load.py, nats-py, pipelined publishes) puts N outputs of ≈ 1 KiB into
# KV bucket `bench-outputs`, keys `nN.item-<i>`: JSON objects of 56 numeric fields
# (`series-000`: i % 10, `series-001`: a float in [0, 100), the rest integers), so every
# output is summable. Then, for each reducer (REDUCERS) and round (ROUNDS), on CPU 1 (one
# core: Rigging with RIGGING_WORKER_THREADS=1), each under `/usr/bin/time`:
#   rigging    rigging-sidecar reduce --nats URL --bucket bench-outputs --run nN
#              --reducer R [--path P --le B…] --results <a fresh bucket per run, so that
#              the exactly-once shortcut does not skip the work> --result-file F
#   reference  reduce.py --nats URL --bucket bench-outputs --run nN --reducer R [--path…]
# The reducers' options: count --path series-000; histogram --path series-001 --le 10
# --le 25 --le 50 --le 75 --le 90; sum and concat the whole output.
# Both results must be equal (as JSON; concat: line by line), and Rigging's summary must
# say it read and reduced all N outputs, or the script fails.
#
# Measured, per run: wall time, peak RSS (/usr/bin/time's %e and %M), user+system CPU of
# the reducer and of nats-server meanwhile, outputs/s (N ÷ wall); the share of the CPUs that
# other processes used meanwhile (/proc/stat less ours). A run during which that share was
# over DISTURBED or a compiler ran is marked and left out of the figures when quiet runs
# exist. The table gives medians.
#
# Knobs (environment): COUNTS ("10000 100000"), REDUCERS (sum), ROUNDS (3), TARGETS
# ("rigging reference"), DISTURBED (0.08), TIMEOUT (600: seconds a run may take), KEEP (0),
# RIGGING_BIN (a rigging-sidecar binary; by default the static musl release build of the
# working tree, as the image ships it) with RIGGING_COMMIT (what it was built from, for the
# report). The raw results (one JSON line per run) stay in a directory of their own, named
# at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

COUNTS=${COUNTS:-10000 100000}
REDUCERS=${REDUCERS:-sum}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-rigging reference}
DISTURBED=${DISTURBED:-0.08}
TIMEOUT=${TIMEOUT:-600}
KEEP=${KEEP:-0}
BUCKET=bench-outputs

log() { printf 'batch.sh: %s\n' "$*" >&2; }
want() { [[ " $TARGETS " == *" $1 "* ]]; }

install_apt nats-server python3 python3-venv time >&2

work=$(mktemp -d)
store=$(mktemp -d /dev/shm/rigging-bench-batch.XXXXXX)
raw=$(mktemp -d "${TMPDIR:-/tmp}/rigging-bench-batch.XXXXXX")
cleanup() {
  stop_started $? "$work"
  rm -rf "$store"
  if ((KEEP)); then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- the binaries ------------------------------------------------------------------------------
# nats-py in a venv outside the repository, for the loader and the reference.
venv=${XDG_CACHE_HOME:-$HOME/.cache}/rigging/bench-venv
if [[ ! -f $venv/.installed-nats-py ]]; then
  log "python venv with nats-py in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check nats-py
  touch "$venv/.installed-nats-py"
fi
PY=$venv/bin/python
REF=scripts/bench/batch-reference
"$PY" "$REF/reduce.py" --selftest >/dev/null
nats_py=$("$PY" -c 'import importlib.metadata as m; print(m.version("nats-py"))')

measured="no Rigging run"
if want rigging; then
  sidecar_binary "$work"
  BIN=$work/rigging-sidecar
  "$BIN" reduce --help >/dev/null 2>&1 || { log "$BIN has no reduce subcommand"; exit 1; }
fi

# ---- nats-server ----------------------------------------------------------------------------------
nats_port=$(free_port)
NATS=nats://127.0.0.1:$nats_port
taskset -c 0 nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$store" >"$work/nats-server.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_port 127.0.0.1 "$nats_port"
nats_version=$(nats-server --version | awk '{print $NF}')

watch_compilers "$work/compilers"
pids+=($!)

results=$raw/results.jsonl
: >"$results"

options() { # REDUCER: its options, one a line
  case $1 in
    count) printf '%s\n' --path series-000 ;;
    histogram) printf '%s\n' --path series-001 --le 10 --le 25 --le 50 --le 75 --le 90 ;;
  esac
}

# measure TARGET N REDUCER ROUND: one run; appends a JSON line to $results, logs one line.
measure() {
  local t=$1 n=$2 r=$3 round=$4 run=n$2 opts out tf t0 t1 busy0 busy1 nats0 nats1
  local name=$t.$n.$r.$round
  mapfile -t opts < <(options "$r")
  out=$work/result.$name
  tf=$work/time.$name
  local cmd
  case $t in
    rigging)
      cmd=(env RIGGING_WORKER_THREADS=1 "$BIN" reduce --nats "$NATS" --bucket "$BUCKET" --run "$run" --reducer "$r" "${opts[@]}"
        --results "bench-results-$n-$r-$round" --result-file "$out" --summary-file "$work/summary.$name"
        --termination-log "$work/termination.$name" --admin "127.0.0.1:$(free_port)") ;;
    reference)
      cmd=("$PY" "$REF/reduce.py" --nats "$NATS" --bucket "$BUCKET" --run "$run" --reducer "$r" "${opts[@]}") ;;
  esac
  nats0=$(cpu_ticks "$nats_pid") busy0=$(machine_busy) t0=$(date +%s.%N)
  if [[ $t == rigging ]]; then
    taskset -c 1 /usr/bin/time -f '%e %M %U %S' -o "$tf" timeout "$TIMEOUT" "${cmd[@]}" \
      >"$work/$name.log" 2>&1 || { log "$name failed"; tail -n 20 "$work/$name.log" >&2; exit 1; }
  else
    taskset -c 1 /usr/bin/time -f '%e %M %U %S' -o "$tf" timeout "$TIMEOUT" "${cmd[@]}" \
      >"$out" 2>"$work/$name.log" || { log "$name failed"; tail -n 20 "$work/$name.log" >&2; exit 1; }
  fi
  t1=$(date +%s.%N) busy1=$(machine_busy) nats1=$(cpu_ticks "$nats_pid")
  local wall rss user sys others dist
  read -r wall rss user sys < <(tail -n 1 "$tf")
  # What the rest of the machine used meanwhile, as a share of all CPUs: all busy time less
  # the reducer's and nats-server's.
  others=$(awk -v b=$((busy1 - busy0)) -v o=$((nats1 - nats0)) -v u="$user" -v s="$sys" \
    -v hz="$CLK_TCK" -v w="$(calc "$t1 - $t0")" -v cpus="$(nproc)" \
    'BEGIN {r = (b - o - (u + s) * hz) / (w * hz * cpus); printf "%.3f", r < 0 ? 0 : r}')
  dist=$(disturbed "$work/compilers" "${t0%.*}" "${t1%.*}" "$others" "$DISTURBED")
  TARGET=$t N=$n REDUCER=$r ROUND=$round WALL=$wall RSS=$rss USER_S=$user SYS_S=$sys \
    NATS_TICKS=$((nats1 - nats0)) HZ=$CLK_TCK OTHERS=$others DIST=$dist SUMMARY="$work/summary.$name" \
    python3 - >>"$results" <<'PY'
import json, os, sys
e = os.environ
r = dict(target=e["TARGET"], n=int(e["N"]), reducer=e["REDUCER"], round=int(e["ROUND"]),
         wall=float(e["WALL"]), rss_mib=int(e["RSS"]) / 1024, cpu=float(e["USER_S"]) + float(e["SYS_S"]),
         user=float(e["USER_S"]), sys=float(e["SYS_S"]), nats_cpu=int(e["NATS_TICKS"]) / int(e["HZ"]),
         others=float(e["OTHERS"]), disturbed=int(e["DIST"]))
r["per_s"] = r["n"] / r["wall"] if r["wall"] else 0
if os.path.exists(e["SUMMARY"]):  # Rigging's own summary of the run: every output read and reduced
    r["summary"] = s = json.load(open(e["SUMMARY"]))
    if (s["outputs"], s["reduced"]) != (r["n"], r["n"]):
        sys.exit(f"batch.sh: rigging read {s['outputs']} outputs and reduced {s['reduced']}, not {r['n']}: {s}")
print(json.dumps(r))
print(f"  {r['target']}: {r['wall']:.2f} s, {r['per_s']:,.0f} outputs/s, peak RSS {r['rss_mib']:.1f} MiB, "
      f"CPU {r['cpu']:.2f} s (nats-server {r['nats_cpu']:.2f} s); others {r['others']:.2f}"
      + (" DISTURBED" if r["disturbed"] else ""), file=sys.stderr)
PY
}

# same REDUCER A B: both results equal as JSON (concat: line by line), else fail.
same() {
  python3 - "$@" <<'PY' || exit 1
import json, sys
reducer, a, b = sys.argv[1:]
def read(path):
    text = open(path).read()
    if reducer == "concat":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)
x, y = read(a), read(b)
if x != y:
    print(f"batch.sh: the results differ: {a} and {b}", file=sys.stderr)
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y))[:10]:
            if x.get(k) != y.get(k):
                print(f"  {k}: {x.get(k)!r} != {y.get(k)!r}", file=sys.stderr)
    elif isinstance(x, list) and isinstance(y, list):
        print(f"  {len(x)} and {len(y)} lines", file=sys.stderr)
        for i, (p, q) in enumerate(zip(x, y)):
            if p != q:
                print(f"  line {i + 1}: {json.dumps(p)[:200]} != {json.dumps(q)[:200]}", file=sys.stderr)
                break
    sys.exit(1)
PY
}

# ---- the runs ----------------------------------------------------------------------------------------
read -ra targets <<<"$TARGETS"
read -ra reducers <<<"$REDUCERS"
started_at=$(date -u '+%F %H:%M UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A loaded
for n in $COUNTS; do
  log "loading $n outputs into $BUCKET"
  "$PY" "$REF/load.py" --nats "$NATS" --bucket "$BUCKET" --run "n$n" --n "$n" >"$work/load.$n.json" 2>"$work/load.$n.log"
  loaded[$n]=$(cat "$work/load.$n.json")
  for r in "${reducers[@]}"; do
    for round in $(seq 1 "$ROUNDS"); do
      log "$n outputs, $r, round $round/$ROUNDS"
      # The order alternates from round to round: neither always runs first.
      order=("${targets[@]}")
      ((round % 2)) || mapfile -t order < <(printf '%s\n' "${targets[@]}" | tac)
      for t in "${order[@]}"; do measure "$t" "$n" "$r" "$round"; done
      if want rigging && want reference; then
        same "$r" "$work/result.rigging.$n.$r.$round" "$work/result.reference.$n.$r.$round"
      fi
      # The results can be large (concat): one pair is enough to look at.
      ((KEEP)) || ((round == 1)) || rm -f "$work"/result.*."$n.$r.$round"
    done
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
cp "$work"/load.*.json "$raw/"

# ---- the table ------------------------------------------------------------------------------------
RESULTS=$results TARGETS=$TARGETS ROUNDS=$ROUNDS DISTURBED=$DISTURBED MEASURED=$measured \
  STARTED=$started_at LOAD_START=$load_start LOAD_END=$load_end CPUS=$(nproc) NATS_VERSION=$nats_version \
  NATS_PY=$nats_py PYTHON="$("$PY" --version)" LOADED="$(for n in "${!loaded[@]}"; do echo "${loaded[$n]}"; done)" \
  python3 - <<'PY' | tee "$raw/table.md"
import json, os, statistics

e = os.environ
runs = [json.loads(line) for line in open(e["RESULTS"])]
names = {"rigging": "Rigging `reduce`", "reference": "Python reference"}
loaded = {d["n"]: d for d in (json.loads(x) for x in e["LOADED"].splitlines() if x)}


def pick(target, n, reducer):
    mine = [r for r in runs if (r["target"], r["n"], r["reducer"]) == (target, n, reducer)]
    quiet = [r for r in mine if not r["disturbed"]]
    return (quiet or mine), len(quiet), len(mine)


def med(rs, key):
    return statistics.median(r[key] for r in rs)


print(f"Run {e['STARTED']}, `scripts/bench/batch.sh` (ROUNDS={e['ROUNDS']}), {e['MEASURED']}; nats-server "
      f"{e['NATS_VERSION']} (store in /dev/shm) on CPU 0, the reducers on CPU 1; {e['PYTHON']}, nats-py {e['NATS_PY']}; "
      f"{e['CPUS']} CPUs, load average {e['LOAD_START']} at the start, {e['LOAD_END']} at the end.")
print()
print("Loaded: " + "; ".join(f"{n:,} outputs, {d['bytes'] / n:.0f} B each, in {d['seconds']:.1f} s "
                             f"({n / d['seconds']:,.0f}/s)" for n, d in sorted(loaded.items())) + ".")
print()
print("| outputs | reducer | implementation | wall s | outputs/s | peak RSS MiB | CPU s (of it system) | nats-server CPU s | Python ÷ Rigging (wall, RSS) | runs counted |")
print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
rows = {}
keys = sorted({(r["n"], r["reducer"]) for r in runs}, key=lambda k: (k[1] != "sum", k[1], k[0]))
for n, reducer in keys:
    for target in e["TARGETS"].split():
        rs, quiet, total = pick(target, n, reducer)
        if not rs:
            continue
        rows[target, n, reducer] = row = dict(wall=med(rs, "wall"), rss=med(rs, "rss_mib"), cpu=med(rs, "cpu"),
                                              sys=med(rs, "sys"), nats=med(rs, "nats_cpu"), counted=f"{quiet}/{total}")
        ratio = "—"
        rig = rows.get(("rigging", n, reducer))
        if target == "reference" and rig:
            ratio = f"{row['wall'] / rig['wall']:.1f}×, {row['rss'] / rig['rss']:.1f}×"
        print(f"| {n:,} | {reducer} | {names[target]} | {row['wall']:.2f} | {n / row['wall']:,.0f} | "
              f"{row['rss']:.1f} | {row['cpu']:.2f} ({row['sys']:.2f}) | {row['nats']:.2f} | {ratio} | {row['counted']} |")
print()
print("Per run (wall s / peak RSS MiB; others' share of the CPUs; * = disturbed):")
for n, reducer in keys:
    for target in e["TARGETS"].split():
        parts = [f"{r['wall']:.2f}/{r['rss_mib']:.1f} {r['others']:.2f}{'*' if r['disturbed'] else ''}"
                 for r in runs if (r["target"], r["n"], r["reducer"]) == (target, n, reducer)]
        if parts:
            print(f"- {n:,} {reducer}, {target}: " + "; ".join(parts))
print()
counts = sorted({n for n, _ in keys})
for reducer in sorted({r for _, r in keys}):
    small = rows.get(("rigging", 10000, reducer))
    if small:
        ok = small["wall"] < 5
        print(f"- Goal, {reducer}: 10,000 outputs reduced in under 5 s: {small['wall']:.2f} s, "
              + ("**met**." if ok else f"**missed** by {small['wall'] / 5 - 1:.0%}."))
    lo, hi = rows.get(("rigging", counts[0], reducer)), rows.get(("rigging", counts[-1], reducer))
    if lo and hi and counts[0] != counts[-1]:
        growth = hi["rss"] / lo["rss"]
        print(f"- Goal, {reducer}: memory flat as the count grows (peak RSS at {counts[-1]:,} within 1.25× of "
              f"{counts[0]:,}): {lo['rss']:.1f} → {hi['rss']:.1f} MiB ({growth:.2f}×), "
              + ("**met**." if growth <= 1.25 else "**missed**."))
PY
log "raw results: $raw"
