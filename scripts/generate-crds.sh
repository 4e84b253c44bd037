#!/usr/bin/env bash
# Regenerates the CRD YAML from the Rust types, into crds/ (kubectl apply -f crds/) and the
# chart (Helm installs charts/rigging/crds/ first). Tests fail when either is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked -p rigging-operator -- crds --out-dir crds
rm -f charts/rigging/crds/*.yaml
cp crds/*.yaml charts/rigging/crds/
git status --short crds charts/rigging/crds
