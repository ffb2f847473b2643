"""Scheduler preload: keep host names in ``gateway://`` worker addresses.

A Dask scheduler resolves every worker's contact address to an IP address in
its own DNS view (dask_gateway's comm backend does so for ``gateway://``). In
the compose facility Traefik has one name, PUBLIC_HOST, but a different
address on the `internal` network (where schedulers run) and on the `grid`
network (where workers run): a resolved address that the scheduler hands to
one worker for another points at an IP the grid cannot reach, so transfers
between workers time out. Keeping the name lets each side resolve it in its
own view; with one public DNS name both views agree and nothing changes.

Used as ``dask scheduler --preload gridhub.gateway.named_addresses``
(hub_config/dask_gateway_config.py). A preload, not the package's
``distributed.comm.backends`` entry point: importing dask_gateway registers
its own backend for the scheme directly, and the scheduler imports it.
"""

from __future__ import annotations

from dask_gateway.comm import GatewayBackend, parse_gateway_address
from distributed.comm.registry import backends


class NamedGatewayBackend(GatewayBackend):
    """dask_gateway's ``gateway://`` backend, resolving nothing."""

    def resolve_address(self, loc: str) -> str:
        host, port, path = parse_gateway_address(loc)
        return f"{host}:{port}/{path}"


backends["gateway"] = NamedGatewayBackend()
