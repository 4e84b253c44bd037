#!/usr/bin/env bash
# HTTP ambassador benchmark: `rigging-sidecar http` beside the tools it replaces, on the
# same backends, in one run, the targets alternating within each round.
#
#   scripts/bench/http.sh                 # every case, 3 rounds (about 6 minutes)
#   CASES="rr cache" ROUNDS=2 scripts/bench/http.sh
#   PROFILE=1 CASES="rr cache" scripts/bench/http.sh   # and perf profiles of those cases
#   INSTRUCTIONS=1 CASES="rr shard" scripts/bench/http.sh   # and instructions per request
#   KERNEL=1 CASES=rr scripts/bench/http.sh   # and system calls, page faults and context
#                                             # switches per request of each rr proxy
#
# Cases (CASES, in this order by default):
#   rr     round robin over three nginx backends (one process with one worker each,
#          100-byte body, keep-alive): Rigging `http` vs haproxy (`balance roundrobin`,
#          `nbthread 1`, `http-reuse always`) vs nginx (`upstream … keepalive 64`,
#          one worker); the first backend reached directly for reference;
#   shard  `rigging-sidecar shard --protocol http --shard-key header:X-Key` vs nginx
#          `hash $http_x_key consistent` (keepalive 64) over the same three backends, a
#          random X-Key per request (the HTTP row of shard.sh, here with p99 and RSS);
#   cache  the cache hit path: Rigging `http` with a `cache` block and `cache: true` vs
#          Varnish 7.1 (`-s malloc,64m`, one thread pool), one 100-byte object whose
#          backend answers `Cache-Control: max-age=3600`; the backend directly for
#          reference. The backend's own request counter (nginx stub_status) tells how many
#          requests each cache let through.
# Every server and proxy runs on CPU 0 (`taskset -c 0`; Varnish's threads too), wrk on
# CPU 1. Rigging runs with RIGGING_WORKER_THREADS=1 (tokio's current-thread scheduler),
# so every proxy has one thread on one core. `wrk -t1 -c$CONNS -d${DURATION}s --latency`;
# CPU µs per request is the proxy's own user+system time (fields 14+15 of /proc/PID/stat,
# the whole process tree: nginx master and worker, Varnish manager and child) divided by
# the requests wrk completed; RSS is VmRSS after the runs of the process that does the
# work (nginx's worker, Varnish's child, haproxy, Rigging).
# Knobs (environment): DURATION (10), ROUNDS (3), CONNS (50), CASES, PROFILE (0),
# DISTURBED (0.08: a run during which other processes used more than this share of the
# machine's CPU, or a compiler ran, is left out of the medians when quiet runs exist),
# PROFILE_SECONDS (8), PROFILE_OUT (target/bench-http-profile: PROFILE=1 writes rr/ and
# cache/ there, see profile_breakdown.py), INSTRUCTIONS (0: 1 runs
# Rigging's rr and shard cases under callgrind and reports its user-space instructions per
# request: a count that, unlike req/s, does not move with the machine's noise, for
# comparing builds; the callgrind file and its breakdowns by function and by crate go to
# PROFILE_OUT), INSTRUCTION_REQUESTS (5000), KERNEL (0: 1 adds system calls, page faults
# and context switches per request of the rr proxies, PROFILE_SECONDS each), RIGGING_BIN (a binary to
# use instead of building the working tree) with RIGGING_COMMIT (what it was built from,
# for the report).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
CASES=${CASES:-rr shard cache}
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-8}
PROFILE_OUT=${PROFILE_OUT:-target/bench-http-profile}
INSTRUCTIONS=${INSTRUCTIONS:-0}
KERNEL=${KERNEL:-0}
INSTRUCTION_REQUESTS=${INSTRUCTION_REQUESTS:-5000}
DISTURBED=${DISTURBED:-0.08}

log() { printf '%s\n' "$*" >&2; }
want() { [[ " $CASES " == *" $1 "* ]]; }

packages=(nginx-light haproxy wrk curl python3)
want cache && packages+=(varnish)
((PROFILE)) && packages+=(linux-perf)
((INSTRUCTIONS)) && packages+=(valgrind)
((KERNEL)) && packages+=(strace)
install_apt "${packages[@]}"

