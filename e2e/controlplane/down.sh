#!/usr/bin/env bash
# Stops the cluster that up.sh started in DIR: the node first (node.sh down, which puts
# back what it changed on the host), then the control plane, newest process first,
# waiting for each to exit. Safe to call twice, or on a DIR whose start failed half-way.
# Exits non-zero if the node left mounts under DIR, which must then not be removed.
#
#   e2e/controlplane/down.sh DIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: down.sh DIR}
status=0
"$here/node.sh" down "$dir" || status=1
[[ -f $dir/pids ]] || exit "$status"
# shellcheck source=e2e/controlplane/processes.sh
source "$here/processes.sh"
kit_stop_all
echo "controlplane: stopped ($dir)" >&2
exit "$status"
