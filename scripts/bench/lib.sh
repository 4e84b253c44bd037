#!/usr/bin/env bash
# Shared helpers for scripts/bench/*.sh (sourced, not run).
# shellcheck disable=SC2034 # variables here are used by the scripts that source this file

# Installs Debian packages that are missing (benchmarks only; tests use scripts/test.sh).
bench_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# CPU time (user+system) of a process, in clock ticks: fields 14 and 15 of /proc/PID/stat.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# Resident set size of a process, in KiB.
rss_kib() {
  awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# Clock ticks per second, for cpu_ticks.
CLK_TCK=$(getconf CLK_TCK)

# Waits until something accepts TCP connections on HOST:PORT (up to 10 s).
wait_port() {
  local host=$1 port=$2 i
  for i in $(seq 1 1000); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.01
  done
  echo "nothing listens on $host:$port" >&2
  return 1
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
