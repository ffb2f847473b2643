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
  state="${FACILITY_DIRACX_STATE:-/srv/gridhub/dirac}"
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
