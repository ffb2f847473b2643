#!/bin/sh
# GridHub Dask worker job. Runs on a grid worker node that can only open
# outbound connections; everything it needs came in the input sandbox.
# Usage: sh gridhub-job.sh WORKER_NAME
set -eu
umask 077
worker_name="$1"
here="$(pwd)"
chmod 600 dask.pem
. ./worker.env
export DASK_DISTRIBUTED__COMM__TLS__CA_FILE="$here/dask.crt"
export DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT="$here/dask.crt"
export DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY="$here/dask.pem"
export GRIDHUB_WORKER_NAME="$worker_name"
if [ -f facility-ca.crt ]; then
  export GRIDHUB_FACILITY_CA="$here/facility-ca.crt"
fi

# Run inside the worker image when one is asked for and the node has a
# container runtime (an unpacked image on CVMFS, or a registry image).
if [ -n "${GRIDHUB_WORKER_IMAGE:-}" ] && [ -z "${GRIDHUB_IN_IMAGE:-}" ]; then
  for rt in apptainer singularity; do
    if command -v "$rt" >/dev/null 2>&1; then
      GRIDHUB_IN_IMAGE=1 exec "$rt" exec --contain --bind "$here" --pwd "$here" \
        "$GRIDHUB_WORKER_IMAGE" /bin/sh ./gridhub-job.sh "$worker_name"
    fi
  done
  echo "gridhub: no apptainer/singularity here, running $GRIDHUB_WORKER_IMAGE's command directly" >&2
fi

cmd="$(printf '%s' "$GRIDHUB_WORKER_CMD" | sed "s/{worker_name}/$worker_name/g")"
unset GRIDHUB_WORKER_CMD
eval "exec $cmd"
