#!/usr/bin/env bash
# Sharding ambassador benchmark: Rigging's `shard` vs nutcracker (twemproxy) over the same
# three redis-server / memcached backends, and vs nginx `hash $http_x_key consistent` for
# HTTP. Targets alternate (direct, nutcracker, rigging, direct, …) within one run.
# Servers and proxies run on CPU 0, load generators on CPU 1.
#
# Usage: scripts/bench/shard.sh [ROUNDS]   (default 2 rounds; 5–9 minutes)
#        ONLY=redis|memcached|http scripts/bench/shard.sh …   (one workload)
#        RIGGING_BIN=/path/to/rigging-sidecar scripts/bench/shard.sh …   (no build)
#        PROFILE=1 scripts/bench/shard.sh …   (and perf profiles of Rigging's redis P16 and
#        memcached runs, PROFILE_SECONDS (8) each, in PROFILE_OUT: target/bench-shard-profile)
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

ROUNDS=${1:-2}
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-8}
PROFILE_OUT=${PROFILE_OUT:-target/bench-shard-profile}
packages=(redis-server redis-tools memcached libmemcached-tools nutcracker nginx-light wrk)
((PROFILE)) && packages+=(linux-perf)
install_apt "${packages[@]}"

WORK=$(mktemp -d)
# What the image ships (the static musl release build), or $RIGGING_BIN.
sidecar_binary "$WORK"
BIN=$WORK/rigging-sidecar
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'tail -n 5 "$WORK"/*.log "$WORK"/*/error.log >&2' ERR


on_cpu1() { taskset -c 1 "$@"; }

declare -A PID
start() { # NAME CMD… : runs CMD in the background on CPU 0, records its pid in PID[NAME]
  local name=$1
  shift
  taskset -c 0 "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  PID[$name]=$!
}

# --- backends ---------------------------------------------------------------------------
R=() M=() H=()
for i in 0 1 2; do
  R[i]=$(free_port)
  start "redis$i" redis-server --port "${R[i]}" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning
  M[i]=$(free_port)
  start "mc$i" memcached -l 127.0.0.1 -p "${M[i]}" -U 0 -u nobody -m 64 -t 1
  H[i]=$(free_port)
done
NGINX_PROXY=$(free_port)
nginx_conf() { # DIR BODY… : an nginx config with one worker, its files under DIR
  local dir=$1 d
  shift
  mkdir -p "$dir"
  {
    echo "daemon off; worker_processes 1; pid $dir/pid; error_log $dir/error.log;"
    echo "events { worker_connections 1024; }"
    echo "http { access_log off;"
    for d in client_body proxy fastcgi uwsgi scgi; do echo " ${d}_temp_path $dir/$d;"; done
    printf ' %s\n' "$@"
    echo "}"
  } >"$dir/nginx.conf"
}
backends=() upstream=()
for i in 0 1 2; do
  backends+=("server { listen 127.0.0.1:${H[i]}; location / { return 200 \"backend-$i $(printf '%090d' 0)\"; } }")
  upstream+=("server 127.0.0.1:${H[i]};")
done
nginx_conf "$WORK/backends" "${backends[@]}"
nginx_conf "$WORK/proxy" "upstream shards { hash \$http_x_key consistent; keepalive 64; ${upstream[*]} }" \
  "server { listen 127.0.0.1:$NGINX_PROXY; location / { proxy_pass http://shards; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
start nginx_backends nginx -p "$WORK/backends" -c "$WORK/backends/nginx.conf" -e "$WORK/backends/error.log"
start nginx nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log"
for i in 0 1 2; do wait_port 127.0.0.1 "${R[i]}"; wait_port 127.0.0.1 "${M[i]}"; wait_port 127.0.0.1 "${H[i]}"; done

