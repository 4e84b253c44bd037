#!/usr/bin/env bash
# The images the kit's node runs, built with no registry and no Docker engine, each set
# cached by content under ${RIGGING_CACHE:-~/.cache/rigging}/images:
#
#   rigging    rigging-operator:VERSION and rigging-sidecar:VERSION, as the Dockerfile
#              ships them: static musl binaries, user 65532, nothing else but CA
#              certificates and passwd/group files. VERSION is the workspace's, which is
#              the chart's appVersion, so `helm install` with no values finds them.
#   standins   local stand-ins for the public images examples/ and the docs name
#   examples   the example apps' images (ghcr.io/example/...), which exist nowhere else
#              (both built from Debian packages; README.md here lists them and how they
#              differ from what they stand in for)
#
#   e2e/images/build.sh [SET...]                build what is missing (default: all three);
#                                               print the archives' paths
#   e2e/images/build.sh --import DIR [SET...]   and import them into the kit's node in DIR
#
# RIGGING_IMAGE_PROFILE (default `e2e`, see Cargo.toml) is the Cargo profile of the
# binaries; `release` builds exactly what the Dockerfile does.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${RIGGING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rigging}/images
mkdir -p "$cache"

log() { printf 'images: %s\n' "$*" >&2; }

import_dir=""
if [[ ${1:-} == --import ]]; then
  import_dir=${2:?usage: build.sh [--import DIR] [rigging|standins|examples...]}
  shift 2
