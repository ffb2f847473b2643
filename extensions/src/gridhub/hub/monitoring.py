"""The facility's monitoring for admins: a hub-managed JupyterHub service.

    /services/monitoring/               the usage page: plots over time (SVG, drawn here)
                                        of active users, running servers, Dask clusters,
                                        workers by site, and CPU hours by user and group
                                        from the accounting; ?hours=N (default 24)
    /services/monitoring/prometheus/... Prometheus' own UI and HTTP API, relayed
                                        (e.g. .../prometheus/api/v1/query?query=up)

Who may open it: JupyterHub's rule for services, the scope
``access:services!service=monitoring``, which admins hold (in a masterclass the
teachers, who are admins) and users and students do not: the hub answers them 403.
The service holds no hub API scope of its own.

Prometheus (docs/monitoring.md) is on the facility's internal network with no
authentication of its own; only this relay reaches it from outside. The relay
passes GET (and POST to the read-only query routes, as Prometheus' UI sends them)
and nothing of the browser's cookies or headers. Prometheus runs without its
admin API and lifecycle routes, so nothing relayed changes it.

The CPU hours come from the gateway's ``GET /api/v1/usage/all`` (every user's
worker jobs, with what each used), read with the facility's metrics token.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import html
import logging
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from .service import serve
from .svgplot import line_chart

log = logging.getLogger("gridhub.monitoring")

#: PromQL of the usage page's plots over time: (id, title, y label, query, legend label)
PLOTS = (
    (
        "active-users",
        "Active users",
        "users",
        'jupyterhub_active_users{period="24h"}',
        "in the last 24 h",
    ),
    ("servers", "Running servers", "servers", "sum(jupyterhub_running_servers)", "servers"),
    ("clusters", "Dask clusters", "clusters", "sum(gridhub_gateway_clusters)", "clusters"),
    (
        "workers",
        "Workers by site (DIRAC jobs running)",
        "workers",
        'sum by (site) (gridhub_gateway_worker_jobs{status="Running"})',
        "{site}",
    ),
)
# Prometheus routes a POST may reach (its UI posts long queries); all read-only
POST_ROUTES = re.compile(r"api/v1/(query|query_range|query_exemplars|series|labels)")
MAX_HOURS = 24 * 90


class Sources:
    """Prometheus and the gateway's accounting, as the page reads them."""

    def __init__(self, prometheus_url: str, gateway_url: str, token_file: str):
        self.prometheus = httpx.AsyncClient(base_url=prometheus_url.rstrip("/"), timeout=30)
        self.gateway_url = gateway_url.rstrip("/")
        self.token_file = Path(token_file)

    async def range(self, query: str, start: float, end: float) -> list[dict[str, Any]]:
        step = max(15, int((end - start) / 240))  # about 240 points a plot
        r = await self.prometheus.get(
            "/api/v1/query_range",
            params={"query": query, "start": start, "end": end, "step": step},
        )
        r.raise_for_status()
        return r.json()["data"]["result"]

    async def accounting(self) -> dict[str, Any]:
        token = self.token_file.read_text().strip()
        async with httpx.AsyncClient(timeout=60) as c:
            r = await c.get(
                f"{self.gateway_url}/api/v1/usage/all",
                headers={"Authorization": f"Bearer {token}"},
            )
        r.raise_for_status()
        return r.json()


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def hub_user(job: dict[str, Any]) -> str:
    """The hub user a worker job ran for: from its JobName ("dask-worker <user>
    <worker>", gateway/jdl.py), which holds it also where a robot identity owns
    every job (an external DiracX); else the DIRAC owner."""
    parts = str(job.get("job_name") or "").split()
    if len(parts) == 3 and parts[0] == "dask-worker":
        return parts[1]
    return str(job.get("owner") or "(none)")


def cpu_hours_over_time(
    jobs: list[dict[str, Any]], by: str, start: float
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, float]]:
    """Running totals of CPU hours per ``by`` ("user": the hub user, or a job
    record's field, e.g. "owner_group") as jobs ended, from ``start`` on, and
    each one's total over the period."""
    group_of = hub_user if by == "user" else (lambda j: str(j.get(by) or "(none)"))
    ended = sorted(
        (t, group_of(j), (j.get("cpu_s") or 0.0) / 3600)
        for j in jobs
        if (t := _epoch(j.get("end_time"))) is not None and t >= start and j.get("cpu_s")
    )
    series: dict[str, list[tuple[float, float]]] = defaultdict(lambda: [(start, 0.0)])
    for t, key, hours in ended:
        series[key].append((t, series[key][-1][1] + hours))
    totals = {k: v[-1][1] for k, v in series.items()}
    return dict(series), totals


class Base(HubOAuthenticated, web.RequestHandler):
    @property
    def sources(self) -> Sources:
        return self.settings["gridhub_sources"]