# --- proxies ----------------------------------------------------------------------------
NC_REDIS=$(free_port) NC_MC=$(free_port) RG_REDIS=$(free_port) RG_MC=$(free_port) RG_HTTP=$(free_port)
{
  # nutcracker's parser wants block-style YAML.
  printf 'redis:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n  timeout: 5000\n  servers:\n' "$NC_REDIS"
  printf '   - 127.0.0.1:%s:1\n' "${R[@]}"
  printf 'mc:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n  timeout: 5000\n  servers:\n' "$NC_MC"
  printf '   - 127.0.0.1:%s:1\n' "${M[@]}"
} >"$WORK/nutcracker.yml"
start nutcracker nutcracker -c "$WORK/nutcracker.yml" -s "$(free_port)" -a 127.0.0.1 -o "$WORK/nutcracker.out" -p "$WORK/nutcracker.pid"
servers() { local p; for p in "$@"; do printf -- '--server 127.0.0.1:%s:1 ' "$p"; done; }
export RIGGING_WORKER_THREADS=1
# shellcheck disable=SC2046 # word splitting of the server flags is intended
start rg_redis "$BIN" shard --protocol redis --listen "127.0.0.1:$RG_REDIS" --admin "127.0.0.1:$(free_port)" $(servers "${R[@]}")
# shellcheck disable=SC2046
start rg_mc "$BIN" shard --protocol memcached --listen "127.0.0.1:$RG_MC" --admin "127.0.0.1:$(free_port)" $(servers "${M[@]}")
# shellcheck disable=SC2046
start rg_http "$BIN" shard --protocol http --shard-key header:X-Key --listen "127.0.0.1:$RG_HTTP" --admin "127.0.0.1:$(free_port)" $(servers "${H[@]}")
for p in "$NC_REDIS" "$NC_MC" "$RG_REDIS" "$RG_MC" "$RG_HTTP" "$NGINX_PROXY"; do wait_port 127.0.0.1 "$p"; done
sleep 0.5
IDLE_RG=$(rss_kib "${PID[rg_redis]}")
IDLE_NC=$(rss_kib "${PID[nutcracker]}")

# --- load ---------------------------------------------------------------------------------
declare -A SUM CPU N
record() { # KEY OPS CPU_US_PER_OP
  SUM[$1]=$(awk -v a="${SUM[$1]:-0}" -v b="$2" 'BEGIN{print a+b}')
  CPU[$1]=$(awk -v a="${CPU[$1]:-0}" -v b="$3" 'BEGIN{print a+b}')
  N[$1]=$((${N[$1]:-0} + 1))
}

redis_run() { # TARGET PORT PID PIPELINE
  local target=$1 port=$2 pid=$3 pipe=$4 n before after ops
  n=$((pipe == 1 ? 100000 : 600000))
  before=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
  ops=$(on_cpu1 timeout 60 redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -r 100000 -n "$n" -P "$pipe" -t get,set -q --csv 2>/dev/null |
    awk -F'"' '/"SET"|"GET"/ {s += $4; k++} END {print (k ? s / k : 0)}') || ops=0
  after=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
  record "redis P$pipe $target" "$ops" "$(awk -v t=$((after - before)) -v c="$CLK_TCK" -v n=$((2 * n)) 'BEGIN{print t / c / n * 1e6}')"
}

mc_run() { # TARGET PORT PID
  local target=$1 port=$2 pid=$3 before after secs ops=0 t
  before=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
  for t in set get; do
    secs=$(on_cpu1 timeout 60 memcslap -s "127.0.0.1:$port" -c 50 -e 1000 -t "$t" 2>&1 | awk '/^Time to (get|set)/ {print $(NF-1)}') || secs=0
    ops=$(awk -v a="$ops" -v s="${secs:-0}" 'BEGIN{print a + (s > 0 ? 50000 / s / 2 : 0)}')
  done
  after=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
  record "memcached $target" "$ops" "$(awk -v t=$((after - before)) -v c="$CLK_TCK" 'BEGIN{print t / c / 100000 * 1e6}')"
}

cat >"$WORK/key.lua" <<'LUA'
request = function()
  return wrk.format(nil, "/", { ["X-Key"] = "user" .. math.random(100000) })