fi
sets=("$@")
((${#sets[@]})) || sets=(rigging standins examples)

target=x86_64-unknown-linux-musl
profile=${RIGGING_IMAGE_PROFILE:-e2e}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml")

# --- Rigging's own images ---------------------------------------------------------------

# Keyed on what the binaries are built from (the crates' sources and manifests, the lock
# file, the profile and these scripts), not on the binaries: a checkout whose sources are
# unchanged finds its images without building anything, a fresh clone included.
rigging_images() {
  local key archive
  key=$( (
    echo "$profile $target"
    cd "$root" && git ls-files -co --exclude-standard Cargo.toml Cargo.lock \
      'crds/Cargo.toml' 'crds/src' 'operator/Cargo.toml' 'operator/src' \
      'sidecars/Cargo.toml' 'sidecars/src' | sort | xargs sha256sum
    cat "$here/build.sh" "$here/oci.sh"
  ) | sha256sum | cut -c1-16)
  archive=$cache/rigging-$version-$key.tar
  if [[ ! -f $archive ]]; then
    log "cargo build --profile $profile --target $target (rigging-operator, rigging-sidecar)"
    (cd "$root" && cargo build --locked --profile "$profile" --target "$target" \
      -p rigging-operator -p rigging-sidecar)
    local out=${CARGO_TARGET_DIR:-$root/target}/$target/$profile
    rm -f "$cache"/rigging-*.tar
    log "rigging-operator:$version and rigging-sidecar:$version"
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/rigging-images.XXXXXX")
    mkdir -p "$work/base/etc/ssl/certs" "$work/base/tmp" "$work/base/home/nonroot"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
      >"$work/base/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/base/etc/group"
    cp /etc/ssl/certs/ca-certificates.crt "$work/base/etc/ssl/certs/"
    chmod 1777 "$work/base/tmp"
    tar -C "$work/base" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
      -cf "$work/base.tar" .
    # The home directory is the user's, as distroless's nonroot variant has it.
    tar -C "$work/base" --sort=name --mtime=@0 --owner=65532 --group=65532 --numeric-owner \
      -rf "$work/base.tar" ./home/nonroot
    local image args=()
    for image in operator sidecar; do
      args+=(--ref "rigging-$image:$version" --layer "$work/base.tar"
        --file "$out/rigging-$image:/rigging-$image" --entrypoint "/rigging-$image"
        --user 65532:65532 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
        --label "org.opencontainers.image.title=rigging-$image"
        --label "org.opencontainers.image.version=$version")
    done
    "$here/oci.sh" build "$archive" "${args[@]}"
    rm -rf "$work"
  fi
  echo "$archive"
}

# --- stand-ins for public images --------------------------------------------------------

# Debian packages of the shared root filesystem.
standin_packages="busybox-static,nginx-light,redis-server,redis-tools,nats-server,curl,ca-certificates"

# Both sets share one root filesystem, built once per key and cached beside the archives.
debian_images() { # set
  local set=$1 key
  key=$( (
    echo "$standin_packages"
    cd "$here" && find build.sh oci.sh standins -type f | sort | xargs cat
  ) | sha256sum | cut -c1-16)
  local archive=$cache/$set-$key.tar
  if [[ -f $archive ]]; then
    echo "$archive"
    return
  fi
  local rootfs=$cache/debian-rootfs-$key.tar
  if [[ ! -f $rootfs ]]; then
    command -v mmdebstrap >/dev/null || { log "mmdebstrap is needed (scripts/test.sh installs it)"; return 1; }
    log "a Debian root filesystem for the stand-ins (mmdebstrap, under a minute)"
    rm -f "$cache"/debian-rootfs-*.tar
    # shellcheck disable=SC2016 # mmdebstrap expands "$1" (the new root) itself
    mmdebstrap --quiet --variant=essential --include="$standin_packages" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook="$here/standins/customize.sh \"\$1\"" \
      bookworm "${rootfs%.tar}.partial.tar"
    mv "${rootfs%.tar}.partial.tar" "$rootfs"
  fi
  log "$set images"
  rm -f "$cache/$set"-*.tar
  # One layer for all of them, compressed once: every image starts from the base.
  local s=$here/standins base=rigging.local/standins/base:$key
  local path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  local nginx=(--from "$base" --env "$path" --entrypoint /docker-entrypoint.sh
    --cmd nginx --cmd -g --cmd "daemon off;" --user 101 --port 8080/tcp)
  local redis=(--from "$base" --env "$path" --entrypoint docker-entrypoint.sh --cmd redis-server
    --workdir /data --port 6379/tcp)
  local busybox_path=PATH=/usr/local/busybox:${path#PATH=}
  local busybox=(--from "$base" --env "$busybox_path" --cmd sh)
  local curl=(--from "$base" --env "$path" --entrypoint /entrypoint.sh --cmd curl --user 100:100)
  local nats=(--from "$base" --env "$path" --entrypoint /nats-server --port 4222/tcp)
  case $set in
  standins)
    "$here/oci.sh" build "$archive" \
      --ref "$base" --layer "$rootfs" \
      --ref nginxinc/nginx-unprivileged:1.27-alpine "${nginx[@]}" \
      --ref nginxinc/nginx-unprivileged:1.27 "${nginx[@]}" \
      --ref redis:7-alpine "${redis[@]}" \
      --ref redis:7 "${redis[@]}" \
      --ref busybox:1.36 "${busybox[@]}" \
      --ref curlimages/curl:8.10.1 "${curl[@]}" \
      --ref curlimages/curl:latest "${curl[@]}" \
      --ref nats:2.10 "${nats[@]}"
    ;;
  examples)
    "$here/oci.sh" build "$archive" \
      --ref "$base" --layer "$rootfs" \
      --ref ghcr.io/example/report-source:2.0 "${nginx[@]}" \
      --file "$s/report-source/default.conf:/etc/nginx/conf.d/default.conf" \
      --ref ghcr.io/example/report-worker:2.0 "${busybox[@]}" \
      --ref ghcr.io/example/resize:1.4 --from "$base" --env "$busybox_path" \
      --entrypoint /usr/local/bin/resize
    ;;
  esac
  echo "$archive"
}

archives=()
for set in "${sets[@]}"; do
  case $set in
  rigging) archive=$(rigging_images) ;;
  standins | examples) archive=$(debian_images "$set") ;;
  *)
    log "unknown image set $set (rigging, standins, examples)"
    exit 2
    ;;
  esac
  archives+=("$archive")
done
printf '%s\n' "${archives[@]}"
if [[ -n $import_dir ]]; then
  log "importing into the node of $import_dir"
  "$here/oci.sh" import "$import_dir" "${archives[@]}"
fi
