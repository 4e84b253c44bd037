#!/bin/sh
# Stand-in for the redis image's entrypoint: options or a .conf file mean redis-server;
# started as root, it hands /data to redis and runs as redis; with no config file,
# protected mode is off, so that clients in other pods are answered.
set -e
case "${1:-}" in
-* | *.conf) set -- redis-server "$@" ;;
esac
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
if [ "${1:-}" = redis-server ]; then
	protected=1
	if [ -f "${2:-}" ] && grep -q '^protected-mode' "$2"; then
		protected=
	fi
	if [ -n "$protected" ]; then
		set -- "$@" --protected-mode no
	fi
fi
umask 0077
exec "$@"