work=$(mktemp -d)
# What the image ships (the static musl release build), or $RIGGING_BIN.
sidecar_binary "$work"
BIN=$work/rigging-sidecar
cleanup() {
  stop_started $? "$work" "$work"/*/error.log
  rm -rf "$work"
}
trap cleanup EXIT

# Background processes never write to our stdout: a command substitution around one
# would wait for it forever. spawn NAME CMD… sets $started to the new PID.
started=
spawn() {
  local name=$1
  shift
  taskset -c 0 "$@" >"$work/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
}

# The first child of $1 (nginx's worker, Varnish's child), once there is one.
first_child() {
  local c
  for _ in $(seq 1 1000); do
    c=$(pgrep -P "$1" | head -1) && [[ -n $c ]] && { echo "$c"; return; }
    sleep 0.01
  done
  log "process $1 has no child"
  return 1
}

# User-mode CPU ticks (field 14 alone) of a process and its children.
tree_user_ticks() {
  local total kid kids
  total=$(awk '{print $14}' "/proc/$1/stat")
  read -ra kids <<<"$(cat /proc/"$1"/task/*/children 2>/dev/null)"
  for kid in "${kids[@]}"; do total=$((total + $(awk '{print $14}' "/proc/$kid/stat"))); done
  echo "$total"
}

user_line=""
((EUID == 0)) && user_line="user root;"

# An nginx with one worker; $1 = name, the rest = lines of its http{} block.
start_nginx() {
  local dir=$work/$1 d
  shift
  mkdir -p "$dir"
  {
    echo "$user_line"
    echo "worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off; keepalive_requests 10000000;"
    for d in client_body proxy fastcgi uwsgi scgi; do echo "  ${d}_temp_path $dir/$d;"; done
    printf '  %s\n' "$@"
    echo "}"
  } >"$dir/nginx.conf"
  spawn "$(basename "$dir")" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}

# 100-byte bodies that name their backend: "backend-N xxx…x".
body() { local head="backend-$1 "; printf '%s%s' "$head" "$(printf 'x%.0s' $(seq 1 $((100 - ${#head}))))"; }

# ---- backends: three nginx processes, one worker each ----------------------------------
declare -A port pid work_pid admin
B=() backend_master=()
for i in 0 1 2; do
  B[i]=$(free_port)
  start_nginx "backend$i" "server {
    listen 127.0.0.1:${B[i]};
    location / { return 200 '$(body "$i")'; }
    location = /obj { add_header Cache-Control 'max-age=3600'; return 200 '$(body "$i")'; }
    location = /stub { stub_status; }
  }"
  backend_master[i]=$started
  wait_port 127.0.0.1 "${B[i]}"
done
port[direct]=${B[0]}
pid[direct]=${backend_master[0]}
work_pid[direct]=$(first_child "${backend_master[0]}")
port[direct-obj]=${B[0]}
pid[direct-obj]=${pid[direct]}
work_pid[direct-obj]=${work_pid[direct]}

servers_yaml() { local p out=(); for p in "$@"; do out+=("{address: \"127.0.0.1:$p\"}"); done; local IFS=,; echo "[${out[*]}]"; }

start_rigging_http() { # $1 name, $2 config text
  local name=$1
  printf '%s\n' "$2" >"$work/$name.yaml"
  port[$name]=$(free_port)
  admin[$name]=$(free_port)
  spawn "$name" env RIGGING_WORKER_THREADS=1 "$BIN" http --config "$work/$name.yaml" \
    --listen "127.0.0.1:${port[$name]}" --admin "127.0.0.1:${admin[$name]}"
  pid[$name]=$started
  work_pid[$name]=$started
  wait_port 127.0.0.1 "${port[$name]}"
}

upstream_lines() { local p; for p in "${B[@]}"; do printf 'server 127.0.0.1:%s; ' "$p"; done; }
# $1 name, $2 upstream balancing line ("" for round robin), $3 extra proxy_set_header lines
start_nginx_proxy() {
  local name=$1
  port[$name]=$(free_port)
  start_nginx "$name" "upstream app { $2 $(upstream_lines) keepalive 64; keepalive_requests 10000000; }" \
    "server {
    listen 127.0.0.1:${port[$name]};
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      $3
    }
  }"
  wait_port 127.0.0.1 "${port[$name]}"
  pid[$name]=$started
  work_pid[$name]=$(first_child "$started")
}

if want rr; then
  start_rigging_http rigging "routes:
  - name: main
    backend: pool