end
LUA
http_run() { # TARGET PORT PID
  local target=$1 port=$2 pid=$3 before after out rps
  before=$(tree_ticks "$pid")
  out=$(on_cpu1 wrk -t1 -c50 -d8s -s "$WORK/key.lua" "http://127.0.0.1:$port/") || out=""
  after=$(tree_ticks "$pid")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  rps=${rps:-0}
  record "http $target" "$rps" "$(awk -v t=$((after - before)) -v c="$CLK_TCK" -v r="$rps" 'BEGIN{print t / c / (r * 8) * 1e6}')"
}

ONLY=${ONLY:-all}
want() { [[ $ONLY == all || $ONLY == "$1" ]]; }
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  if want redis; then
    for pipe in 1 16; do
      redis_run direct "${R[0]}" "" "$pipe"
      redis_run nutcracker "$NC_REDIS" "${PID[nutcracker]}" "$pipe"
      redis_run rigging "$RG_REDIS" "${PID[rg_redis]}" "$pipe"
    done
  fi
  if want memcached; then
    mc_run direct "${M[0]}" ""
    mc_run nutcracker "$NC_MC" "${PID[nutcracker]}"
    mc_run rigging "$RG_MC" "${PID[rg_mc]}"
  fi
  if want http; then
    http_run nginx "$NGINX_PROXY" "${PID[nginx]}"
    http_run rigging "$RG_HTTP" "${PID[rg_http]}"
  fi
done

if ((PROFILE)); then
  echo "profiling Rigging: redis P16, then memcached (${PROFILE_SECONDS}s each)" >&2
  perf_profile "${PID[rg_redis]}" "$PROFILE_OUT/redis-p16" on_cpu1 timeout "$PROFILE_SECONDS" \
    redis-benchmark -h 127.0.0.1 -p "$RG_REDIS" -c 50 -r 100000 -n 100000000 -P 16 -t get -q
  perf_profile "${PID[rg_mc]}" "$PROFILE_OUT/memcached" on_cpu1 timeout "$PROFILE_SECONDS" \
    memcslap -s "127.0.0.1:$RG_MC" -c 50 -e 100000 -t get
fi

avg() { awk -v s="${SUM[$1]:-0}" -v n="${N[$1]:-1}" 'BEGIN{printf "%.0f", s / n}'; }
cpu() { awk -v s="${CPU[$1]:-0}" -v n="${N[$1]:-1}" 'BEGIN{printf "%.1f", s / n}'; }
ratio() { awk -v a="$(avg "$1")" -v b="$(avg "$2")" 'BEGIN{printf "%.2f×", (b > 0 ? a / b : 0)}'; }

echo
echo "| workload | direct (one backend) | reference | Rigging | Rigging ÷ reference | CPU µs/op ref / Rigging |"
echo "|---|---|---|---|---|---|"
for w in "redis P1" "redis P16" "memcached"; do
  echo "| $w GET+SET | $(avg "$w direct") | nutcracker $(avg "$w nutcracker") | $(avg "$w rigging") | $(ratio "$w rigging" "$w nutcracker") | $(cpu "$w nutcracker") / $(cpu "$w rigging") |"
done
echo "| http (wrk -c50, random X-Key) | – | nginx hash consistent $(avg "http nginx") | $(avg "http rigging") | $(ratio "http rigging" "http nginx") | $(cpu "http nginx") / $(cpu "http rigging") |"
echo
echo "Idle RSS: Rigging redis $((IDLE_RG / 1024)).$(((IDLE_RG % 1024) * 10 / 1024)) MiB, nutcracker $((IDLE_NC / 1024)).$(((IDLE_NC % 1024) * 10 / 1024)) MiB; after load: Rigging $(($(rss_kib "${PID[rg_redis]}") / 1024)) MiB, nutcracker $(($(rss_kib "${PID[nutcracker]}") / 1024)) MiB."
echo "ops/s are the mean of $ROUNDS alternating rounds (redis: mean of GET and SET); $measured; $(date -u +%F), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)."
