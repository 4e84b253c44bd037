#!/usr/bin/env bash
# Stops the control plane that up.sh started in DIR, newest process first, and waits for
# each to exit. Safe to call twice, or on a DIR whose start failed half-way.
#
#   e2e/controlplane/down.sh DIR
set -uo pipefail
dir=${1:?usage: down.sh DIR}
[[ -f $dir/pids ]] || exit 0
mapfile -t entries < <(tac "$dir/pids")
for entry in "${entries[@]}"; do
  pid=${entry##* }
  kill -TERM "$pid" 2>/dev/null || continue
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
done
rm -f "$dir/pids"
echo "controlplane: stopped ($dir)" >&2
