#!/bin/sh
# Hub container entrypoint.
# 1. As root (only when started as root): join the group owning the mounted
#    Docker socket (DockerSpawner needs it; its gid differs per host) and make
#    sure the volumes belong to the service user.
# 2. gridhub-init: shared secrets, the facility certificate, Traefik's TLS file,
#    the masterclass notebooks volume (all once; nothing is regenerated).
# 3. exec JupyterHub as the unprivileged user gridhub.
set -eu
if [ "$(id -u)" = 0 ]; then
  for d in /srv/gridhub/state /srv/gridhub/state/secrets /srv/gridhub/shared \
           /srv/gridhub/proxy /srv/gridhub/certs /srv/gridhub/masterclass \
           /srv/gridhub/monitoring /srv/gridhub/lake; do
    [ -d "$d" ] && { chown gridhub:gridhub "$d" 2>/dev/null || true; }
  done
  chmod 0700 /srv/gridhub/state /srv/gridhub/state/secrets /srv/gridhub/shared \
    /srv/gridhub/monitoring 2>/dev/null || true
  groups=1000
  sock=/var/run/docker.sock
  if [ -S "$sock" ]; then groups="1000,$(stat -c %g "$sock")"; fi
  exec setpriv --reuid=1000 --regid=1000 --groups="$groups" --inh-caps=-all \
    env HOME=/srv/gridhub "$0" "$@"
fi
gridhub-init
exec "$@"
