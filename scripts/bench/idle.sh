#!/usr/bin/env bash
# Idle memory of Rigging's sidecars as users run them (issue 25): each in a pod of its own
# on the kit's node, from the image the chart installs, beside nginx terminating TLS in a
# pod of the nginx stand-in image, all left idle:
#
#   scripts/bench/idle.sh                 starts a kit and imports the images of the release
#                                         profile, the Dockerfile's (≈ 25 min cold)
#   KIT=/tmp/cp scripts/bench/idle.sh     on a kit already up, with the images imported into
#                                         it (RIGGING_IMAGE_PROFILE=release e2e/images/build.sh
#                                         --import /tmp/cp for the released build)
#   SETTLE=60 scripts/bench/idle.sh       idle this many seconds before reading (default 30)
#
# Per container:
# - working set: the kubelet's stats summary (`workingSetBytes`), the cgroup's usage less
#   its inactive file pages, which is what a memory limit and eviction count;
# - anonymous: the cgroup's `rssBytes` (heap and stacks of every process in it);
# - RSS, RssAnon and Pss: summed over the container's processes from /proc. RSS counts the
#   binary's pages each process maps, which the page cache shares: with every container of
#   the same image on the node, and charged to the cgroup that first read them (containerd's,
#   which unpacked the image), not to each container. Pss divides them among their users.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

SETTLE=${SETTLE:-30}
NS=bench-idle

log() { printf 'idle.sh: %s\n' "$*" >&2; }

install_apt openssl python3
work=$(mktemp -d)
trap 'stop_kit "$work" "$NS"' EXIT

if [[ -n ${KIT:-} ]]; then
  export KUBECONFIG=$KIT/kubeconfig
  kubectl=("$KIT/bin/kubectl")
else
  start_kit "$work"
  RIGGING_IMAGE_PROFILE=${RIGGING_IMAGE_PROFILE:-release} e2e/images/build.sh --import "$work/cp" >/dev/null
fi
node=$("${kubectl[@]}" get nodes -o jsonpath='{.items[0].metadata.name}')
# A namespace of an earlier run may still be going away.
"${kubectl[@]}" delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
"${kubectl[@]}" create namespace "$NS" >/dev/null

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
"${kubectl[@]}" create -n "$NS" secret tls tls --cert="$work/tls.crt" --key="$work/tls.key" >/dev/null

# The TLS terminator and the HTTP ambassador in front of an app port nothing listens on
# (idle: no request comes), and nginx configured as the same terminator: one worker, as
# tls.sh runs it.
"${kubectl[@]}" apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: confs}
data:
  http.yaml: |
    routes:
      - name: main
        backend: app
    backends:
      - name: app
        servers: [{address: "127.0.0.1:8080"}]
  nginx.conf: |
    worker_processes 1;
    pid /tmp/nginx.pid;
    events {}
    http {
      client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy;
      fastcgi_temp_path /tmp/fastcgi; uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi;
      server {
        listen 8443 ssl;
        ssl_certificate /tls/tls.crt;
        ssl_certificate_key /tls/tls.key;
        location / { proxy_pass http://127.0.0.1:8080; }
      }
    }
---
apiVersion: v1
kind: Pod
metadata: {name: rigging-tls}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: rigging-sidecar:0.1.0
      imagePullPolicy: Never
      args: [tls, --listen, "0.0.0.0:8443", --upstream, "127.0.0.1:8080",
             --cert, /tls/tls.crt, --key, /tls/tls.key, --admin, "0.0.0.0:9901"]
      volumeMounts: [{name: tls, mountPath: /tls}]
  volumes: [{name: tls, secret: {secretName: tls}}]
---
apiVersion: v1
kind: Pod
metadata: {name: rigging-http}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: rigging-sidecar:0.1.0
      imagePullPolicy: Never
      args: [http, --config, /etc/rigging/http.yaml, --listen, "0.0.0.0:9080",
             --admin, "0.0.0.0:9124"]
      volumeMounts: [{name: confs, mountPath: /etc/rigging}]
  volumes: [{name: confs, configMap: {name: confs}}]
---
apiVersion: v1
kind: Pod
metadata: {name: nginx-tls}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: nginxinc/nginx-unprivileged:1.27
      imagePullPolicy: Never
      command: [nginx, -c, /etc/bench/nginx.conf, -g, "daemon off;"]
      volumeMounts:
        - {name: confs, mountPath: /etc/bench}
        - {name: tls, mountPath: /tls}
  volumes:
    - {name: confs, configMap: {name: confs}}
    - {name: tls, secret: {secretName: tls}}
YAML
pods=(rigging-tls rigging-http nginx-tls)
for pod in "${pods[@]}"; do
  "${kubectl[@]}" wait -n "$NS" --for=condition=Ready --timeout=120s "pod/$pod" >/dev/null
done
log "idle for ${SETTLE}s"
sleep "$SETTLE"
# Still the first process of each: one that failed and restarted is not idle, it is broken.
for pod in "${pods[@]}"; do
  restarts=$("${kubectl[@]}" get -n "$NS" "pod/$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  [[ $restarts == 0 ]] || {
    log "$pod restarted $restarts times: $("${kubectl[@]}" logs -n "$NS" "$pod" --previous --tail=3 2>&1)"
    exit 1
  }
done

# The kubelet's figures, once it has them for every container (it samples every 10 s or so).
summary() {
  "${kubectl[@]}" get --raw "/api/v1/nodes/$node/proxy/stats/summary" |
    NS=$NS python3 -c '
import json, os, sys
for pod in json.load(sys.stdin)["pods"]:
    if pod["podRef"]["namespace"] != os.environ["NS"]:
        continue
    for c in pod["containers"]:
        m = c.get("memory", {})
        if m.get("workingSetBytes"):
            print(pod["podRef"]["name"], m["workingSetBytes"], m.get("rssBytes", 0))'
}
for _ in $(seq 1 30); do
  stats=$(summary)
  (($(wc -l <<<"$stats") == ${#pods[@]})) && break
  sleep 2
done
(($(wc -l <<<"$stats") == ${#pods[@]})) || { log "the kubelet gave no memory figures for some pods: $stats"; exit 1; }

# The processes of a pod's container: those in its memory cgroup.
procs() {
  local id
  id=$("${kubectl[@]}" get -n "$NS" "pod/$1" -o jsonpath='{.status.containerStatuses[0].containerID}')
  id=${id#*://}
  cat "$(find /sys/fs/cgroup/memory -type d -name "$id" -print -quit)/cgroup.procs"
}
# KiB of field FIELD of /proc/PID/FILE, summed over PIDs.
sum_kib() {
  local file=$1 field=$2 total=0 pid
  shift 2
  for pid in "$@"; do
    total=$((total + $(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/$file")))
  done
  echo "$total"
}
mib() { calc "$1 / 1024"; }

printf '\n%s, the node of the kit, %s s idle\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$SETTLE"
echo "| container | working set MiB | anonymous (cgroup) MiB | RSS MiB | RssAnon MiB | Pss MiB | processes |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for pod in "${pods[@]}"; do
  read -r _ ws anon < <(grep "^$pod " <<<"$stats")
  mapfile -t pids < <(procs "$pod")
  printf '| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %d |\n' "$pod" \
    "$(calc "$ws / 1048576")" "$(calc "$anon / 1048576")" \
    "$(mib "$(sum_kib status VmRSS "${pids[@]}")")" \
    "$(mib "$(sum_kib status RssAnon "${pids[@]}")")" \
    "$(mib "$(sum_kib smaps_rollup Pss "${pids[@]}")")" "${#pids[@]}"
done
