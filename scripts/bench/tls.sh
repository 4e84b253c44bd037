#!/usr/bin/env bash
# TLS terminator benchmark: the same small HTTP backend (nginx, one worker, 100-byte
# body) reached directly, through `rigging-sidecar tls`, through nginx and through haproxy,
# all with an ECDSA P-256 certificate and TLS 1.3, in one run, alternating A B A B.
#
#   scripts/bench/tls.sh
#
# Servers and proxies run on CPU 0, wrk on CPU 1. Prints three markdown tables:
#   1. keep-alive: req/s, p50, p99, ratio to nginx, proxy CPU µs per request;
#   2. new connections (`Connection: close`): full handshakes/s (session caches and tickets
#      off on every side) and resumed handshakes/s (on), with CPU µs per handshake;
#   3. idle RSS, RSS after load, and start-to-ready time.
# Knobs (environment): DURATION (keep-alive seconds, 10), HS_DURATION (handshake seconds,
# 5), ROUNDS (2), CONNS (50), DISTURBED (0.08: a run during which other processes used
# more than this share of the machine's CPUs, or a compiler ran, is left out of the means
# when quiet runs exist), RIGGING_BIN (a binary to measure instead of the image's build)
# with RIGGING_COMMIT, PROFILE (0: 1 adds perf profiles of Rigging's keep-alive and full
# handshake runs after the rounds, PROFILE_SECONDS (8) each, written to PROFILE_OUT,
# target/bench-tls-profile, as profile_breakdown.py describes). Defaults keep the whole
# run under four minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091 # lib.sh is checked on its own
source scripts/bench/lib.sh

DURATION=${DURATION:-10}
HS_DURATION=${HS_DURATION:-5}
ROUNDS=${ROUNDS:-2}
DISTURBED=${DISTURBED:-0.08}
CONNS=${CONNS:-50}
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-8}
PROFILE_OUT=${PROFILE_OUT:-target/bench-tls-profile}

packages=(nginx-light haproxy wrk openssl curl python3)
((PROFILE)) && packages+=(linux-perf)
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

log() { printf '%s\n' "$*" >&2; }

# ---- certificate: ECDSA P-256, self-signed ------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cat "$work/tls.crt" "$work/tls.key" >"$work/combined.pem"

user_line=""
((EUID == 0)) && user_line="user root;"
body=$(printf 'x%.0s' $(seq 1 100))

# Background processes never write to our stdout: a command substitution around one
# would wait for it forever. Each start function sets $started to the new PID.
started=
spawn() {
  "$@" >>"$work/servers.log" 2>&1 &
  started=$!
  pids+=("$started")
}

# An nginx with one worker; $1 = name, $2 = http{} server block.
start_nginx() {
  local server=$2 dir=$work/$1
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 10000000;
  $server
}
EOF
  spawn taskset -c 0 nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}

# The worker of an nginx master (where the work and the CPU time are).
nginx_worker() {
  local w
  for _ in $(seq 1 500); do
    w=$(pgrep -P "$1" | head -1) && [[ -n $w ]] && { echo "$w"; return; }
    sleep 0.01
  done
  log "nginx $1 has no worker"
  return 1
}

nginx_tls_server() { # $1 port, $2 on|off (session resumption)
  local cache="ssl_session_cache off; ssl_session_tickets off;"
  [[ $2 == on ]] && cache="ssl_session_cache shared:SSL:10m; ssl_session_tickets on;"
  cat <<EOF
upstream app { server 127.0.0.1:$backend_port; keepalive 64; keepalive_requests 10000000; }
server {
  listen 127.0.0.1:$1 ssl http2;
  ssl_certificate $work/tls.crt;
  ssl_certificate_key $work/tls.key;
  ssl_protocols TLSv1.3;
  $cache
  location / {
    proxy_pass http://app;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto https;
  }
}
EOF
}

start_haproxy() { # $1 name, $2 port, $3 on|off
  local dir=$work/$1 cache="" tickets=""
  mkdir -p "$dir"
  [[ $3 == off ]] && cache="tune.ssl.cachesize 0" && tickets="no-tls-tickets"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
  $cache
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$2 ssl crt $work/combined.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3 $tickets
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  default_backend app
backend app
  server app 127.0.0.1:$backend_port
EOF
  spawn taskset -c 0 haproxy -db -f "$dir/haproxy.cfg"
}

start_rigging() { # $1 port, $2 admin port, $3 on|off, $4 worker threads (default: one per CPU)
  local extra=() threads=()
  [[ $3 == off ]] && extra=(--no-session-resumption)
  [[ -n ${4:-} ]] && threads=(RIGGING_WORKER_THREADS="$4")
  spawn env "${threads[@]}" taskset -c 0 "$BIN" tls --listen "127.0.0.1:$1" \
    --upstream "127.0.0.1:$backend_port" --cert "$work/tls.crt" --key "$work/tls.key" \
    --admin "127.0.0.1:$2" "${extra[@]}"
}