backends:
  - name: pool
    servers: $(servers_yaml "${B[@]}")"

  port[haproxy]=$(free_port)
  mkdir -p "$work/haproxy"
  {
    cat <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:${port[haproxy]}
  option forwardfor
  default_backend app
backend app
  balance roundrobin
EOF
    for i in 0 1 2; do echo "  server s$i 127.0.0.1:${B[i]}"; done
  } >"$work/haproxy/haproxy.cfg"
  spawn haproxy haproxy -db -f "$work/haproxy/haproxy.cfg"
  pid[haproxy]=$started
  work_pid[haproxy]=$started
  wait_port 127.0.0.1 "${port[haproxy]}"

  # nginx's default balancing is round robin.
  # shellcheck disable=SC2016 # nginx variables, for nginx
  start_nginx_proxy nginx "" 'proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;'
fi

if want shard; then
  port[rigging-shard]=$(free_port)
  shard_flags=()
  for p in "${B[@]}"; do shard_flags+=(--server "127.0.0.1:$p:1"); done
  spawn rigging-shard env RIGGING_WORKER_THREADS=1 "$BIN" shard --protocol http --shard-key header:X-Key \
    --listen "127.0.0.1:${port[rigging-shard]}" --admin "127.0.0.1:$(free_port)" "${shard_flags[@]}"
  pid[rigging-shard]=$started
  work_pid[rigging-shard]=$started
  wait_port 127.0.0.1 "${port[rigging-shard]}"
  # As in shard.sh: Rigging's shard mode adds no forwarding headers, so nginx adds none.
  # shellcheck disable=SC2016 # an nginx variable
  start_nginx_proxy nginx-hash 'hash $http_x_key consistent;' ""
fi

if want cache; then
  start_rigging_http rigging-cache "cache:
  maxSize: 64Mi
routes:
  - name: main
    backend: pool
    cache: true
backends:
  - name: pool
    servers: $(servers_yaml "${B[0]}")"

  port[varnish]=$(free_port)
  # One thread pool; Varnish serves each client connection on a worker thread of its own,
  # so the pool keeps enough of them for $CONNS connections. -j none: no privilege
  # separation (its work directory is ours, under $work).
  spawn varnish varnishd -F -j none -n "$work/varnish" -a "127.0.0.1:${port[varnish]}" \
    -b "127.0.0.1:${B[0]}" -s malloc,64m -T none -p thread_pools=1 \
    -p thread_pool_min=$((CONNS + 20)) -p thread_pool_max=$((CONNS + 200))
  pid[varnish]=$started
  wait_port 127.0.0.1 "${port[varnish]}"
  work_pid[varnish]=$(first_child "$started")
fi

# ---- checks ------------------------------------------------------------------------------
# Every proxy answers, and the balancing ones reach all three backends.
backends_seen() { # $1 target, extra curl args after
  local target=$1 urls=() i
  shift
  for i in $(seq 1 30); do urls+=("http://127.0.0.1:${port[$target]}/"); done
  curl -sf "$@" "${urls[@]}" | grep -o 'backend-[0-9]' | sort -u | wc -l
}
if want rr; then
  for t in rigging haproxy nginx; do
    n=$(backends_seen "$t")
    ((n == 3)) || { log "$t reached $n of 3 backends"; exit 1; }
  done
fi
if want shard; then
  for t in rigging-shard nginx-hash; do
    n=$(backends_seen "$t" -H "X-Key: one-key")
    ((n == 1)) || { log "$t spread one key over $n backends"; exit 1; }
  done
fi
stub_requests() { curl -sf "http://127.0.0.1:${B[0]}/stub" | awk 'NR == 3 {print $3}'; }
cache_metric() { # $1 result label: rigging_http_cache_requests_total{result=…}
  curl -sf "http://127.0.0.1:${admin[rigging-cache]}/metrics" |
    awk -v r="result=\"$1\"" '/^rigging_http_cache_requests_total/ && index($0, r) {s += $NF} END {print s + 0}'
}
declare -A caches
if want cache; then
  for t in rigging-cache varnish; do
    before=$(stub_requests)
    for _ in 1 2 3; do curl -sf -o /dev/null "http://127.0.0.1:${port[$t]}/obj"; done
    age=$(curl -sfi "http://127.0.0.1:${port[$t]}/obj" | tr -d '\r' | awk -F': ' 'tolower($1) == "age" {print $2}')
    through=$(($(stub_requests) - before - 1))
    if ((through <= 1)); then caches[$t]=yes; else caches[$t]=no; fi
    log "$t: 4 GETs of /obj, $through reached the backend, Age: ${age:-none} -> caches: ${caches[$t]}"
  done
  log "Rigging cache lookups so far: hit $(cache_metric hit), miss $(cache_metric miss)"
