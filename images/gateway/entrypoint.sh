#!/bin/sh
# Gateway container entrypoint: gridhub-init (shared secrets and the facility
# certificate, generated once), then, with the embedded DiracX, wait (bounded)
# for its state volume to hold the facility identity the gateway submits with.
set -eu
# the hub's entrypoint may still be fixing the shared volumes' ownership
i=0
until gridhub-init; do
  i=$((i + 1)); [ "$i" -gt 30 ] && exit 1
  sleep 2
done
if [ -z "${GRIDHUB_DIRACX_URL:-}" ]; then
  if [ -z "${FACILITY_DIRACX_STATE:-}" ]; then
    echo "gateway: no DiracX to submit jobs to: set GRIDHUB_DIRACX_URL, or run the" \
      "embedded one (docker-compose.override.yml; COMPOSE_FILE must not leave it out)" >&2
    exit 2
  fi
  state="$FACILITY_DIRACX_STATE"
  i=0
  until [ -r "$state/facility.json" ] && [ -r "$state/legacy-api-key" ]; do
    i=$((i + 1))
    if [ "$i" -gt 180 ]; then
      echo "gateway: no embedded DiracX identity in $state after 180 s" >&2
      exit 1
    fi
    sleep 1
  done
fi
exec "$@"
