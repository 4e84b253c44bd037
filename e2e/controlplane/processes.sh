#!/usr/bin/env bash
# The kit's processes: each runs in the background with its output in DIR/logs/NAME.log
# and its PID in DIR/pids (a line `NAME PID`), and is stopped by that PID. Sourced by
# up.sh, node.sh and down.sh, with `dir` set to DIR.

# kit_start NAME [--in-node] COMMAND...: starts COMMAND, in the node's network namespace
# with --in-node (nsenter execs it: the PID is the command's own).
kit_start() {
  local name=$1 netns=()
  shift
  if [[ $1 == --in-node ]]; then
    netns=(nsenter --net="$dir/netns/node")
    shift
  fi
  "${netns[@]}" "$@" >"$dir/logs/$name.log" 2>&1 &
  echo "$name $!" >>"$dir/pids"
}

# kit_wait WHAT SECONDS COMMAND...: until COMMAND succeeds; fails at once, naming it, when
# a process of the kit has exited, and after SECONDS, showing the newest logs.
kit_wait() {
  local what=$1 seconds=$2 i name pid
  shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    while read -r name pid; do
      kill -0 "$pid" 2>/dev/null && continue
      printf 'kit: %s exited; see %s\n' "$name" "$dir/logs/$name.log" >&2
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      return 1
    done <"$dir/pids"
    sleep 0.5
  done
  printf 'kit: %s: not ready after %ss; see %s/logs\n' "$what" "$seconds" "$dir" >&2
  tail -n 20 "$dir"/logs/*.log >&2 || true
  return 1
}

# kit_stop NAME...: SIGTERM to the named processes at once, SIGKILL to any left after
# 10 s; they leave DIR/pids.
kit_stop() {
  local name pids=()
  [[ -f $dir/pids ]] || return 0
  for name in "$@"; do
    mapfile -t -O "${#pids[@]}" pids < <(sed -n "s/^$name //p" "$dir/pids")
    sed -i "/^$name /d" "$dir/pids"
  done
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kit_reap "$pid"; done
}

# kit_stop_all: every process left, newest first and one after another (the API server
# stops before etcd); DIR/pids goes.
kit_stop_all() {
  local pid
  [[ -f $dir/pids ]] || return 0
  for pid in $(tac "$dir/pids" | sed 's/.* //'); do
    kill -TERM "$pid" 2>/dev/null || true
    kit_reap "$pid"
  done
  rm -f "$dir/pids"
}

# kit_reap PID: waits up to 10 s for the process to exit, then kills it.
kit_reap() {
  local i
  for ((i = 0; i < 50; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL "$1" 2>/dev/null || true
}
