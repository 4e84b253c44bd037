#!/usr/bin/env bash
# Redis → Prometheus: `rigging-sidecar metrics` against redis_exporter (Debian
# prometheus-redis-exporter) on the same redis-server, in one run, alternating A B A B.
#
# Fair by construction: the adapter runs with --interval 0s (no cache), so, like
# redis_exporter, every scrape sends INFO ALL to Redis; the table's "INFO/scrape" column
# (from Redis's own commandstats) shows it. Redis and the tool under test share CPU 0; wrk
# runs on CPU 1 with 4 connections for DURATION seconds per round.
#
# Usage: scripts/bench/metrics.sh            (≈ 1 minute plus the release build)
#        DURATION=10 ROUNDS=2 scripts/bench/metrics.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}

install_apt redis-server redis-tools wrk prometheus-redis-exporter
cargo build --release -q -p rigging-sidecar
SIDECAR=$PWD/target/release/rigging-sidecar

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_port with a second chance on a loaded machine, and the process's log if it never
# listens (a port taken between free_port and bind, say).
wait_listening() { # port log
  wait_port 127.0.0.1 "$1" || wait_port 127.0.0.1 "$1" || {
    echo "--- $2" >&2
    cat "$2" >&2
    exit 1
  }
}

REDIS_PORT=$(free_port)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --loglevel warning --enable-debug-command yes >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_listening "$REDIS_PORT" "$WORK/redis.log"
# Some keys in a few databases, so both tools render keyspace lines.
for db in 0 1 2; do
  redis-cli -p "$REDIS_PORT" -n "$db" DEBUG POPULATE 10000 "key$db" 32 >/dev/null
done

RIGGING_PORT=$(free_port)
taskset -c 0 "$SIDECAR" metrics --source "redis://127.0.0.1:$REDIS_PORT" \
  --admin "127.0.0.1:$RIGGING_PORT" --interval 0s 2>"$WORK/rigging.log" &
RIGGING_PID=$!
PIDS+=("$RIGGING_PID")

EXPORTER_PORT=$(free_port)
taskset -c 0 prometheus-redis-exporter --redis.addr "redis://127.0.0.1:$REDIS_PORT" \
  --web.listen-address "127.0.0.1:$EXPORTER_PORT" 2>"$WORK/exporter.log" &
EXPORTER_PID=$!
PIDS+=("$EXPORTER_PID")

wait_listening "$RIGGING_PORT" "$WORK/rigging.log"
wait_listening "$EXPORTER_PORT" "$WORK/exporter.log"

connections() {
  redis-cli -p "$REDIS_PORT" INFO stats | tr -d '\r' |
    awk -F: '/^total_connections_received:/ {print $2}'
}

# "command calls" for every command Redis has counted.
cmdstats() {
  redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_/ {sub("cmdstat_", "", $1); print $1, $3}'
}

info_calls() {
  redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
    awk -F'[=,]' '/^cmdstat_info:/ {print $2; found=1} END {if (!found) print 0}'
}

# wrk latency ("1.23ms", "950.00us", "1.01s") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

