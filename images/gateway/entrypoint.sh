#!/bin/sh
# Gateway container entrypoint.
# 1. As root (only when started as root): join the group owning the mounted
#    Docker socket (the gateway starts each cluster's scheduler container; the
#    socket's gid differs per host), then run as the unprivileged user gridhub.
# 2. Wait (bounded) for what the hub's gridhub-init shares: the gateway's hub
#    service token, Traefik's provider token, the facility certificate (the
#    shared secrets volume is read-only here).
# 3. With the embedded DiracX, wait (bounded) for its state volume to hold the
#    facility identity the gateway registers users with.
set -eu
if [ "$(id -u)" = 0 ]; then
  groups=1000
  sock=/var/run/docker.sock
  if [ -S "$sock" ]; then groups="1000,$(stat -c %g "$sock")"; fi
  exec setpriv --reuid=1000 --regid=1000 --groups="$groups" --inh-caps=-all \
    env HOME=/srv/gridhub "$0" "$@"
fi
shared="${FACILITY_SHARED_SECRETS:-/srv/gridhub/state/secrets}"
wait_for() {  # wait_for <what> <file>...
  what="$1"; shift
  i=0
  for f in "$@"; do
    until [ -r "$f" ]; do
      i=$((i + 1))
      if [ "$i" -gt 180 ]; then
        echo "gateway: no $what ($f) after 180 s" >&2
        exit 1
      fi
      sleep 1
    done
  done
}
need=""
[ -n "${GRIDHUB_GATEWAY_API_TOKEN:-}" ] || need="$need $shared/gateway_api_token"
[ -n "${GRIDHUB_TRAEFIK_PROVIDER_TOKEN:-}" ] || need="$need $shared/traefik_provider_token"
# Prometheus' token (the monitoring volume; docs/monitoring.md)
[ -z "${FACILITY_MONITORING_SECRETS:-}" ] || need="$need $FACILITY_MONITORING_SECRETS/metrics_token"
# shellcheck disable=SC2086  # $need is a list of paths without spaces
wait_for "shared secret from the hub's gridhub-init" $need "$shared/tls/facility.crt"
if [ -z "${GRIDHUB_DIRACX_URL:-}" ]; then
  if [ -z "${FACILITY_DIRACX_STATE:-}" ]; then
    echo "gateway: no DiracX to submit jobs to: set GRIDHUB_DIRACX_URL, or run the" \
      "embedded one (docker-compose.override.yml; COMPOSE_FILE must not leave it out)" >&2
    exit 2
  fi
  wait_for "embedded DiracX identity" "$FACILITY_DIRACX_STATE/facility.json" \
    "$FACILITY_DIRACX_STATE/legacy-api-key"
fi
exec "$@"
