"""The gateway's accounting and metrics routes (issue 20).

``GET /api/v1/usage``: the caller's own worker jobs with what each used, and
totals per user, group and cluster (``gridhub.usage()`` in a notebook).
``GET /api/v1/usage/all``: the same for every user's jobs, under the metrics
rule below (the hub's usage page, gridhub.hub.monitoring).

``GET /api/v1/metrics``: Prometheus text format, for an admin of the gateway
or a scraper with ``DiracBackend.metrics_token`` as its bearer token:

    gridhub_gateway_clusters{user,state}       clusters dask-gateway holds
    gridhub_gateway_workers{user,state}        their workers
    gridhub_gateway_worker_jobs{status,site}   the live clusters' jobs in DIRAC
    gridhub_gateway_dirac_up                   1 if DiracX answered the search

Each running scheduler's own metrics are relayed under the same rule
(gateway/scrape.py: Prometheus stays off the schedulers' network).

Written by hand (the exposition format is a few lines of text): the gateway
image does not carry prometheus_client.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from dask_gateway_server.routes import api_handler

from ..accounting import job_records, report
from ..dirac import DiracXError
from ..embedded.users import UserNameError, dirac_user_name
from ..promtext import CONTENT_TYPE, exposition
from . import scrape
from .jdl import safe_label

if TYPE_CHECKING:
    from .backend import DiracBackend


DIRAC_PROBE_TIMEOUT = 8.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, backend: DiracBackend) -> None:
    async def usage(request: web.Request) -> web.Response:
        return web.json_response(await usage_of(backend, request["user"].name))

    def scraper_or_admin(handler: Handler) -> Handler:
        """The metrics token (bearer), else a gateway admin (dask-gateway's auth)."""

        async def for_admin(request: web.Request) -> web.StreamResponse:
            if not request["user"].admin:
                raise web.HTTPForbidden(reason="the gateway's metrics are for admins")
            return await handler(request)

        as_user = api_handler(for_admin, user_authenticated=True)

        async def guarded(request: web.Request) -> web.StreamResponse:
            token = backend.metrics_token
            kind, _, given = request.headers.get("Authorization", "").partition(" ")
            if token and kind.lower() == "bearer":
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return web.json_response({"error": "wrong metrics token"}, status=403)
                return await handler(request)
            return await as_user(request)

        return guarded

    async def metrics(request: web.Request) -> web.StreamResponse:
        return await _metrics(backend)

    async def usage_of_all(request: web.Request) -> web.StreamResponse:
        # every user's jobs: the facility's usage page (gridhub.hub.monitoring)
        return web.json_response(report(await job_records(backend.dirac)))

    app.router.add_get("/api/v1/usage", api_handler(usage, user_authenticated=True))
    app.router.add_get("/api/v1/usage/all", scraper_or_admin(usage_of_all))
    app.router.add_get("/api/v1/metrics", scraper_or_admin(metrics))
    scrape.add_routes(app, backend, scraper_or_admin)


async def usage_of(backend: DiracBackend, username: str) -> dict[str, Any]:
    """The accounting of ``username``'s worker jobs (all their clusters)."""
    if backend.diracx_embedded_state_dir:
        try:
            owner = dirac_user_name(username)
        except UserNameError as exc:
            raise web.HTTPUnprocessableEntity(reason=str(exc)) from None
        cond = [{"parameter": "Owner", "operator": "eq", "value": owner}]
    else:  # the robot owns every job (or the user's own login): the user is in JobName
        cond = [
            {
                "parameter": "JobName",
                "operator": "like",
                "value": f"dask-worker {safe_label(username)} %",
            }
        ]
    out: dict[str, Any]
    if backend.diracx_user_logins:  # no facility identity: the user's own login
        try:
            dirac = await backend.dirac_for(username)
        except DiracXError as exc:
            raise web.HTTPUnprocessableEntity(reason=str(exc)) from None
    else:
        dirac = backend.dirac
    try:
        out = report(await job_records(dirac, cond))
    except DiracXError as exc:
        # a DiracX other than the embedded one has no accounting route
        records = await job_records(dirac, cond, parameters_from=_NoParameters())
        out = report(records)
        out["warning"] = f"no accounting parameters from DIRAC ({exc})"
    out["user"] = username
    return out


async def _live_jobs(backend: DiracBackend, live: list[str]) -> list[dict[str, Any]]:
    """The live clusters' jobs: with users' own DiracX logins (no facility
    identity) each user's with their own token."""
    fields = ["JobID", "Status", "Site"]
    if not backend.diracx_user_logins:
        # with no live cluster, a search that finds nothing: DiracX is still
        # probed (an alert fires when it does not answer; docs/monitoring.md)
        probe: dict[str, Any] = (
            {"parameter": "JobGroup", "operator": "in", "values": live}
            if live
            else {"parameter": "JobID", "operator": "eq", "value": 0}
        )
        return await backend.dirac.search([probe], fields)
    found: list[dict[str, Any]] = []
    users: dict[str, list[str]] = {}
    for cluster in backend.db.list_clusters():
        if cluster.name in live:
            users.setdefault(cluster.username, []).append(cluster.name)
    for user, names in users.items():
        cond = [{"parameter": "JobGroup", "operator": "in", "values": names}]
        found += await (await backend.dirac_for(user)).search(cond, fields)
    return found


class _NoParameters:
    async def job_accounting(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        return {}


async def _metrics(backend: DiracBackend) -> web.Response:
    clusters: Counter = Counter()
    workers: Counter = Counter()
    live = []
    for cluster in backend.db.list_clusters():
        clusters[(("user", cluster.username), ("state", cluster.status.name))] += 1
        live.append(cluster.name)
        for w in cluster.workers.values():
            workers[(("user", cluster.username), ("state", w.status.name))] += 1
    jobs: Counter = Counter()
    up: Counter = Counter({(): 1})
    try:
        # within Prometheus' scrape timeout (12 s): a hung DiracX reads as down
        found = await asyncio.wait_for(_live_jobs(backend, live), DIRAC_PROBE_TIMEOUT)
    except (DiracXError, TimeoutError):
        up = Counter({(): 0})
    else:
        for j in found:
            jobs[(("status", str(j.get("Status"))), ("site", str(j.get("Site") or "")))] += 1
    text = exposition(
        [
            ("gridhub_gateway_clusters", "gauge", "Active clusters by user and state.", clusters),
            ("gridhub_gateway_workers", "gauge", "Workers of active clusters.", workers),
            (
                "gridhub_gateway_worker_jobs",
                "gauge",
                "DIRAC jobs of active clusters by status and site.",
                jobs,
            ),
            ("gridhub_gateway_dirac_up", "gauge", "1 if DiracX answered.", up),
        ]
    )
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
