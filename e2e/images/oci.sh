#!/usr/bin/env bash
# OCI images with no registry and no Docker engine: umoci writes them into one layout
# (layers shared between images are stored once), and containerd imports the layout as
# an archive, each image under the full reference the `io.containerd.image.name`
# annotation gives it.
#
#   oci.sh build ARCHIVE IMAGE...      write ARCHIVE (an OCI layout as a tar)
#   oci.sh import DIR ARCHIVE...       import into the node of the kit in DIR
#   oci.sh import DIR IMAGE...         build into DIR, then import (small images)
#
# Each IMAGE is a group of options that starts with --ref:
#   --ref REF             the reference pods name (redis:7-alpine, registry.k8s.io/pause:3.10)
#   --from REF            start from an image built earlier in the same call (shares its layers)
#   --layer TAR           add an uncompressed tar as a layer, as it is
#   --file SRC:DEST       add a file (mode kept, owned by root) at DEST
#   --entrypoint ARG      append ARG to the entrypoint (repeat for each word); same for
#   --cmd ARG             the command
#   --user U  --workdir D  --env K=V  --port P/tcp  --label K=V
set -euo pipefail

log() { printf 'images: %s\n' "$*" >&2; }

# docker.io/library/ is what a bare name means to containerd and the kubelet.
full_ref() {
  local ref=$1 first=${1%%/*}
  if [[ $ref != */* ]]; then
    ref=docker.io/library/$ref
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
    ref=docker.io/$ref
  fi
  [[ ${ref##*/} == *:* || $ref == *@* ]] || ref=$ref:latest
  printf '%s\n' "$ref"
}

build() {
  local archive=${1:?usage: oci.sh build ARCHIVE IMAGE...}
  shift
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/rigging-oci.XXXXXX")
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -rf '$work'" RETURN
  local layout=$work/layout epoch=1970-01-01T00:00:00Z
  umoci init --layout "$layout"

  # Tags in the layout are the image's position; index.json gets the references below.
  local -a refs=()
  local tag="" config=()
  finish() {
    [[ -n $tag ]] || return 0
    if ((${#config[@]})); then
      umoci config --image "$layout:$tag" --history.created "$epoch" "${config[@]}"
    fi
    config=()
  }
  while (($#)); do
    case $1 in
    --ref)
      finish
      tag=i${#refs[@]}
      refs+=("$(full_ref "$2")")
      umoci new --image "$layout:$tag"
      # A fixed creation time keeps the archive's bytes a function of its inputs.
      config+=(--created "$epoch" --os linux --architecture amd64)
      ;;
    --from)
      local i found=""
      for i in "${!refs[@]}"; do
        [[ ${refs[$i]} == "$(full_ref "$2")" ]] && found=i$i
      done
      [[ -n $found ]] || { log "--from $2: no such image earlier in this call"; return 1; }
      umoci rm --image "$layout:$tag"
      umoci tag --image "$layout:$found" "$tag"
      ;;
    --layer)
      umoci raw add-layer --history.created "$epoch" --image "$layout:$tag" "$2"
      ;;
    --file)
      local src=${2%%:*} dest=${2#*:} staging
      staging=$work/file
      rm -rf "$staging"
      mkdir -p "$staging/$(dirname "$dest")"
      cp -a "$src" "$staging/$dest"
      tar -C "$staging" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -cf "$work/file.tar" .
      umoci raw add-layer --history.created "$epoch" --image "$layout:$tag" "$work/file.tar"
      ;;
    --entrypoint) config+=(--config.entrypoint "$2") ;;
    --cmd) config+=(--config.cmd "$2") ;;
    --user) config+=(--config.user "$2") ;;
    --workdir) config+=(--config.workingdir "$2") ;;
    --env) config+=(--config.env "$2") ;;
    --port) config+=(--config.exposedports "$2") ;;
    --label) config+=(--config.label "$2") ;;
    *)
      log "unknown option $1"
      return 2
      ;;
    esac
    shift 2
  done
  finish

  python3 - "$layout/index.json" "${refs[@]}" <<'PY'
import json, sys
path, refs = sys.argv[1], sys.argv[2:]
index = json.load(open(path))
for manifest in index["manifests"]:
    tag = manifest["annotations"]["org.opencontainers.image.ref.name"]
    manifest["annotations"]["io.containerd.image.name"] = refs[int(tag[1:])]
json.dump(index, open(path, "w"))
PY
  umoci gc --layout "$layout"
  tar -C "$layout" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -cf "$archive.partial" .
  mv "$archive.partial" "$archive"
}

import() {
  local dir=${1:?usage: oci.sh import DIR ARCHIVE...|IMAGE...}
  shift
  local -a archives=("$@")
  if [[ ${1:-} == --ref ]]; then
    build "$dir/node/kit-images.tar" "$@"
    archives=("$dir/node/kit-images.tar")
  fi
  local archive
  for archive in "${archives[@]}"; do
    ctr --address "$dir/run/containerd.sock" --namespace k8s.io images import "$archive" >/dev/null
  done
}

action=${1:?usage: oci.sh build|import ...}
shift
case $action in
build) build "$@" ;;
import) import "$@" ;;
*)
  log "unknown action $action"
  exit 2
  ;;
esac