# ---- start everything ----------------------------------------------------------------
backend_port=$(free_port)
start_nginx backend "server { listen 127.0.0.1:$backend_port; location / { return 200 '$body'; } }"
wait_port 127.0.0.1 "$backend_port"
backend_pid=$(nginx_worker "$started")

declare -A port pid
for mode in on off; do
  port[nginx-$mode]=$(free_port)
  start_nginx "nginx-$mode" "$(nginx_tls_server "${port[nginx-$mode]}" $mode)"
  wait_port 127.0.0.1 "${port[nginx-$mode]}"
  pid[nginx-$mode]=$(nginx_worker "$started")

  port[haproxy-$mode]=$(free_port)
  start_haproxy "haproxy-$mode" "${port[haproxy-$mode]}" $mode
  pid[haproxy-$mode]=$started
  wait_port 127.0.0.1 "${port[haproxy-$mode]}"

  port[rigging-$mode]=$(free_port)
  admin=$(free_port)
  [[ $mode == on ]] && rigging_admin=$admin
  start_rigging "${port[rigging-$mode]}" "$admin" $mode
  pid[rigging-$mode]=$started
  wait_port 127.0.0.1 "${port[rigging-$mode]}"
done
# For contrast: the multi-thread scheduler (2 workers on the one pinned CPU). The default
# on one CPU is the current-thread scheduler.
port[rigging-mt]=$(free_port)
start_rigging "${port[rigging-mt]}" "$(free_port)" on 2
pid[rigging-mt]=$started
wait_port 127.0.0.1 "${port[rigging-mt]}"
port[direct]=$backend_port
pid[direct]=$backend_pid

for t in nginx-on haproxy-on rigging-on rigging-mt nginx-off haproxy-off rigging-off; do
  curl -skf "https://127.0.0.1:${port[$t]}/" | grep -q xxxx || { log "$t does not proxy"; exit 1; }
done
sleep 1
declare -A idle_rss idle_anon
for t in nginx-on haproxy-on rigging-on; do
  idle_rss[$t]=$(rss_kib "${pid[$t]}")
  idle_anon[$t]=$(anon_kib "${pid[$t]}")
done

# ---- load ----------------------------------------------------------------------------
to_ms() { # wrk latency like 812.00us / 1.20ms / 1.01s -> milliseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else print v }'
}

# CPU ticks of the target process $1 and of the backend behind it.
ours_ticks() {
  local t
  t=$(cpu_ticks "$1")
  [[ $1 == "$backend_pid" ]] || t=$((t + $(cpu_ticks "$backend_pid")))
  echo "$t"
}

# One wrk run against target $1 for $2 seconds in round $round, extra wrk args after.
# Appends "rps p50 p99 cpu_us errors disturbed others round" to $work/result.$1.$tag
# (others: the share of the machine's CPUs other processes used meanwhile; disturbed: 1
# when that is over $DISTURBED or a compiler ran).
run_wrk() {
  local target=$1 secs=$2 tag=$3
  shift 3
  local scheme=https
  [[ $target == direct ]] && scheme=http
  local p=${pid[$target]} before after out t0 t1 busy0 busy1 ours0 ours1 others disturbed
  t0=$(date +%s) busy0=$(machine_busy) ours0=$(ours_ticks "$p")
  before=$(cpu_ticks "$p")
  # `times` in the same subshell: the CPU time wrk used (its last line: children's).
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${secs}s" --latency "$@" "$scheme://127.0.0.1:${port[$target]}/" 2>&1 || true; times)
  after=$(cpu_ticks "$p")
  busy1=$(machine_busy) ours1=$(ours_ticks "$p") t1=$(date +%s)
  others=$(others_share $((busy1 - busy0)) $((ours1 - ours0)) "$(tail -1 <<<"$out")" "$secs")
  disturbed=$(disturbed "$work/compilers" "$t0" "$t1" "$others" "$DISTURBED")
  local rps n p50 p99 errors cpu
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  if [[ -z $n || $n == 0 ]]; then
    # A run that moved nothing (wrk failed, the machine stalled) is reported, not averaged.
    log "  $tag $target: NO REQUESTS, left out of the means; wrk said:"
    log "$out"
    echo 1 >>"$work/failed.$target.$tag"
    return 0
  fi
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx/ {e += $NF} /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print e + 0}' <<<"$out")
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", n ? t * 1e6 / hz / n : 0}')
  echo "$rps $p50 $p99 $cpu $errors $disturbed $others $round" >>"$work/result.$target.$tag"
  log "  $tag $target: $rps req/s p50 ${p50}ms p99 ${p99}ms cpu ${cpu}us/req errors $errors others $others$( ((disturbed)) && echo ' DISTURBED')"
}

