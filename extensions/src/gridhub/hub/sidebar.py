"""Jupyter server extension for the Dask sidebar (dask-labextension 7.0):
a click on a cluster's card opens its dashboard panes, and the card shows the
cluster's worker jobs in DIRAC while they start.

Dashboards.
dask-labextension 7.0's frontend, on a click on a card, points its dashboard
field at this server's ``dask/dashboard/<id>/`` (unless the cluster's link lies
under this server's ``proxy/``, as a LocalCluster's does here). Its server
handler for that path proxies to the host and port of the cluster's link only
and drops the link's path; GridHub's dashboards live under
``/services/dask-gateway/clusters/<name>/`` (Traefik routes that path to the
cluster's scheduler), so the panel stayed "Dashboard not connected".

This extension answers ``dask/dashboard/<id>/<path>`` first when the cluster's
link has a path: it redirects the browser to ``<link>/<path>``. The panes
(``individual-plots.json``, the plot pages and their websockets) then load
straight from Traefik, as the card's "Dashboard URL" does, and never pass
through the user's server. Any other link (a bare ``http://host:port/status``)
falls through to dask-labextension's own proxy, unchanged.

Progress. The card shows what the server's ``dask/clusters`` answers: name,
addresses, workers connected, cores, memory. For a GridHub cluster this
extension answers the GETs of that route first and appends to the card's name
its worker jobs in DIRAC (queued / matched / running, why the first waiting
one waits, the last failure), from the gateway's jobs API with the server's
own credentials (gridhub.cluster.fetch_worker_jobs), kept for JOBS_TTL
seconds: the sidebar polls every few seconds. Creating, scaling and stopping
(PUT, PATCH, DELETE) stay dask-labextension's.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.routing import PathMatches, Rule

log = logging.getLogger("gridhub.sidebar")

#: dask-labextension's routes (its cluster ids are uuid4 strings)
CLUSTER_ID = r"(?P<cluster_id>\w+-\w+-\w+-\w+-\w+)"
ROUTE = rf"dask/dashboard/{CLUSTER_ID}(?P<proxied_path>/.*)"
CLUSTERS = rf"dask/clusters(?:/{CLUSTER_ID}|/?)"
#: seconds a cluster's worker-job summary is reused
JOBS_TTL = 5.0


def dashboard_base(link: str) -> str | None:
    """The dashboard's root for a cluster's dashboard link (without Dask's
    trailing ``status``), or None when the link has no path of its own (a
    dashboard at the root of a host and port: dask-labextension proxies those)."""
    if not link:
        return None
    base = link.removesuffix("status").rstrip("/")
    path = urlsplit(base).path
    return base if path.strip("/") else None


def _cluster_link(cluster_id: str) -> str:
    from dask_labextension.manager import manager

    model = manager.get_cluster(cluster_id)
    return model["dashboard_link"] if model else ""


class _DashboardUnderPath(PathMatches):
    """The route, for clusters whose dashboard link has a path (else no match,
    and Tornado tries the next rule: dask-labextension's)."""

    def match(self, request: Any) -> dict[str, Any] | None:
        found = super().match(request)
        if found is None:
            return None
        cluster_id = found["path_kwargs"]["cluster_id"].decode()
        return found if dashboard_base(_cluster_link(cluster_id)) else None


class DashboardRedirectHandler(JupyterHandler):
    """``dask/dashboard/<id>/<path>`` -> the cluster's ``<dashboard>/<path>``."""

    @web.authenticated
    def get(self, cluster_id: str, proxied_path: str) -> None:
        base = dashboard_base(_cluster_link(cluster_id))
        if base is None:  # the cluster went away since the route matched
            raise web.HTTPError(404, f"Dask cluster {cluster_id} not found")
        target = base + proxied_path
        if self.request.query:
            target += "?" + self.request.query
        self.redirect(target)

    head = get


class _Get(PathMatches):
    """The route, for GET only (dask-labextension keeps the other methods)."""

    def match(self, request: Any) -> dict[str, Any] | None:
        return super().match(request) if request.method == "GET" else None


class JobsOnCards:
    """Worker-job summaries of GridHub clusters by name, each kept JOBS_TTL s."""

    def __init__(self) -> None:
        self._gateway: Any = None
        self._cache: dict[str, tuple[float, str]] = {}

    async def summary(self, name: str) -> str:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached and now - cached[0] < JOBS_TTL:
            return cached[1]
        from dask_gateway import Gateway

        from ..cluster import fetch_worker_jobs

        if self._gateway is None:
            self._gateway = Gateway(asynchronous=True)  # the server's Dask config
        try:
            report = await fetch_worker_jobs(self._gateway, name)
            text = f"DIRAC: {report.summary()}" if report.jobs else ""
        except Exception as exc:  # the card stays as it was; say why once per TTL
            text = ""
            log.warning("gridhub.hub.sidebar: worker jobs of %s: %s", name, exc)
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] < 60}
        self._cache[name] = (now, text)
        return text

    async def add_to(self, model: dict[str, Any]) -> dict[str, Any]:
        address = model.get("scheduler_address") or ""
        if address.startswith("gateway://"):
            text = await self.summary(address.rsplit("/", 1)[-1])
            if text:
                model = {**model, "name": f"{model['name']} · {text}"}
        return model


class ClustersWithJobsHandler(APIHandler):
    """GET ``dask/clusters[/<id>]`` as dask-labextension answers it, with each
    GridHub cluster's worker jobs appended to its name."""

    @web.authenticated
    async def get(self, cluster_id: str | None = None) -> None:
        from dask_labextension.manager import manager

        jobs: JobsOnCards = self.settings["gridhub_sidebar_jobs"]
        if cluster_id:
            model = manager.get_cluster(cluster_id)
            if model is None:
                raise web.HTTPError(404, f"Dask cluster {cluster_id} not found")
            self.finish(json.dumps(await jobs.add_to(model)))
        else:
            self.finish(json.dumps([await jobs.add_to(m) for m in manager.list_clusters()]))


def _jupyter_server_extension_points():
    return [{"module": "gridhub.hub.sidebar"}]


def _load_jupyter_server_extension(serverapp) -> None:
    web_app = serverapp.web_app
    base_url = web_app.settings["base_url"]
    web_app.settings["gridhub_sidebar_jobs"] = JobsOnCards()
    # First in the application's router: extensions load in name order, so
    # dask-labextension's handlers for the same paths are registered before these.
    router = web_app.default_router
    rules = [
        Rule(_DashboardUnderPath(url_path_join(base_url, ROUTE)), DashboardRedirectHandler),
        Rule(_Get(url_path_join(base_url, CLUSTERS)), ClustersWithJobsHandler),
    ]
    router.rules[:0] = [router.process_rule(r) for r in rules]
    serverapp.log.info(
        "gridhub.hub.sidebar: cluster cards open dashboards under a path and show worker jobs"
    )
