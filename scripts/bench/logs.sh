#!/usr/bin/env bash
# Log adapter benchmark: nginx `combined` access-log lines → one JSON object per line, on
# one core, side by side in one run (alternating) with
#   - syslog-ng (Debian syslog-ng-core + syslog-ng-scl: apache-accesslog-parser() and
#     $(format-json)), the reference the issue names;
#   - Python `re` + `json`, the baseline anyone could write.
# fluent-bit and Vector, the usual tools of this kind, are in no registry reachable here.
#
# Rigging and Python read the cached input file as stdin; syslog-ng reads it from a pipe
# (`cat` pinned to CPU 1), because its stdin() source refuses a regular file and its
# file() source follows forever, while stdin() ends at EOF and so gives an exact end time.
# Each tool writes a file, which must have one line per input line, each with the fields
# parsed. Lines/s are given per wall-clock second (the tool alone on CPU 0) and per CPU
# second of the tool (the figure that holds on a busy machine).
#
#   scripts/bench/logs.sh                 2 million lines, 2 rounds
#   LINES=1000000 ROUNDS=3 scripts/bench/logs.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

LINES=${LINES:-2000000}
ROUNDS=${ROUNDS:-2}
# Bound every run: syslog-ng at its expected ~100k lines/s needs LINES/100k seconds.
RUN_LIMIT=$((LINES / 20000 + 30))

install_apt syslog-ng-core syslog-ng-scl python3
cargo build --release -q -p rigging-sidecar
bin=$PWD/target/release/rigging-sidecar

cache=${TMPDIR:-/tmp}/rigging-bench-logs
mkdir -p "$cache"
input=$cache/nginx-combined-$LINES.log
if [[ ! -s $input ]]; then
  echo "generating $LINES nginx combined lines into $input" >&2
  python3 scripts/bench/logs/gen_nginx.py "$LINES" >"$input.tmp"
  mv "$input.tmp" "$input"
fi
bytes=$(stat -c %s "$input")

# Outputs go to RAM when there is a tmpfs: 600+ MiB written to a disk that other jobs also
# write to gets throttled by writeback, which would measure the disk, not the parser.
shm=/dev/shm
[[ -d $shm && -w $shm ]] || shm=${TMPDIR:-/tmp}
work=$(mktemp -d -p "$shm")
trap 'rm -rf "$work"' EXIT

cat >"$work/syslog-ng.conf" <<CONF
@version: 3.38
@include "scl.conf"
options { stats-freq(0); log-msg-size(65536); };
source s_in { stdin(flags(no-parse)); };
parser p_apache { apache-accesslog-parser(prefix(".apache.")); };
destination d_out { file("$work/syslog-ng.json" template("\$(format-json --key .apache.* --shift-levels 1)\n")); };
log { source(s_in); parser(p_apache); destination(d_out); };
CONF

# The command line of each tool; each reads stdin and writes $work/<tool>.json.
tool_cmd() {
  case $1 in
    rigging) cmd=("$bin" logs --format nginx --input - --output "$work/rigging.json") ;;
    syslog-ng) cmd=(syslog-ng -F -f "$work/syslog-ng.conf" -R "$work/persist" -p "$work/pid" -c "$work/ctl" --no-caps) ;;
    python) cmd=(python3 scripts/bench/logs/python_baseline.py "$work/python.json") ;;
  esac
}

# What every output line of a tool must contain to count as parsed.
declare -A parsed_marker=([rigging]='"http_user_agent":' [syslog-ng]='"clientip":' [python]='"http_user_agent":')
declare -A wall_sum cpu_sum

# Runs the command in cmd on CPU 0, bounded in time, its times into $work/time.
pinned() {
  timeout "$RUN_LIMIT" taskset -c 0 /usr/bin/time -f '%e %U %S' -o "$work/time" "${cmd[@]}" \
    >/dev/null 2>"$work/$1.stderr"
}

measure() {
  local tool=$1 out=$work/$1.json times cmd
  rm -f "$out"
  tool_cmd "$tool"
  if [[ $tool == syslog-ng ]]; then
    taskset -c 1 cat "$input" | pinned "$tool"
  else
    pinned "$tool" <"$input"
  fi || {
    echo "$tool failed or ran over ${RUN_LIMIT}s:" >&2
    cat "$work/$tool.stderr" >&2
    exit 1
  }
  read -r -a times <"$work/time"
  local got parsed
  got=$(wc -l <"$out")
  parsed=$(grep -cF -- "${parsed_marker[$tool]}" "$out" || true)
  if ((got != LINES || parsed != LINES)); then
    echo "$tool wrote $got lines ($parsed parsed) for $LINES input lines" >&2
    exit 1
  fi
  rm -f "$out"
  wall_sum[$tool]=$(echo "${wall_sum[$tool]:-0} + ${times[0]}" | bc -l)
  cpu_sum[$tool]=$(echo "${cpu_sum[$tool]:-0} + ${times[1]} + ${times[2]}" | bc -l)
  printf '  round %d %-9s %6.2f s wall, %6.2f s CPU\n' "$round" "$tool" "${times[0]}" \
    "$(echo "${times[1]} + ${times[2]}" | bc -l)" >&2
}

tools=(rigging syslog-ng python)
echo "input: $LINES lines, $((bytes / 1048576)) MiB; $ROUNDS rounds, tools alternating" >&2
for round in $(seq 1 "$ROUNDS"); do
  for tool in "${tools[@]}"; do
    measure "$tool"
  done
done

rate() { echo "$LINES * $ROUNDS / ${wall_sum[$1]}" | bc -l; }
cpu_rate() { echo "$LINES * $ROUNDS / ${cpu_sum[$1]}" | bc -l; }
ref=$(rate syslog-ng)
ref_cpu=$(cpu_rate syslog-ng)
echo
echo "| tool (CPU 0) | lines/s | MiB/s | lines per CPU-second | × syslog-ng (wall) | × syslog-ng (CPU) |"
echo "|---|---:|---:|---:|---:|---:|"
for tool in "${tools[@]}"; do
  r=$(rate "$tool")
  c=$(cpu_rate "$tool")
  printf '| %s | %.0f | %.1f | %.0f | %.2f | %.2f |\n' "$tool" "$r" \
    "$(echo "$r * $bytes / $LINES / 1048576" | bc -l)" "$c" \
    "$(echo "$r / $ref" | bc -l)" "$(echo "$c / $ref_cpu" | bc -l)"
done