# Other people compile on this machine: a run they disturbed is left out of the means
# when others were not.
watch_compilers "$work/compilers"
pids+=($!)

resumed_before=$(curl -sf "http://127.0.0.1:$rigging_admin/metrics" | awk '/^rigging_tls_handshakes_resumed_total/ {print $2}')
for round in $(seq 1 "$ROUNDS"); do
  log "round $round: keep-alive"
  for t in direct rigging-on rigging-mt nginx-on haproxy-on; do run_wrk $t "$DURATION" ka; done
  log "round $round: new connections"
  for t in rigging-off nginx-off haproxy-off; do run_wrk $t "$HS_DURATION" full -H 'Connection: close'; done
  for t in rigging-on nginx-on haproxy-on; do run_wrk $t "$HS_DURATION" resumed -H 'Connection: close'; done
done
resumed_after=$(curl -sf "http://127.0.0.1:$rigging_admin/metrics" | awk '/^rigging_tls_handshakes_resumed_total/ {print $2}')

declare -A load_rss
for t in nginx-on haproxy-on rigging-on; do load_rss[$t]=$(rss_kib "${pid[$t]}"); done

if ((PROFILE)); then
  log "profiling Rigging: keep-alive, then full handshakes (${PROFILE_SECONDS}s each)"
  perf_profile "${pid[rigging-on]}" "$PROFILE_OUT/keep-alive" \
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${PROFILE_SECONDS}s" "https://127.0.0.1:${port[rigging-on]}/"
  perf_profile "${pid[rigging-off]}" "$PROFILE_OUT/full-handshake" \
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${PROFILE_SECONDS}s" -H 'Connection: close' "https://127.0.0.1:${port[rigging-off]}/"
fi

# Mean of column $2 over the quiet runs of result file $1, or over all its runs when none
# was quiet.
mean() {
  [[ -f $1 ]] || { echo 0; return; }
  awk -v c="$2" '{v[NR] = $c; q[NR] = ($6 == 0); nq += q[NR]}
    END {for (i = 1; i <= NR; i++) if (!nq || q[i]) {s += v[i]; n++}; printf "%.3f", n ? s / n : 0}' "$1"
}
# "quiet/all" runs of result file $1.
runs() { if [[ -f $1 ]]; then awk '{n++; if ($6 == 0) q++} END {printf "%d/%d", q, n}' "$1"; else echo 0/0; fi; }
# The lowest req/s ratio of result file $1 to result file $2 over the rounds in which both
# runs were quiet: a goal holds only if it holds in each of them. "–" when no round was.
worst() {
  [[ -f $1 && -f $2 ]] || { echo "–"; return; }
  awk 'FNR == NR {if ($6 == 0) b[$8] = $1; next}
    $6 == 0 && ($8 in b) && b[$8] > 0 {r = $1 / b[$8]; if (!n++ || r < m) m = r}
    END {if (n) printf "%.2f× (%d)", m, n; else print "–"}' "$2" "$1"
}
sum() { if [[ -f $1 ]]; then awk -v c="$2" '{s += $c} END {print s + 0}' "$1"; else echo 0; fi; }
# Runs of $1 that produced no requests at all.
failed_runs() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# ---- start-to-ready ------------------------------------------------------------------
# Median of 5 starts; ready = /readyz 200 for Rigging (what the kubelet probes), the TLS
# port accepting for nginx and haproxy (they have no readiness endpoint).
ready_ms() { # $1 = kind
  python3 - "$1" "$BIN" "$work" <<'EOF'
import os, socket, subprocess, sys, time, urllib.request
kind, binary, work = sys.argv[1:4]
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.05).close(); return True
    except OSError:
        return False
def ready(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.05).status == 200
    except Exception:
        return False
times = []
for _ in range(5):
    port, admin = free(), free()
    if kind == "rigging":
        cmd = ["taskset", "-c", "0", binary, "tls", "--listen", f"127.0.0.1:{port}", "--upstream",
               "127.0.0.1:9", "--cert", f"{work}/tls.crt", "--key", f"{work}/tls.key",
               "--admin", f"127.0.0.1:{admin}"]
        check = lambda: ready(admin)
        env = None
    elif kind == "haproxy":
        cfg = f"{work}/ready.cfg"
        open(cfg, "w").write(f"global\n nbthread 1\ndefaults\n mode http\n timeout connect 5s\n timeout client 5s\n timeout server 5s\nfrontend fe\n bind 127.0.0.1:{port} ssl crt {work}/combined.pem\n default_backend app\nbackend app\n server app 127.0.0.1:9\n")
        cmd = ["taskset", "-c", "0", "haproxy", "-db", "-f", cfg]
        check = lambda: accepts(port); env = None
    else:
        d = f"{work}/ready-nginx"; os.makedirs(d, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        open(f"{d}/nginx.conf", "w").write(f"{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{}}\nhttp {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {work}/tls.crt; ssl_certificate_key {work}/tls.key; location / {{ proxy_pass http://127.0.0.1:9; }} }} }}\n")
        cmd = ["taskset", "-c", "0", "nginx", "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"]
        check = lambda: accepts(port); env = None
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = start + 10
    while not check():
        if time.monotonic() > deadline:
            proc.kill(); sys.exit(f"{kind} not ready after 10 s")
        time.sleep(0.001)
    times.append((time.monotonic() - start) * 1000)
    proc.terminate(); proc.wait()
times.sort()
print(f"{times[len(times) // 2]:.1f}")
EOF
}
declare -A ready
for t in rigging nginx haproxy; do ready[$t]=$(ready_ms $t); done

