#!/usr/bin/env bash
# Stops the local cluster of scripts/up.sh and removes it; the machine is as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${RIGGING_CLUSTER_DIR:-/tmp/rigging}
[[ -d $dir ]] || { echo "down: no cluster in $dir"; exit 0; }
bash e2e/controlplane/down.sh "$dir"
rm -rf --one-file-system "$dir"
