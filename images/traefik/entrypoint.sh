#!/bin/sh
# Traefik container entrypoint: wait (bounded) for what gridhub-init writes
# (the provider token, Traefik's TLS file), render the static configuration
# into a private temporary directory, exec Traefik.
#   GRIDHUB_TRAEFIK_PROVIDER_TOKEN  the token, when configured (else the secrets volume)
#   FACILITY_HTTP_PORT / FACILITY_HTTPS_PORT / FACILITY_DASK_PORT  (80 / 443 / 8786)
#   FACILITY_PROVIDER_URL           the gateway's route endpoint
#   FACILITY_PUBLIC_HOST            the facility's DNS name (the ACME certificate's)
#   FACILITY_ACME_EMAIL             set: ACME certificate and HSTS (the template's ##acme
#                                   lines); empty: self-signed (its ##self-signed lines)
#   FACILITY_ACME_CA_SERVER         ACME directory (Let's Encrypt's by default)
set -eu
fail() { echo "traefik: $*" >&2; exit 1; }
matches() { printf '%s' "$1" | grep -Eqx "$2"; }

mode=self-signed
if [ -n "${FACILITY_ACME_EMAIL:-}" ]; then
  mode=acme
  # all three end up inside the YAML: accept only what such values can be
  host="${FACILITY_PUBLIC_HOST:-}"
  label='[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?'
  if ! matches "$host" "$label(\.$label)+" || matches "$host" '.*\.localhost|[0-9.]+'; then
    fail "ACME_EMAIL is set, so PUBLIC_HOST must be the facility's public DNS name (got '$host')"
  fi
  matches "$FACILITY_ACME_EMAIL" "[A-Za-z0-9._+-]+@$label(\.$label)+" \
    || fail "ACME_EMAIL '$FACILITY_ACME_EMAIL' is not an e-mail address"
  matches "${FACILITY_ACME_CA_SERVER:=https://acme-v02.api.letsencrypt.org/directory}" \
          'https://[A-Za-z0-9._~:/%-]+' \
    || fail "ACME_CA_SERVER '$FACILITY_ACME_CA_SERVER' is not an https:// URL"
fi

secrets=/srv/gridhub/secrets
i=0
until { [ -n "${GRIDHUB_TRAEFIK_PROVIDER_TOKEN:-}" ] || [ -r "$secrets/traefik_provider_token" ]; } \
      && [ -r /etc/traefik/dynamic/tls.yml ]; do
  i=$((i + 1))
  [ "$i" -le 180 ] || fail "no provider token / tls.yml after 180 s (is the gateway or hub up?)"
  sleep 1
done
token="${GRIDHUB_TRAEFIK_PROVIDER_TOKEN:-$(cat "$secrets/traefik_provider_token")}"
case "$token" in *[!A-Za-z0-9_.=+/-]*) fail "bad provider token characters";; esac
umask 077
mkdir -p /tmp/traefik
sed -e "s|@HTTP_PORT@|${FACILITY_HTTP_PORT:-80}|" \
    -e "s|@HTTPS_PORT@|${FACILITY_HTTPS_PORT:-443}|" \
    -e "s|@DASK_PORT@|${FACILITY_DASK_PORT:-8786}|" \
    -e "s|@PROVIDER_URL@|${FACILITY_PROVIDER_URL:-http://gateway:8000/api/v1/traefik}|" \
    -e "s|@LOG_LEVEL@|${FACILITY_TRAEFIK_LOG_LEVEL:-INFO}|" \
    -e "s|@PROVIDER_TOKEN@|$token|" \
    -e "s|@PUBLIC_HOST@|${FACILITY_PUBLIC_HOST:-}|" \
    -e "s|@ACME_EMAIL@|${FACILITY_ACME_EMAIL:-}|" \
    -e "s|@ACME_CA_SERVER@|${FACILITY_ACME_CA_SERVER:-}|" \
    -e "s|^##$mode ||" -e "/^##/d" \
    /etc/traefik/traefik.yml.tmpl > /tmp/traefik/traefik.yml
exec traefik --configFile=/tmp/traefik/traefik.yml "$@"
