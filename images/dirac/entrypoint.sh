#!/bin/sh
# Embedded DIRAC container entrypoint.
#   diracx     the embedded DiracX server (state in /srv/gridhub/dirac); its
#              sandbox store on :8010 answers only requests signed with the
#              credential in the state dir (DiracX's) or DiracX's presigned
#              URLs, and refuses /moto-api/ (gridhub/embedded/store.py)
#   localsite  the local site: runs the facility's jobs as containers of
#              $FACILITY_JOB_IMAGE on the Docker network $FACILITY_GRID_NETWORK
#   other      exec'd as is
# Starts as root only to take the Docker socket's group (gid differs per host)
# and fix volume ownership; every service runs as the unprivileged user gridhub.
set -eu
if [ "$(id -u)" = 0 ]; then
  for d in /srv/gridhub/dirac /srv/gridhub/localsite; do
    [ -d "$d" ] && { chown gridhub:gridhub "$d" 2>/dev/null || true; }
  done
  groups=1000
  sock=/var/run/docker.sock
  if [ -S "$sock" ]; then groups="1000,$(stat -c %g "$sock")"; fi
  exec setpriv --reuid=1000 --regid=1000 --groups="$groups" --inh-caps=-all \
    env HOME=/srv/gridhub "$0" "$@"
fi
state=/srv/gridhub/dirac
case "${1:-diracx}" in
  diracx)
    shift || true
    exec python -m gridhub.embedded --state-dir "$state" --host 0.0.0.0 --port 8000 \
      --public-url "${FACILITY_DIRACX_PUBLIC_URL:-http://dirac:8000}" \
      --s3-host 0.0.0.0 --s3-port 8010 \
      --s3-public-url "${FACILITY_S3_PUBLIC_URL:-http://dirac:8010}" \
      --log-level "${FACILITY_DIRACX_LOG_LEVEL:-warning}" "$@"
    ;;
  localsite)
    shift
    i=0
    until [ -r "$state/legacy-api-key" ] && [ -r "$state/facility.json" ]; do
      i=$((i + 1)); [ "$i" -gt 180 ] && { echo "localsite: no DiracX state" >&2; exit 1; }
      sleep 1
    done
    set -- --diracx-url "${FACILITY_DIRACX_URL:-http://dirac:8000}" \
      --embedded-state-dir "$state" --state-dir /srv/gridhub/localsite \
      --runner docker --image "${FACILITY_JOB_IMAGE:?set FACILITY_JOB_IMAGE}" \
      --docker-network "${FACILITY_GRID_NETWORK:?set FACILITY_GRID_NETWORK}" \
      --job-memory "${GRIDHUB_WORKER_MEM_LIMIT:-3G}" \
      --max-jobs "${GRIDHUB_LOCALSITE_MAX_JOBS:-4}" \
      --site-catalogue "${GRIDHUB_GRID_SITES:-}" \
      --container-prefix "${FACILITY_PROJECT:-gridhub}-job" \
      --label "org.gridhub.facility=${FACILITY_PROJECT:-gridhub}" \
      --heartbeat-interval 3 "$@"
    exec python -m gridhub.localsite "$@"
    ;;
  *) exec "$@" ;;
esac