declare -A RPS P50 P99 CPU RSS RCPU PER_SCRAPE
ROWS=()
run_one() { # name port pid round
  local name=$1 port=$2 pid=$3 round=$4
  local body_lines ticks0 ticks1 info0 info1 out rps reqs p50 p99 cpu_ms rss info_per
  local rticks0 rticks1 conn0 conn1 redis_ms conn_per stats0 stats1
  body_lines=$(curl -s "http://127.0.0.1:$port/metrics" | grep -vc '^#')
  stats0=$(cmdstats)
  info0=$(info_calls)
  conn0=$(connections)
  ticks0=$(cpu_ticks "$pid")
  rticks0=$(cpu_ticks "$REDIS_PID")
  out=$(taskset -c 1 wrk -t1 -c4 -d"${DURATION}s" --latency "http://127.0.0.1:$port/metrics")
  rticks1=$(cpu_ticks "$REDIS_PID")
  ticks1=$(cpu_ticks "$pid")
  conn1=$(connections)
  info1=$(info_calls)
  stats1=$(cmdstats)
  rss=$(awk -v k="$(rss_kib "$pid")" 'BEGIN {printf "%.1f", k / 1024}')
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  cpu_ms=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v n="$reqs" \
    'BEGIN {printf "%.3f", t / hz * 1000 / n}')
  redis_ms=$(awk -v t=$((rticks1 - rticks0)) -v hz="$CLK_TCK" -v n="$reqs" \
    'BEGIN {printf "%.3f", t / hz * 1000 / n}')
  # Minus the measurement's own redis-cli calls: three INFOs counted between info0 and
  # info1, one connection between conn0 and conn1.
  info_per=$(awk -v d=$((info1 - info0 - 3)) -v n="$reqs" 'BEGIN {printf "%.2f", d / n}')
  conn_per=$(awk -v d=$((conn1 - conn0 - 1)) -v n="$reqs" 'BEGIN {printf "%.2f", d / n}')
  # Commands Redis ran per scrape (those seen at least once per ten scrapes).
  PER_SCRAPE[$name]=$(awk -v n="$reqs" 'NR == FNR {before[$1] = $2; next}
    {d = $2 - before[$1]; if (d >= n / 10) printf "%s %.2f, ", $1, d / n}' \
    <(echo "$stats0") <(echo "$stats1"))
  RPS[$name]+="$rps "
  P50[$name]+="$p50 "
  P99[$name]+="$p99 "
  CPU[$name]+="$cpu_ms "
  RSS[$name]+="$rss "
  RCPU[$name]+="$redis_ms "
  ROWS+=("| $name | $round | $rps | $p50 | $p99 | $cpu_ms | $rss | $redis_ms | $info_per | $conn_per | $body_lines |")
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {
  if (NR % 2) print a[(NR + 1) / 2]; else printf "%g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

for round in $(seq 1 "$ROUNDS"); do
  run_one rigging "$RIGGING_PORT" "$RIGGING_PID" "$round"
  run_one redis_exporter "$EXPORTER_PORT" "$EXPORTER_PID" "$round"
done

echo
echo "Redis → Prometheus, wrk -t1 -c4 -d${DURATION}s on /metrics, ${ROUNDS} rounds A B; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs"
echo
echo "| tool | round | scrapes/s | p50 ms | p99 ms | CPU ms/scrape | RSS MiB | Redis CPU ms/scrape | INFO/scrape | connections/scrape | samples |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
for name in rigging redis_exporter; do
  echo "Commands Redis ran per scrape of $name (last round): ${PER_SCRAPE[$name]%, }"
  echo
done
r_rps=$(median <<<"${RPS[rigging]}"); e_rps=$(median <<<"${RPS[redis_exporter]}")
r_p50=$(median <<<"${P50[rigging]}"); e_p50=$(median <<<"${P50[redis_exporter]}")
r_p99=$(median <<<"${P99[rigging]}"); e_p99=$(median <<<"${P99[redis_exporter]}")
r_cpu=$(median <<<"${CPU[rigging]}"); e_cpu=$(median <<<"${CPU[redis_exporter]}")
r_rss=$(median <<<"${RSS[rigging]}"); e_rss=$(median <<<"${RSS[redis_exporter]}")
r_red=$(median <<<"${RCPU[rigging]}"); e_red=$(median <<<"${RCPU[redis_exporter]}")
echo "| median | rigging | redis_exporter | rigging ÷ redis_exporter |"
echo "|---|---|---|---|"
awk -v a="$r_rps" -v b="$e_rps" 'BEGIN {printf "| scrapes/s | %s | %s | %.2f× |\n", a, b, a / b}'
awk -v a="$r_p50" -v b="$e_p50" 'BEGIN {printf "| p50 ms | %s | %s | %.2f× |\n", a, b, a / b}'
awk -v a="$r_p99" -v b="$e_p99" 'BEGIN {printf "| p99 ms | %s | %s | %.2f× |\n", a, b, a / b}'
awk -v a="$r_cpu" -v b="$e_cpu" 'BEGIN {printf "| CPU ms/scrape | %s | %s | %.2f× |\n", a, b, a / b}'
awk -v a="$r_rss" -v b="$e_rss" 'BEGIN {printf "| RSS MiB | %s | %s | %.2f× |\n", a, b, a / b}'
awk -v a="$r_red" -v b="$e_red" 'BEGIN {printf "| Redis CPU ms/scrape | %s | %s | %.2f× |\n", a, b, a / b}'