fi
sleep 1

# ---- load --------------------------------------------------------------------------------
to_ms() { # wrk latency like 812.00us / 1.20ms / 1.01s -> milliseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else print v }'
}

cat >"$work/key.lua" <<'LUA'
request = function()
  return wrk.format(nil, "/", { ["X-Key"] = "user" .. math.random(100000) })
end
LUA

# Clock ticks of the backends and of the process tree $1 (once, when $1 is a backend).
our_ticks() {
  local total=0 m
  for m in "${backend_master[@]}"; do total=$((total + $(tree_ticks "$m"))); done
  [[ " ${backend_master[*]} " == *" $1 "* ]] || total=$((total + $(tree_ticks "$1")))
  echo "$total"
}

# One wrk run: target $1, case $2, path $3, extra wrk args after. Appends
# "rps p50 p99 cpu_us errors backend_requests_per_request disturbed others user_cpu_us" to
# $work/result.$2.$1 (others: the share of the machine's CPU that other processes used
# during the run; disturbed: 1 when that is over $DISTURBED or a compiler ran).
run_wrk() {
  local target=$1 case=$2 path=$3
  shift 3
  local p=${pid[$target]} before after out stub0=0 stub1=0 t0 t1 disturbed
  [[ $case == cache ]] && stub0=$(stub_requests)
  local busy0 busy1 ours0 ours1 others user0 user1 user
  t0=$(date +%s)
  busy0=$(machine_busy) ours0=$(our_ticks "$p")
  before=$(tree_ticks "$p") user0=$(tree_user_ticks "$p")
  # `times` in the same subshell: the CPU time wrk used (its last line: children's).
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "http://127.0.0.1:${port[$target]}$path" 2>&1 || true; times)
  after=$(tree_ticks "$p") user1=$(tree_user_ticks "$p")
  busy1=$(machine_busy) ours1=$(our_ticks "$p")
  t1=$(date +%s)
  others=$(others_share $((busy1 - busy0)) $((ours1 - ours0)) "$(tail -1 <<<"$out")" "$DURATION")
  [[ $case == cache ]] && stub1=$(stub_requests)
  disturbed=$(disturbed "$work/compilers" "$t0" "$t1" "$others" "$DISTURBED")
  local rps n p50 p99 errors cpu through
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  if [[ -z $n || $n == 0 ]]; then
    log "  $case $target: NO REQUESTS, left out of the medians; wrk said:"
    log "$out"
    echo 1 >>"$work/failed.$case.$target"
    return 0
  fi
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx/ {e += $NF} /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print e + 0}' <<<"$out")
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
  user=$(awk -v t=$((user1 - user0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
  through=$(awk -v a="$stub0" -v b="$stub1" -v n="$n" 'BEGIN {printf "%.4f", (b - a - 1) / n}')
  [[ $case == cache ]] || through=-
  echo "$rps $p50 $p99 $cpu $errors $through $disturbed $others $user" >>"$work/result.$case.$target"
  log "  $case $target: $rps req/s p50 ${p50}ms p99 ${p99}ms cpu ${cpu}us/req (user $user) errors $errors backend/req $through others $others$( ((disturbed)) && echo ' DISTURBED')"
}

declare -A targets=(
  [rr]="direct rigging haproxy nginx"
  [shard]="rigging-shard nginx-hash"
  [cache]="direct-obj rigging-cache varnish"
)
declare -A path=([rr]=/ [shard]=/ [cache]=/obj)
# Case $1's Rigging target, and its proxies (Rigging and the references, not the backend).
rigging_target() { local t; for t in ${targets[$1]}; do case $t in rigging*) echo "$t" ;; esac; done; }
proxies() { local t; for t in ${targets[$1]}; do case $t in direct*) ;; *) echo "$t" ;; esac; done; }
# Targets alternate within a round; the order rotates from round to round, so no target
# always runs first (or right after the same neighbour).
rotate() { # $1 = round, the rest = targets
  local r=$1
  shift
  local a=("$@") n=$# i
  for ((i = 0; i < n; i++)); do printf '%s ' "${a[(i + r) % n]}"; done
}

