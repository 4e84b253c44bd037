#!/bin/sh
# Stand-in for curlimages/curl's entrypoint: options alone mean options to curl.
set -e
case "${1:-}" in
-*) set -- curl "$@" ;;
esac
exec "$@"