class UsagePage(Base):
    @web.authenticated
    async def get(self) -> None:
        try:
            hours = min(max(float(self.get_argument("hours", "24")), 1), MAX_HOURS)
        except ValueError:
            raise web.HTTPError(400, "hours must be a number") from None
        end = time.time()
        start = end - hours * 3600
        charts, problems = await self._charts(start, end)
        links = " · ".join(
            f"<a href='?hours={h}'>{label}</a>"
            for h, label in ((6, "6 h"), (24, "24 h"), (168, "7 days"), (720, "30 days"))
        )
        prefix = self.settings["prefix"]
        self.finish(
            PAGE.format(
                hours=_n(hours),
                links=links,
                charts="".join(f"<div class=chart>{c}</div>" for c in charts),
                problems="".join(f"<p class=problem>{html.escape(p)}</p>" for p in problems),
                prometheus=f"{prefix}prometheus/",
                alerts=f"{prefix}prometheus/classic/alerts",
                who=html.escape(self.current_user["name"]),
            )
        )

    async def _charts(self, start: float, end: float) -> tuple[list[str], list[str]]:
        problems: list[str] = []

        async def prom(ident: str, title: str, unit: str, query: str, label: str) -> str:
            try:
                result = await self.sources.range(query, start, end)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                problems.append(f"{title}: Prometheus did not answer ({type(exc).__name__})")
                result = []
            series = {
                label.format(**{"site": "(none)", **r["metric"]}): [
                    (float(t), float(v)) for t, v in r["values"]
                ]
                for r in result
            }
            return line_chart(
                title, series, y_label=unit, start=start, end=end, chart_id=f"plot-{ident}"
            )

        charts = list(await asyncio.gather(*(prom(*p) for p in PLOTS)))
        try:
            jobs = (await self.sources.accounting())["jobs"]
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            problems.append(f"CPU hours: the gateway's accounting did not answer ({exc})")
            jobs = []
        for by, title in (("user", "CPU hours by user"), ("owner_group", "CPU hours by group")):
            series, _ = cpu_hours_over_time(jobs, by, start)
            charts.append(
                line_chart(
                    title,
                    series,
                    y_label="CPU hours",
                    start=start,
                    end=end,
                    step=True,
                    chart_id=f"plot-cpu-{by}",
                )
            )
        return charts, problems


def _n(value: float) -> str:
    return f"{value:g}"


class PrometheusRelay(Base):
    """Prometheus' UI and API under the service's prefix (Prometheus runs with
    --web.external-url=<prefix>prometheus/ and --web.route-prefix=/)."""

    @web.authenticated
    async def get(self, path: str) -> None:
        await self._relay("GET", path)

    @web.authenticated
    async def post(self, path: str) -> None:
        if not POST_ROUTES.fullmatch(path):
            raise web.HTTPError(405, "only Prometheus' query routes take a POST here")
        await self._relay("POST", path)

    def check_xsrf_cookie(self) -> None:
        # Prometheus' UI posts queries without tornado's XSRF token; every relayed
        # POST is a read-only query (POST_ROUTES), so a forged one changes nothing
        return

    async def _relay(self, method: str, path: str) -> None:
        headers = {
            k: v for k, v in self.request.headers.items() if k.lower() in ("accept", "content-type")
        }
        url = "/" + path + (f"?{self.request.query}" if self.request.query else "")
        try:
            r = await self.sources.prometheus.request(
                method, url, headers=headers, content=self.request.body or None
            )
        except httpx.HTTPError as exc:
            raise web.HTTPError(502, f"Prometheus did not answer ({type(exc).__name__})") from None
        self.set_status(r.status_code)
        for k in ("Content-Type", "Location", "Cache-Control"):
            if k in r.headers:
                self.set_header(k, r.headers[k])
        self.finish(r.content)


PAGE = """<!doctype html><html><head><meta charset=utf-8><title>Facility usage</title>
<style>body{{font-family:sans-serif;margin:2em}} .chart{{display:inline-block;margin:.5em}}
.problem{{color:#b00}}</style></head><body>
<h1 id=usage>Facility usage over the last {hours} h</h1>
<p>{links} · <a href='{prometheus}'>Prometheus</a> · <a href='{alerts}'>alerts</a>
· logged in as {who}</p>{problems}{charts}</body></html>"""


def main() -> None:
    p = argparse.ArgumentParser(description="The facility's usage page and Prometheus relay.")
    p.add_argument(
        "--prometheus-url", required=True, help="Prometheus, e.g. http://prometheus:9090"
    )
    p.add_argument("--gateway-url", required=True, help="the gateway's internal URL")
    p.add_argument("--token-file", required=True, help="the metrics token (the gateway's usage)")
    p.add_argument(
        "--listen-host",
        default="",
        help="address to listen on (the hub's own bind address; default: the host of"
        " JUPYTERHUB_SERVICE_URL)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[gridhub-monitoring %(asctime)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    app = web.Application(
        [
            (prefix, UsagePage),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(prefix, "prometheus/(.*)"), PrometheusRelay),
        ],
        cookie_secret=os.urandom(32),
        gridhub_sources=Sources(args.prometheus_url, args.gateway_url, args.token_file),
        prefix=prefix,
        xsrf_cookies=False,
    )
    log.info("monitoring at %s (Prometheus %s)", prefix, args.prometheus_url)
    serve(app, args.listen_host)


if __name__ == "__main__":
    main()