# Other people compile on this machine: a run they disturbed is left out of the medians
# when others were not.
watch_compilers "$work/compilers"
pids+=($!)

started_at=$(date -u '+%F %H:%M UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
hits_before=0
want cache && hits_before=$(cache_metric hit)
for round in $(seq 1 "$ROUNDS"); do
  for c in rr shard cache; do
    want "$c" || continue
    log "round $round/$ROUNDS: $c"
    # shellcheck disable=SC2086 # word splitting of the target lists is intended
    for t in $(rotate "$round" ${targets[$c]}); do
      if [[ $c == shard ]]; then
        run_wrk "$t" "$c" "${path[$c]}" -s "$work/key.lua"
      else
        run_wrk "$t" "$c" "${path[$c]}"
      fi
    done
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
hits_after=0
want cache && hits_after=$(cache_metric hit)

declare -A rss
for c in rr shard cache; do
  want "$c" || continue
  for t in ${targets[$c]}; do rss[$t]=$(rss_kib "${work_pid[$t]}"); done
done

# ---- profile -------------------------------------------------------------------------------
if ((PROFILE)); then
  for c in rr cache; do
    want $c || continue
    t=$(rigging_target "$c")
    log "profiling Rigging's $c case for ${PROFILE_SECONDS}s (perf record -e cpu-clock --call-graph dwarf)"
    perf_profile "${pid[$t]}" "$PROFILE_OUT/$c" \
      taskset -c 1 wrk -t1 -c"$CONNS" -d"${PROFILE_SECONDS}s" "http://127.0.0.1:${port[$t]}${path[$c]}"
  done
fi

# ---- kernel work per request --------------------------------------------------------------
# For the round-robin proxies: minor page faults and context switches per request over a
# plain run, then system calls per request over a run under `strace -c` (which slows the
# process, not the number of calls it makes per request).
declare -A kernel
if ((KERNEL)) && want rr; then
  counters() { # PID: minor faults, voluntary and involuntary context switches
    printf '%s ' "$(awk '{print $10}' "/proc/$1/stat")"
    awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {n = $2} END {print v, n}' "/proc/$1/status"
  }
  for t in $(proxies rr); do
    p=${work_pid[$t]}
    read -r f0 v0 i0 <<<"$(counters "$p")"
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${PROFILE_SECONDS}s" "http://127.0.0.1:${port[$t]}/")
    read -r f1 v1 i1 <<<"$(counters "$p")"
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    strace -c -f -p "$p" -o "$work/strace.$t" 2>/dev/null &
    strace_pid=$!
    sleep 0.5
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${PROFILE_SECONDS}s" "http://127.0.0.1:${port[$t]}/")
    kill -INT "$strace_pid" 2>/dev/null || true
    wait "$strace_pid" || true
    m=$(awk '/requests in/ {print $1}' <<<"$out")
    calls=$(awk -v m="$m" '$1 ~ /^[0-9.]+$/ && $NF != "total" && $4 / m >= 0.01 {printf "%s %.2f, ", $NF, $4 / m}' "$work/strace.$t")
    kernel[$t]=$(awk -v n="$n" -v f=$((f1 - f0)) -v v=$((v1 - v0)) -v i=$((i1 - i0)) -v c="${calls%, }" \
      'BEGIN {printf "system calls %s; minor page faults %.3f; context switches %.3f voluntary, %.3f involuntary", c, f / n, v / n, i / n}')
    log "  kernel work per request, $t: ${kernel[$t]}"
  done
fi

# ---- instructions per request ------------------------------------------------------------
# Rigging under callgrind: a warm-up, counters zeroed, then exactly $INSTRUCTION_REQUESTS
# requests (wrk stops itself), and the count dumped. Startup is left out.
declare -A instructions
if ((INSTRUCTIONS)); then
  cat >"$work/count.lua" <<'LUA'
local n, limit = 0, tonumber(os.getenv("REQUESTS"))
request = function()
  return wrk.format(nil, "/", { ["X-Key"] = "user" .. math.random(100000) })
end
response = function()
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
LUA
  count_instructions() { # $1 label, then the sidecar's arguments
    local label=$1 cg_port cg_pid out
    shift
    cg_port=$(free_port)
    RIGGING_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.$label.%p" \
      "$BIN" "$@" --listen "127.0.0.1:$cg_port" --admin "127.0.0.1:$(free_port)" >"$work/cg.$label.log" 2>&1 &
    cg_pid=$!
    pids+=("$cg_pid")
    wait_port 127.0.0.1 "$cg_port"
    REQUESTS=500 wrk -t1 -c"$CONNS" -d5s -s "$work/count.lua" "http://127.0.0.1:$cg_port/" >/dev/null 2>&1 || true
    callgrind_control -z "$cg_pid" >/dev/null 2>&1
    out=$(REQUESTS=$INSTRUCTION_REQUESTS wrk -t1 -c"$CONNS" -d20s -s "$work/count.lua" "http://127.0.0.1:$cg_port/" 2>&1 || true)
    callgrind_control -d "$cg_pid" >/dev/null 2>&1
    kill "$cg_pid" 2>/dev/null || true
    wait "$cg_pid" 2>/dev/null || true
    local served total
    served=$(awk '/requests in/ {print $1}' <<<"$out")
    total=$(awk '/^summary:/ {print $2}' "$work"/cg."$label".*.1)
    instructions[$label]=$(awk -v t="$total" -v n="$served" 'BEGIN {printf "%.0f", t / n}')
    log "  instructions $label: $total over $served requests: ${instructions[$label]} per request"
    # Where they go: per request, by function and by crate.
    local cg=$PROFILE_OUT/callgrind.$label
    mkdir -p "$PROFILE_OUT"
    cp "$work"/cg."$label".*.1 "$cg.out"
    log "  where $label's instructions per request go, by crate ($cg.by-crate.txt; by function: $cg.functions.txt):"
    python3 scripts/bench/profile_breakdown.py callgrind "$cg.out" "$BIN" "$served" "$cg" >&2
  }
  want rr && count_instructions rigging http --config "$work/rigging.yaml"
  if want shard; then
    count_instructions rigging-shard shard --protocol http --shard-key header:X-Key "${shard_flags[@]}"
  fi
fi

# ---- tables --------------------------------------------------------------------------------
# Median of column $2 of result file $1 over the runs no compiler disturbed, or over all
# runs when every one was disturbed.
median() {
  [[ -f $1 ]] || { echo 0; return; }
  local quiet
  quiet=$(awk '$7 == 0' "$1" | wc -l)
  awk -v c="$2" -v q="$quiet" 'q == 0 || $7 == 0 {print $c}' "$1" | sort -g |
    awk '{v[NR] = $1} END {if (!NR) print 0; else if (NR % 2) printf "%.4f", v[(NR + 1) / 2]; else printf "%.4f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# "undisturbed/all" runs of result file $1.
runs() { if [[ -f $1 ]]; then awk '{n++; if ($7 == 0) q++} END {printf "%d/%d", q, n}' "$1"; else echo 0/0; fi; }
sum() { if [[ -f $1 ]]; then awk -v c="$2" '{s += $c} END {print s + 0}' "$1"; else echo 0; fi; }
failed_runs() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", b ? a / b : 0}'; }
name() {
  case $1 in
    direct) echo "direct (backend 0, no proxy)" ;;
    direct-obj) echo "direct (the backend, no cache)" ;;
    rigging) echo "Rigging http (round robin)" ;;
    rigging-shard) echo "Rigging shard --protocol http" ;;
    rigging-cache) echo "Rigging http, cache: true" ;;
    haproxy) echo "haproxy (roundrobin)" ;;
    nginx) echo "nginx (upstream round robin)" ;;
    nginx-hash) echo "nginx (hash \$http_x_key consistent)" ;;
    varnish) echo "Varnish" ;;
  esac
}
# The reference a case's Rigging row is compared with: the better (by req/s) of the others.
reference() {
  local c=$1 best="" best_rps=0 t r
  for t in ${targets[$c]}; do
    [[ $t == rigging* || $t == direct* ]] && continue
    r=$(median "$work/result.$c.$t" 1)
    awk -v a="$r" -v b="$best_rps" 'BEGIN {exit !(a > b)}' && { best=$t; best_rps=$r; }
  done
  echo "$best"
}

