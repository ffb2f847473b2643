"""The reverse path: grid workers reachable through a tunnel they opened.

A grid worker node accepts no inbound connections. ``gridhub-worker``
(:mod:`gridhub.tunnel.worker`) opens an SSH connection to the facility's
:class:`~gridhub.tunnel.server.TunnelServer` through Traefik (TLS, SNI
``gridhub-tunnel``), authenticates as its cluster with the cluster's own key,
and asks for a remote forward named ``<cluster>-<worker>``. The tunnel server
listens on a facility-internal port for that route and Traefik routes SNI
``daskgateway-<cluster>-<worker>`` (TLS passthrough) to it, so the scheduler
and the other workers reach the worker at ``gateway://<traefik>:8786/<route>``
with Dask's own mutual TLS end to end. Workers of one DIRAC site also reach
each other directly on the site network (:mod:`.direct_peers`, a worker
preload), falling back to the relay per peer (:mod:`.peer_choice`). See
docs/reverse-path.md.
"""

from .common import TUNNEL_SNI, route_name, valid_route_for

__all__ = ["TUNNEL_SNI", "route_name", "valid_route_for"]
