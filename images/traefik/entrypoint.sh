#!/bin/sh
# Traefik container entrypoint: wait (bounded) for what gridhub-init writes
# (the provider token, Traefik's TLS file), render the static configuration
# into a private temporary directory, exec Traefik.
#   GRIDHUB_TRAEFIK_PROVIDER_TOKEN  the token, when configured (else the secrets volume)
#   FACILITY_HTTP_PORT / FACILITY_HTTPS_PORT / FACILITY_DASK_PORT  (80 / 443 / 8786)
#   FACILITY_PROVIDER_URL           the gateway's route endpoint
set -eu
secrets=/srv/gridhub/secrets
i=0
until { [ -n "${GRIDHUB_TRAEFIK_PROVIDER_TOKEN:-}" ] || [ -r "$secrets/traefik_provider_token" ]; } \
      && [ -r /etc/traefik/dynamic/tls.yml ]; do
  i=$((i + 1))
  if [ "$i" -gt 180 ]; then
    echo "traefik: no provider token / tls.yml after 180 s (is the gateway or hub up?)" >&2
    exit 1
  fi
  sleep 1
done
token="${GRIDHUB_TRAEFIK_PROVIDER_TOKEN:-$(cat "$secrets/traefik_provider_token")}"
case "$token" in *[!A-Za-z0-9_.=+/-]*) echo "traefik: bad provider token characters" >&2; exit 1;; esac
umask 077
mkdir -p /tmp/traefik
sed -e "s|@HTTP_PORT@|${FACILITY_HTTP_PORT:-80}|" \
    -e "s|@HTTPS_PORT@|${FACILITY_HTTPS_PORT:-443}|" \
    -e "s|@DASK_PORT@|${FACILITY_DASK_PORT:-8786}|" \
    -e "s|@PROVIDER_URL@|${FACILITY_PROVIDER_URL:-http://gateway:8000/api/v1/traefik}|" \
    -e "s|@LOG_LEVEL@|${FACILITY_TRAEFIK_LOG_LEVEL:-INFO}|" \
    -e "s|@PROVIDER_TOKEN@|$token|" \
    /etc/traefik/traefik.yml.tmpl > /tmp/traefik/traefik.yml
exec traefik --configFile=/tmp/traefik/traefik.yml "$@"