echo
echo "Run $started_at, \`scripts/bench/http.sh\` (CASES=\"$CASES\" ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS), $measured, $(nproc) CPUs; load average $load_start at the start, $load_end at the end."
for c in rr shard cache; do
  want "$c" || continue
  ref=$(reference "$c")
  rps_ref=$(median "$work/result.$c.$ref" 1)
  echo
  case $c in
    rr) echo "Round robin over 3 nginx backends, \`wrk -t1 -c$CONNS -d${DURATION}s --latency\`, medians of $ROUNDS rounds; ratios against $(name "$ref"), the faster reference:" ;;
    shard) echo "HTTP sharding by header, random \`X-Key\` per request, \`wrk -t1 -c$CONNS -d${DURATION}s --latency -s key.lua\`, medians of $ROUNDS rounds:" ;;
    cache) echo "Cache hit path, one 100-byte object (\`Cache-Control: max-age=3600\`), \`wrk -t1 -c$CONNS -d${DURATION}s --latency\`, medians of $ROUNDS rounds; 'backend req/req' is the backend's own count (stub_status) per request served:" ;;
  esac
  echo
  if [[ $c == cache ]]; then
    echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | of it user | RSS MiB | req/s ÷ $(name "$ref") | CPU ÷ | p99 ÷ | backend req/req | errors | empty runs | quiet runs |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  else
    echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | of it user | RSS MiB | req/s ÷ $(name "$ref") | CPU ÷ | p99 ÷ | errors | empty runs | quiet runs |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  fi
  for t in ${targets[$c]}; do
    f=$work/result.$c.$t
    extra=""
    [[ $c == cache ]] && extra=" $(median "$f" 6 | awk '{printf "%.3f", $1}') |"
    cpu_ratio="–" p99_ratio="–"
    if [[ $t != direct* ]]; then
      cpu_ratio=$(ratio "$(median "$f" 4)" "$(median "$work/result.$c.$ref" 4)")
      p99_ratio=$(ratio "$(median "$f" 3)" "$(median "$work/result.$c.$ref" 3)")
    fi
    printf '| %s | %.0f | %.2f | %.2f | %.1f | %.1f | %.1f | %s | %s | %s |%s %d | %d | %s |\n' "$(name "$t")" \
      "$(median "$f" 1)" "$(median "$f" 2)" "$(median "$f" 3)" "$(median "$f" 4)" "$(median "$f" 9)" \
      "$(awk -v k="${rss[$t]:-0}" 'BEGIN {print k / 1024}')" "$(ratio "$(median "$f" 1)" "$rps_ref")" \
      "$cpu_ratio" "$p99_ratio" "$extra" "$(sum "$f" 5)" "$(failed_runs "$work/failed.$c.$t")" "$(runs "$f")"
  done
  if [[ $c == cache ]]; then
    echo
    echo "Does it cache? Rigging: ${caches[rigging-cache]} (cache hits counted by Rigging during the runs: $((hits_after - hits_before))); Varnish: ${caches[varnish]}."
  fi
  echo
  printf 'Per run (req/s, p99 ms, CPU µs/req, others'"'"' share of the CPUs; * = disturbed): '
  for t in ${targets[$c]}; do
    printf '%s %s; ' "$t" "$(awk '{printf "%s%.0f/%.2f/%.1f/%.2f%s", (NR > 1 ? ", " : ""), $1, $3, $4, $8, ($7 ? "*" : "")}' "$work/result.$c.$t" 2>/dev/null)"
  done
  echo
done
if ((KERNEL)) && want rr; then
  echo
  echo "Kernel work per request, round robin (\`KERNEL=1\`, \`wrk -t1 -c$CONNS -d${PROFILE_SECONDS}s\` each; system calls under \`strace -c -f\`, those of at least 0.01 per request):"
  echo
  for t in $(proxies rr); do echo "- $(name "$t"): ${kernel[$t]}"; done
fi
if ((INSTRUCTIONS)); then
  echo "User-space instructions per request under callgrind ($INSTRUCTION_REQUESTS keep-alive requests after a warm-up, \`wrk -t1 -c$CONNS\`, a random X-Key each): $(for k in "${!instructions[@]}"; do printf '%s %s; ' "$k" "${instructions[$k]}"; done)"
  echo
fi
echo
echo "Medians over the quiet runs (no compiler running, other processes under $DISTURBED of the CPUs; over all runs when none was quiet). CPU µs/req: the process tree's user+system time ÷ requests ('of it user': the user-mode part); RSS: VmRSS after the runs of nginx's worker, Varnish's child, haproxy, Rigging."
