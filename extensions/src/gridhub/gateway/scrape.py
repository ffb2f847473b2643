"""Prometheus' view of each running scheduler, through the gateway (issue 20).

A scheduler runs user code on the `schedulers` network; Prometheus stays off
it (docs/monitoring.md). The gateway, which is on that network anyway, lists
the running schedulers for Prometheus' HTTP service discovery and relays each
one's own Prometheus endpoint (distributed's ``/metrics`` on its dashboard):

    GET /api/v1/metrics/schedulers            http_sd targets: one per running cluster,
                                              labels cluster and user
    GET /api/v1/metrics/schedulers/<cluster>  that scheduler's /metrics, as it answered

Both for the scraper with ``DiracBackend.metrics_token`` (bearer) or a gateway
admin, as ``/api/v1/metrics`` (gateway/observe.py). Only GET of ``/metrics``
is relayed: nothing else of a scheduler is reachable this way.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from dask_gateway_server.backends.db_base import JobStatus

if TYPE_CHECKING:
    from .backend import DiracBackend

PREFIX = "/api/v1/metrics/schedulers"
RELAY_TIMEOUT = 10.0  # below Prometheus' scrape timeout: a hung scheduler is "down", not slow


def add_routes(
    app: web.Application,
    backend: DiracBackend,
    guarded: Callable[
        [Callable[[web.Request], Awaitable[web.StreamResponse]]],
        Callable[[web.Request], Awaitable[web.StreamResponse]],
    ],
) -> None:
    """``guarded`` wraps a handler in the metrics routes' check (token or admin)."""

    async def targets(request: web.Request) -> web.StreamResponse:
        # behind Traefik, which strips the gateway's prefix (and says which), the
        # scrape path keeps it; Prometheus in compose asks gateway:8000 directly
        prefix = request.headers.get("X-Forwarded-Prefix", "").rstrip("/")
        if not re.fullmatch(r"(/[A-Za-z0-9._-]+)*", prefix):
            prefix = ""
        return web.json_response(scheduler_targets(backend, request.host, prefix))

    async def relay(request: web.Request) -> web.StreamResponse:
        name = request.match_info["cluster"]
        cluster = backend.db.get_cluster(name)
        if cluster is None or cluster.status != JobStatus.RUNNING:
            raise web.HTTPNotFound(reason=f"no running cluster {name}")
        if not cluster.dashboard_address:
            raise web.HTTPServiceUnavailable(reason=f"cluster {name} has no dashboard yet")
        url = cluster.dashboard_address.rstrip("/") + "/metrics"
        timeout = aiohttp.ClientTimeout(total=RELAY_TIMEOUT)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(url, allow_redirects=False) as r:
                    body = await r.read()
                    kind = r.headers.get("Content-Type", "text/plain")
                    status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise web.HTTPBadGateway(
                reason=f"scheduler of {name} did not answer ({type(exc).__name__})"
            ) from None
        if status != 200:
            raise web.HTTPBadGateway(reason=f"scheduler of {name} answered {status}")
        return web.Response(body=body, headers={"Content-Type": kind})

    app.router.add_get(PREFIX, guarded(targets))
    app.router.add_get(PREFIX + "/{cluster:[A-Za-z0-9._-]+}", guarded(relay))


def scheduler_targets(backend: DiracBackend, gateway_host: str, prefix: str = "") -> list[dict]:
    """Prometheus http_sd: every running cluster with a dashboard, scraped at the
    gateway (``gateway_host``, as Prometheus reached it) on its relay path
    (under ``prefix``, the path a proxy in front strips)."""
    out = []
    for cluster in backend.db.list_clusters():
        if cluster.status != JobStatus.RUNNING or not cluster.dashboard_address:
            continue
        out.append(
            {
                "targets": [gateway_host],
                "labels": {
                    "__metrics_path__": f"{prefix}{PREFIX}/{cluster.name}",
                    "instance": f"scheduler-{cluster.name}",
                    "cluster": cluster.name,
                    "user": cluster.username,
                },
            }
        )
    return out
