#!/bin/sh
# Stand-in for the nginx images' entrypoint: it runs the command it is given. The real
# one also renders /etc/nginx/templates with envsubst; pods here do not use that.
set -e
exec "$@"
