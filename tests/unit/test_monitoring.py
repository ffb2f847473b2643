"""Monitoring's pieces (issue 20; docs/monitoring.md): where the metrics token lives,
Traefik's metrics router, the Prometheus image's configuration and its place in
compose, the gateway's scheduler relay, the hub service, the usage page's plots."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import bcrypt
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from dask_gateway_server.backends.db_base import JobStatus
from gridhub.gateway import observe
from gridhub.hub import secrets
from gridhub.hub.metrics_access import traefik_metrics_yml
from gridhub.hub.monitoring import cpu_hours_over_time
from gridhub.hub.svgplot import line_chart
from hub_build import build

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "images" / "prometheus"


# ---------------------------------------------------------------- the token


def test_metrics_token_lives_in_the_monitoring_directory(tmp_path, monkeypatch):
    state, mon = tmp_path / "state", tmp_path / "monitoring"
    monkeypatch.setenv("FACILITY_MONITORING_SECRETS", str(mon))
    token = secrets.load_or_create(state, "metrics_token")
    assert (mon / "metrics_token").read_text().strip() == token
    assert (mon / "metrics_token").stat().st_mode & 0o777 == 0o600
    assert mon.stat().st_mode & 0o777 == 0o700
    assert not (state / "secrets" / "metrics_token").exists()
    assert secrets.load_or_create(state, "metrics_token") == token  # never regenerated
    # a configured token is what the readers (Prometheus, the gateway) find
    assert secrets.load_or_create(state, "metrics_token", "configured-token") == "configured-token"
    assert (mon / "metrics_token").read_text().strip() == "configured-token"


def test_an_older_hubs_metrics_token_moves_to_the_monitoring_directory(tmp_path, monkeypatch):
    state, mon = tmp_path / "state", tmp_path / "monitoring"
    (state / "secrets").mkdir(parents=True)
    (state / "secrets" / "metrics_token").write_text("token-an-external-scraper-knows\n")
    monkeypatch.setenv("FACILITY_MONITORING_SECRETS", str(mon))
    assert secrets.load_or_create(state, "metrics_token") == "token-an-external-scraper-knows"
    assert (mon / "metrics_token").stat().st_mode & 0o777 == 0o600


def test_without_a_monitoring_directory_the_token_stays_with_the_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("FACILITY_MONITORING_SECRETS", raising=False)
    token = secrets.load_or_create(tmp_path, "metrics_token")
    assert (tmp_path / "secrets" / "metrics_token").read_text().strip() == token


# ---------------------------------------------------------------- Traefik


def test_traefik_metrics_take_the_token_by_basic_auth_and_hold_only_its_hash():
    text = traefik_metrics_yml("the-token")
    assert "the-token" not in text
    http = yaml.safe_load(text)["http"]
    router = http["routers"]["gridhub-metrics"]
    assert router["entryPoints"] == ["metrics"] and router["service"] == "prometheus@internal"
    (user,) = http["middlewares"][router["middlewares"][0]]["basicAuth"]["users"]
    name, _, hashed = user.partition(":")
    assert name == "prometheus" and bcrypt.checkpw(b"the-token", hashed.encode())
    # kept as it is while the token is the same (no reload); new for a new token
    assert traefik_metrics_yml("the-token", text) == text
    assert traefik_metrics_yml("another-token", text) != text


def test_traefik_serves_metrics_on_their_own_entrypoint_only_through_that_router():
    tmpl = (ROOT / "images" / "traefik" / "traefik.yml.tmpl").read_text()
    static = yaml.safe_load(tmpl.replace("@", "x"))
    assert static["entryPoints"]["metrics"]["address"] == ":8083"
    prom = static["metrics"]["prometheus"]
    assert prom["entryPoint"] == "metrics" and prom["manualRouting"] is True
    assert static["accessLog"]["format"] == "common"


# ---------------------------------------------------------------- Prometheus' image


def render(tmp_path: Path, sites: str) -> tuple[dict, list[str]]:
    """images/prometheus/entrypoint.sh with a stand-in `prometheus` that shows its
    arguments: the configuration it would start with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "prometheus").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (bin_dir / "prometheus").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "FACILITY_CONFIG_DIR": str(IMAGE),
        "FACILITY_SITE_TARGETS": sites,
        "FACILITY_MONITORING_SECRETS": str(tmp_path / "mon"),
    }
    p = subprocess.run(
        ["sh", str(IMAGE / "entrypoint.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    conf = tmp_path / "prometheus" / "prometheus.yml"
    return yaml.safe_load(conf.read_text()), p.stdout.split()


def test_prometheus_scrapes_every_part_and_nothing_on_the_users_side(tmp_path):
    config, args = render(tmp_path, "localsite:9100,localsite-gpu:9100")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "hub", "traefik", "gateway", "schedulers", "sites", "lake"}
    token = str(tmp_path / "mon" / "metrics_token")
    bearer = {"type": "Bearer", "credentials_file": token}
    assert jobs["hub"]["authorization"] == jobs["gateway"]["authorization"] == bearer
    # the XCache is on the users' and grid networks: its metrics want the token
    assert jobs["lake"]["authorization"] == bearer
    assert jobs["lake"]["static_configs"][0]["targets"] == ["lake-origin:9101", "lake-cache:9101"]
    assert jobs["schedulers"]["authorization"] == bearer
    assert jobs["traefik"]["basic_auth"] == {"username": "prometheus", "password_file": token}
    sd = jobs["schedulers"]["http_sd_configs"][0]
    assert sd["url"] == "http://gateway:8000/api/v1/metrics/schedulers"
    assert sd["authorization"] == {"type": "Bearer", "credentials_file": token}
    assert jobs["sites"]["static_configs"][0]["targets"] == ["localsite:9100", "localsite-gpu:9100"]
    assert config["rule_files"] == [str(IMAGE / "alerts.yml")]
    assert "--web.route-prefix=/" in args
    assert "--web.external-url=/services/monitoring/prometheus/" in args
    assert not any("admin-api" in a or "lifecycle" in a for a in args)


def test_prometheus_without_stand_in_sites_and_bad_values_named(tmp_path):
    config, _ = render(tmp_path, "")
    sites = next(j for j in config["scrape_configs"] if j["job_name"] == "sites")
    assert sites["static_configs"][0]["targets"] == []
    p = subprocess.run(
        ["sh", str(IMAGE / "entrypoint.sh")],
        env={"FACILITY_SITE_TARGETS": "a:1 ; rm -rf /", "FACILITY_CONFIG_DIR": str(IMAGE)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 1 and "FACILITY_SITE_TARGETS" in p.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason="Debian's prometheus is not installed")
def test_promtool_accepts_the_configuration_and_the_rules(tmp_path):
    render(tmp_path, "localsite:9100")
    (tmp_path / "mon").mkdir()
    (tmp_path / "mon" / "metrics_token").write_text("x")
    for what in (["config", str(tmp_path / "prometheus" / "prometheus.yml")], ["rules"]):
        files = what[1:] or [str(IMAGE / "alerts.yml")]
        p = subprocess.run(
            ["promtool", "check", what[0], *files], capture_output=True, text=True, check=False
        )
        assert p.returncode == 0, p.stdout + p.stderr


def compose() -> dict:
    out: dict = {}
    for name in ("docker-compose.yml", "docker-compose.override.yml"):
        for service, svc in yaml.safe_load((ROOT / name).read_text())["services"].items():
            merged = out.setdefault(service, {})
            for k, v in svc.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                elif k == "volumes" and k in merged:  # compose adds the override's mounts
                    merged[k] = merged[k] + v
                else:
                    merged[k] = v
    return out


def test_prometheus_runs_on_the_internal_network_only_read_only_with_the_token_read_only():
    services = compose()
    prom = services["prometheus"]
    assert prom["networks"] == ["internal"]  # never schedulers, users or grid
    assert prom["read_only"] is True and "ports" not in prom
    assert "monitoring:/srv/gridhub/monitoring:ro" in prom["volumes"]
    assert "monitoring:/srv/gridhub/monitoring:ro" in services["gateway"]["volumes"]
    assert "monitoring:/srv/gridhub/monitoring" in services["hub"]["volumes"]
    # nobody else holds the token's volume
    holders = {
        s for s, v in services.items() if any("monitoring:" in x for x in v.get("volumes", []))
    }
    assert holders == {"hub", "gateway", "prometheus"}
    # the stand-in sites serve their metrics, on the internal network only
    for site in ("localsite", "localsite-gpu"):
        cmd = services[site]["command"]
        assert cmd[cmd.index("--metrics-port") + 1] == "9100"
        assert services[site]["networks"] == ["internal"]
    assert services["prometheus"]["environment"]["FACILITY_SITE_TARGETS"] == (
        "localsite:9100,localsite-gpu:9100"
    )
    dockerfile = (IMAGE / "Dockerfile").read_text()
    assert "USER 1000:1000" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile


# ---------------------------------------------------------------- the gateway's relay


class _DB:
    def __init__(self, clusters):
        self.clusters = {c.name: c for c in clusters}

    def list_clusters(self):
        return list(self.clusters.values())

    def get_cluster(self, name):
        return self.clusters.get(name)


def _cluster(name, user, status, dashboard=""):
    return SimpleNamespace(
        name=name, username=user, status=status, dashboard_address=dashboard, workers={}
    )


def test_gateway_relays_each_running_schedulers_metrics_to_the_token_only():
    async def main():
        # a scheduler's dashboard: its /metrics, and something else that must not pass
        sched = web.Application()
        sched.router.add_get("/metrics", lambda r: web.Response(text="dask_scheduler_workers 2\n"))
        sched.router.add_get("/info", lambda r: web.Response(text="secret-ish"))
        async with TestServer(sched) as dash:
            base = f"http://{dash.host}:{dash.port}"
            backend = SimpleNamespace(
                metrics_token="tok",  # noqa: S106 (a test's)
                db=_DB(
                    [
                        _cluster("c1", "alice", JobStatus.RUNNING, base),
                        _cluster("c2", "bob", JobStatus.SUBMITTED),
                        _cluster("c3", "carol", JobStatus.RUNNING, "http://127.0.0.1:1"),
                    ]
                ),
            )
            app = web.Application()
            observe.add_routes(app, backend)
            async with TestClient(TestServer(app)) as gw:
                auth = {"Authorization": "Bearer tok"}
                r = await gw.get("/api/v1/metrics/schedulers", headers=auth)
                targets = await r.json()
                assert [t["labels"]["cluster"] for t in targets] == ["c1", "c3"]
                c1 = targets[0]
                assert c1["labels"]["user"] == "alice"
                assert c1["labels"]["__metrics_path__"] == "/api/v1/metrics/schedulers/c1"
                r = await gw.get(c1["labels"]["__metrics_path__"], headers=auth)
                assert r.status == 200 and "dask_scheduler_workers 2" in await r.text()
                # behind a proxy that strips a prefix (Traefik: X-Forwarded-Prefix)
                r = await gw.get(
                    "/api/v1/metrics/schedulers",
                    headers={**auth, "X-Forwarded-Prefix": "/services/dask-gateway"},
                )
                paths = [t["labels"]["__metrics_path__"] for t in await r.json()]
                assert paths[0] == "/services/dask-gateway/api/v1/metrics/schedulers/c1"
                # not running, unknown, or not answering: no metrics, a named reason
                r = await gw.get("/api/v1/metrics/schedulers/c2", headers=auth)
                assert r.status == 404
                r = await gw.get("/api/v1/metrics/schedulers/c3", headers=auth)
                assert r.status == 502 and "c3" in r.reason
                # only /metrics: no path of the scheduler's beyond it
                r = await gw.get("/api/v1/metrics/schedulers/c1/../info", headers=auth)
                assert "secret-ish" not in await r.text()
                # a wrong token is refused by name
                r = await gw.get(
                    "/api/v1/metrics/schedulers/c1", headers={"Authorization": "Bearer no"}
                )
                assert r.status == 403 and "wrong metrics token" in await r.text()

    asyncio.run(main())


# ---------------------------------------------------------------- the hub service


def test_monitoring_service_only_with_prometheus_and_without_hub_scopes(tmp_path, monkeypatch):
    monkeypatch.delenv("FACILITY_MONITORING_SECRETS", raising=False)
    c = build({"GRIDHUB_SPAWNER": "local"}, tmp_path / "a")
    assert "monitoring" not in {s["name"] for s in c.JupyterHub.services}
    c = build(
        {"GRIDHUB_SPAWNER": "local", "GRIDHUB_PROMETHEUS_URL": "http://prometheus:9090/"},
        tmp_path / "b",
    )
    svc = {s["name"]: s for s in c.JupyterHub.services}["monitoring"]
    assert svc["url"].endswith(":10103")
    assert "--prometheus-url=http://prometheus:9090" in svc["command"]
    token_file = tmp_path / "b" / "state" / "secrets" / "metrics_token"
    assert f"--token-file={token_file}" in svc["command"]  # a path, never the token
    assert not any(token_file.read_text().strip() in a for a in svc["command"])
    assert "--listen-host=127.0.0.1" in svc["command"]  # where the hub listens
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert not any("monitoring" in r.get("services", []) for r in roles.values())
    # users do not hold access to it: only admins (and so teachers) do
    assert not any("service=monitoring" in s for s in roles["user"]["scopes"])


# ---------------------------------------------------------------- the usage page


def test_cpu_hours_run_up_per_user_and_group_as_jobs_end():
    def job(name, group, cpu_s, end, owner="robot"):
        return {
            "job_name": f"dask-worker {name} w-1" if name else "",
            "owner": owner,
            "owner_group": group,
            "cpu_s": cpu_s,
            "end_time": end,
        }

    jobs = [
        job("alice", "atlas", 3600, "2026-01-01T10:00:00"),
        job("bob", "atlas", 1800, "2026-01-01T11:00:00Z"),
        job("alice", "atlas", 7200, "2026-01-01T12:00:00"),
        job("alice", "atlas", 9e9, "2025-01-01T00:00:00"),  # before the period
        job("carol", "cms", None, None),  # not ended
        job("", "cms", 360, "2026-01-01T12:00:00", owner="dave"),  # no GridHub JobName
    ]
    start = 1767225600.0  # 2026-01-01T00:00Z
    series, totals = cpu_hours_over_time(jobs, "user", start)
    assert totals == {"alice": 3.0, "bob": 0.5, "dave": 0.1}
    assert series["alice"][0] == (start, 0.0) and [v for _, v in series["alice"]] == [0, 1, 3]
    _, groups = cpu_hours_over_time(jobs, "owner_group", start)
    assert groups == {"atlas": 3.5, "cms": 0.1}


def test_line_chart_is_svg_with_a_line_per_series_escaped_labels_and_no_data_said():
    svg = line_chart(
        "Workers <by site>",
        {"LCG.A": [(0, 1), (60, 2), (120, 1)], "<b>x</b>": [(0, 0), (120, 4)]},
        start=0,
        end=120,
        chart_id="plot-w",
    )
    tree = ElementTree.fromstring(svg)  # noqa: S314 (our own output)
    ns = "{http://www.w3.org/2000/svg}"
    assert tree.get("id") == "plot-w"
    assert len(tree.findall(f"{ns}polyline")) == 2
    assert "<b>x</b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    empty = line_chart("Nothing", {}, start=0, end=60)
    assert "no data in this period" in empty
    ElementTree.fromstring(empty)  # noqa: S314
    step = line_chart("CPU", {"alice": [(0, 0), (60, 1)]}, start=0, end=120, step=True)
    (line,) = ElementTree.fromstring(step).findall(f"{ns}polyline")  # noqa: S314
    assert len(line.get("points", "").split()) == 4  # up at 60 s, held to the end
