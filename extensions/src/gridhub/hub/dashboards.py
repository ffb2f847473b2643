"""Jupyter server extension: a click on a cluster's card in the Dask sidebar
opens that cluster's dashboard panes, for dashboards under a path.

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
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.routing import PathMatches, Rule

#: dask-labextension's route (its cluster ids are uuid4 strings)
ROUTE = r"dask/dashboard/(?P<cluster_id>\w+-\w+-\w+-\w+-\w+)(?P<proxied_path>/.*)"


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


def _jupyter_server_extension_points():
    return [{"module": "gridhub.hub.dashboards"}]


def _load_jupyter_server_extension(serverapp) -> None:
    web_app = serverapp.web_app
    pattern = url_path_join(web_app.settings["base_url"], ROUTE)
    # First in the application's router: extensions load in name order, so
    # dask-labextension's handler for the same path is registered before this.
    router = web_app.default_router
    router.rules.insert(
        0, router.process_rule(Rule(_DashboardUnderPath(pattern), DashboardRedirectHandler))
    )
    serverapp.log.info("gridhub.hub.dashboards: sidebar cards open dashboards under a path")
