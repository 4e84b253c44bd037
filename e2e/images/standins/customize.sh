#!/usr/bin/env bash
# mmdebstrap's customize hook for the stand-in images' shared root filesystem: run on the
# host with the new root as $1. Users and files every stand-in needs; what differs between
# images (config files, entrypoint, user) is in images.sh.
set -euo pipefail
root=${1:?usage: customize.sh ROOT}
here=$(cd "$(dirname "$0")" && pwd)

# The users the public images run as, with their numbers: nginx-unprivileged's nginx (101),
# the redis image's redis (999), curlimages/curl's curl_user (100). Debian gave redis 100.
sed -i -e '/^redis:/d' "$root/etc/passwd" "$root/etc/shadow"
sed -i -e '/^redis:/d' "$root/etc/group" "$root/etc/gshadow"
cat >>"$root/etc/passwd" <<'PASSWD'
nginx:x:101:101:nginx:/nonexistent:/usr/sbin/nologin
redis:x:999:999::/data:/usr/sbin/nologin
curl_user:x:100:100::/home/curl_user:/bin/sh
PASSWD
cat >>"$root/etc/group" <<'GROUP'
nginx:x:101:
redis:x:999:
curl_group:x:100:
GROUP
mkdir -p "$root/home/curl_user"
chown 100:100 "$root/home/curl_user"

# The busybox image's applets, first on the PATH of the images that use them.
mkdir -p "$root/usr/local/busybox"
chroot "$root" /bin/busybox --install -s /usr/local/busybox

# The nats image's entrypoint is /nats-server.
ln -s /usr/sbin/nats-server "$root/nats-server"

# Everything under rootfs/ (entrypoints, configs, the example programs), as it is.
cp -a "$here/rootfs/." "$root/"

# nginx as the nginx images lay it out: logs to the container's stdout and stderr,
# writable by the unprivileged user where nginx writes.
rm -rf "$root/var/log/nginx" "$root/etc/nginx/sites-enabled" "$root/etc/nginx/sites-available"
mkdir -p "$root/var/log/nginx" "$root/var/cache/nginx"
ln -s /dev/stdout "$root/var/log/nginx/access.log"
ln -s /dev/stderr "$root/var/log/nginx/error.log"
chown -R 101:101 "$root/var/log/nginx" "$root/var/cache/nginx" "$root/etc/nginx/conf.d"

# Redis's working directory.
mkdir -p "$root/data"
chown 999:999 "$root/data"
