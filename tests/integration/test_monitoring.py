"""Monitoring (issue 20) with real processes: Debian's Prometheus (apt-get install
prometheus; .ci/run installs it) and a real JupyterHub with GridHub's monitoring service.

1. promtool runs GridHub's alert rules (images/prometheus/alerts.yml) on made-up
   series (prometheus/alerts_test.yml): each alert fires when, and only when, it should.
2. A masterclass hub whose monitoring service relays a Prometheus on loopback that
   scrapes the hub's /hub/metrics with the hub's metrics token: a student gets 403, the
   teacher (an admin) gets the usage page with its plots and Prometheus' answers.
3. Prometheus finds each running Dask scheduler by the gateway's HTTP service discovery
   and scrapes it through the gateway's relay (a real dask-gateway with the DIRAC
   backend, the embedded DiracX, the local site), as the compose facility does.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

try:
    from .hub_fixtures import *  # noqa: F403
    from .hub_fixtures import ARTIFACTS, REPO, login_form
    from .test_hub_masterclass import CODE, TEACHER_CODE, browser, masterclass_hub
except ImportError:
    from hub_fixtures import *  # noqa: F403
    from hub_fixtures import ARTIFACTS, REPO, login_form
    from test_hub_masterclass import CODE, TEACHER_CODE, browser, masterclass_hub

from gateway_fixtures import Facility, running_cluster
from processes import free_port, wait_for

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL), reason="Debian's prometheus package is not installed"
)
RULES = REPO / "images" / "prometheus" / "alerts.yml"


@needs_prometheus
def test_alert_rules_fire_when_they_should():
    here = Path(__file__).parent / "prometheus"
    p = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


class Prometheus:
    """A Prometheus process on loopback, as the image runs it (prefix, no admin API)."""

    def __init__(self, config: str, port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="gridhub-it-prometheus-"))
        (self.dir / "prometheus.yml").write_text(config)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ARTIFACTS / "logs" / f"prometheus-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.external-url=/services/monitoring/prometheus/",
                    "--web.route-prefix=/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 60, "prometheus ready", self.log)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            return httpx.get(self.url + "/-/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def up_of(base: httpx.Client | str, job: str, path: str = "/api/v1/query") -> float | None:
    params = {"query": f'up{{job="{job}"}}'}
    r = (
        base.get(path, params=params)
        if isinstance(base, httpx.Client)
        else httpx.get(base + path, params=params, timeout=10)
    )
    r.raise_for_status()
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@needs_prometheus
def test_admins_see_usage_and_query_prometheus_students_are_refused(hub_factory):
    prometheus_port = free_port()
    hub = masterclass_hub(
        hub_factory,
        "monitoring",
        GRIDHUB_PROMETHEUS_URL=f"http://127.0.0.1:{prometheus_port}",
        GRIDHUB_MONITORING_PORT=str(free_port()),
    )
    token_file = hub.state / "secrets" / "metrics_token"
    assert token_file.stat().st_mode & 0o077 == 0  # the hub's token for Prometheus: 0600
    hub_port = hub.env["GRIDHUB_HUB_BIND_URL"].rpartition(":")[2]
    prom = Prometheus(
        "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
        f"rule_files: [{RULES}]\n"
        "scrape_configs:\n"
        "  - job_name: hub\n"
        "    metrics_path: /hub/metrics\n"
        f"    authorization: {{credentials_file: {token_file}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{hub_port}']}}]\n",
        prometheus_port,
    )
    try:
        prom.start()
        # Prometheus scrapes the hub with the hub's metrics token
        wait_for(lambda: up_of(prom.url, "hub") == 1, 60, "hub scraped (up == 1)", prom.log)

        with browser(hub) as alice:
            assert login_form(alice, "alice", CODE).status_code == 302
            r = alice.get("/services/monitoring/")
            assert r.status_code == 403, (r.status_code, r.text[-300:])
            r = alice.get("/services/monitoring/prometheus/api/v1/query", params={"query": "up"})
            assert r.status_code == 403 and '"status":"success"' not in r.text

        with browser(hub) as teacher:
            assert login_form(teacher, "teacher", TEACHER_CODE).status_code == 302
            page = teacher.get("/services/monitoring/")
            assert page.status_code == 200, page.text[-500:]
            for ident in ("active-users", "servers", "clusters", "workers", "cpu-user"):
                assert f"id='plot-{ident}'" in page.text, ident
            svg = page.text[page.text.index("<svg") : page.text.index("</svg>") + 6]
            ElementTree.fromstring(svg)  # noqa: S314 (our own page): well-formed SVG
            # no gateway in this test: the page says so instead of failing
            assert "accounting did not answer" in page.text
            # the relay: Prometheus' API and UI under the service's prefix
            base = "/services/monitoring/prometheus"
            assert up_of(teacher, "hub", base + "/api/v1/query") == 1
            rules = teacher.get(base + "/api/v1/rules").json()["data"]["groups"]
            assert {r["name"] for g in rules for r in g["rules"]} >= {
                "ScrapeTargetDown",
                "GatewayCannotReachDirac",
                "GridJobsFailingAtSite",
                "SiteHasNoFreeSlots",
            }
            ui = teacher.get(base + "/")
            assert ui.status_code == 200 and "Prometheus" in ui.text
            assert f"{base}/classic/static/" in ui.text  # links stay under the prefix
            post = teacher.post(base + "/api/v1/query", data={"query": "up"})
            assert post.status_code == 200 and post.json()["status"] == "success"
            # nothing but the read-only query routes takes a POST
            refused = teacher.post(base + "/api/v1/admin/tsdb/snapshot")
            assert refused.status_code == 405
    finally:
        prom.stop()


METRICS_TOKEN = secrets.token_hex(16)


class ScrapedFacility(Facility):
    def config(self, **overrides: object) -> str:
        return super().config(DiracBackend__metrics_token=METRICS_TOKEN, **overrides)


def query(url: str, expr: str) -> list[dict]:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


@needs_prometheus
def test_prometheus_scrapes_each_running_scheduler_through_the_gateway(
    tmp_path_factory, diracx_server, diracx_local_site
):
    work = tmp_path_factory.mktemp("scrape")
    facility = ScrapedFacility(work, diracx_server, diracx_local_site)
    token = work / "metrics_token"
    token.write_text(METRICS_TOKEN)
    token.chmod(0o600)
    # (through Traefik, under the gateway's prefix; compose scrapes gateway:8000 directly)
    gateway, _, prefix = facility.public_url.split("://", 1)[1].partition("/")
    auth = f"authorization: {{type: Bearer, credentials_file: {token}}}"
    tls = f"tls_config: {{ca_file: {facility.cert}}}"
    prom = Prometheus(
        "global: {scrape_interval: 2s}\n"
        "scrape_configs:\n"
        "  - job_name: gateway\n"
        f"    metrics_path: /{prefix}/api/v1/metrics\n"
        f"    scheme: https\n    {auth}\n    {tls}\n"
        f"    static_configs: [{{targets: ['{gateway}']}}]\n"
        "  - job_name: schedulers\n"
        f"    scheme: https\n    {auth}\n    {tls}\n"
        "    http_sd_configs:\n"
        f"      - url: {facility.public_url}/api/v1/metrics/schedulers\n"
        "        refresh_interval: 2s\n"
        f"        {auth}\n        {tls}\n",
        free_port(),
    )
    try:
        with facility.client("scraped") as gw:
            with running_cluster(gw, 1, timeout=120) as (cluster, client):
                prom.start()

                def scheduler_scraped() -> bool:
                    up = query(prom.url, f'up{{job="schedulers",cluster="{cluster.name}"}}')
                    workers = query(
                        prom.url, f'sum(dask_scheduler_workers{{cluster="{cluster.name}"}})'
                    )
                    return bool(up and up[0]["value"][1] == "1" and workers) and (
                        workers[0]["value"][1] == "1"
                    )

                wait_for(scheduler_scraped, 90, "the scheduler scraped via the gateway", prom.log)
                (target,) = query(prom.url, f'up{{job="schedulers",cluster="{cluster.name}"}}')
                assert target["metric"]["user"] == "scraped"
                assert target["metric"]["instance"] == f"scheduler-{cluster.name}"
                # the gateway's own metrics count the cluster (the same token)
                wait_for(
                    lambda: (
                        [
                            x["value"][1]
                            for x in query(prom.url, 'gridhub_gateway_clusters{user="scraped"}')
                        ]
                        == ["1"]
                    ),
                    30,
                    "the gateway scraped",
                    lambda: httpx.get(prom.url + "/api/v1/targets", timeout=10).text,
                )
                client.close()

        # a stopped cluster leaves the service discovery: no target left to be "down"
        def gone() -> bool:
            r = httpx.get(prom.url + "/api/v1/targets", timeout=10).json()
            return not [t for t in r["data"]["activeTargets"] if t["labels"]["job"] == "schedulers"]

        wait_for(gone, 60, "the stopped cluster's target to go", prom.log)
    finally:
        prom.stop()
        facility.stop()