# ---- tables --------------------------------------------------------------------------
name() { case $1 in direct) echo "direct (no TLS)" ;; rigging-mt) echo "Rigging tls, multi-thread scheduler (RIGGING_WORKER_THREADS=2)" ;; rigging*) echo "Rigging tls" ;; nginx*) echo nginx ;; haproxy*) echo haproxy ;; esac; }
nginx_rps=$(mean "$work/result.nginx-on.ka" 1)
echo
echo "Rigging measured: $measured."
echo
echo "Keep-alive, \`wrk -t1 -c$CONNS -d${DURATION}s\`, mean of the quiet runs of $ROUNDS rounds (runs that moved no request at all are left out and counted):"
echo
echo "| target | req/s | p50 ms | p99 ms | vs nginx | ÷ haproxy, worst quiet round (rounds) | CPU µs/req | errors | empty runs | quiet runs |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for t in direct rigging-on rigging-mt nginx-on haproxy-on; do
  f=$work/result.$t.ka
  printf '| %s | %.0f | %.2f | %.2f | %.2f× | %s | %.1f | %d | %d | %s |\n' "$(name $t)" "$(mean "$f" 1)" \
    "$(mean "$f" 2)" "$(mean "$f" 3)" "$(awk -v a="$(mean "$f" 1)" -v b="$nginx_rps" 'BEGIN {print b ? a / b : 0}')" \
    "$(worst "$f" "$work/result.haproxy-on.ka")" \
    "$(mean "$f" 4)" "$(sum "$f" 5)" "$(failed_runs "$work/failed.$t.ka")" "$(runs "$f")"
done

nginx_full=$(mean "$work/result.nginx-off.full" 1)
echo
echo "New TLS 1.3 connections, \`wrk -t1 -c$CONNS -d${HS_DURATION}s -H 'Connection: close'\`, mean of the quiet runs of $ROUNDS rounds:"
echo
echo "| terminator | full handshakes/s | vs nginx | CPU µs per full | resumed handshakes/s | CPU µs per resumed | errors | empty runs | quiet runs (full, resumed) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for t in rigging nginx haproxy; do
  f=$work/result.$t-off.full r=$work/result.$t-on.resumed
  printf '| %s | %.0f | %.2f× | %.0f | %.0f | %.0f | %d | %d | %s, %s |\n' "$(name $t)" "$(mean "$f" 1)" \
    "$(awk -v a="$(mean "$f" 1)" -v b="$nginx_full" 'BEGIN {print b ? a / b : 0}')" "$(mean "$f" 4)" \
    "$(mean "$r" 1)" "$(mean "$r" 4)" "$(($(sum "$f" 5) + $(sum "$r" 5)))" \
    "$(($(failed_runs "$work/failed.$t-off.full") + $(failed_runs "$work/failed.$t-on.resumed")))" \
    "$(runs "$f")" "$(runs "$r")"
done
echo
echo "Rigging resumed $(awk -v a="$resumed_before" -v b="$resumed_after" 'BEGIN {print b - a}') handshakes in the 'resumed' runs (its own counter)."

echo
echo "| terminator | idle RSS MiB | of it anonymous MiB | RSS after load MiB | start → ready ms (median of 5) |"
echo "|---|---:|---:|---:|---:|"
for t in rigging nginx haproxy; do
  printf '| %s | %.1f | %.1f | %.1f | %s |\n' "$(name $t)" "$(awk -v k="${idle_rss[$t-on]}" 'BEGIN {print k / 1024}')" \
    "$(awk -v k="${idle_anon[$t-on]}" 'BEGIN {print k / 1024}')" \
    "$(awk -v k="${load_rss[$t-on]}" 'BEGIN {print k / 1024}')" "${ready[$t]}"
done
echo
echo "RSS: nginx = its one worker process; anonymous = RssAnon (heap and stacks, not the binary's pages); start → ready: Rigging = /readyz answers 200, nginx and haproxy = the TLS port accepts."
