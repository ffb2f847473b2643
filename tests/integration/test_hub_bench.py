"""Benchmark: login-to-JupyterLab-ready, GridHub vs a bare JupyterHub (same spawner, same run).

Skipped unless GRIDHUB_BENCH=1 (20 spawns take minutes). Writes
artifacts/bench-hub-login.json. Goal (issue 5): GridHub median within 1.2x of bare.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import httpx
import pytest

try:
    from .hub_fixtures import *  # noqa: F403
    from .hub_fixtures import ARTIFACTS, TEST_UNIX_USER, Hub, login_form
except ImportError:
    from hub_fixtures import *  # noqa: F403
    from hub_fixtures import ARTIFACTS, TEST_UNIX_USER, Hub, login_form

N = int(os.environ.get("GRIDHUB_BENCH_LOGINS", "10"))
CODE = "bench-code-2026"

BARE_CONFIG = """
import os
c = get_config()  # noqa
e = os.environ
c.JupyterHub.bind_url = e["GRIDHUB_PUBLIC_URL"] + "/"
c.JupyterHub.hub_bind_url = e["GRIDHUB_HUB_BIND_URL"]
c.JupyterHub.db_url = "sqlite:///" + e["GRIDHUB_STATE_DIR"] + "/bare.sqlite"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.proxy_class = "traefik_file"
c.TraefikFileProviderProxy.should_start = True
c.TraefikFileProviderProxy.traefik_api_url = e["GRIDHUB_PROXY_API_URL"]
c.TraefikFileProviderProxy.traefik_api_password = "bare-bench-password"
c.TraefikFileProviderProxy.static_config_file = e["GRIDHUB_STATE_DIR"] + "/traefik.toml"
c.TraefikFileProviderProxy.dynamic_config_file = e["GRIDHUB_STATE_DIR"] + "/rules.toml"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "%(code)s"
c.SharedPasswordAuthenticator.allow_all = True
c.JupyterHub.spawner_class = "gridhub.hub.spawners.SharedAccountSpawner"
c.SharedAccountSpawner.unix_user = "%(user)s"
c.SharedAccountSpawner.home_root = e["GRIDHUB_LOCAL_HOME_ROOT"]
c.Spawner.cmd = [e["GRIDHUB_LOCAL_PYTHON"], "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 60  # as GridHub: a loaded machine starts servers slowly
c.JupyterHub.services = [{"name": "test-admin", "api_token": "%(token)s"}]
c.JupyterHub.load_roles = [{"name": "test-admin", "scopes": ["admin:users", "admin:servers"],
                            "services": ["test-admin"]}]
"""


def login_to_lab(hub: Hub, name: str) -> float:
    t0 = time.monotonic()
    with httpx.Client(base_url=hub.public_url, timeout=60, follow_redirects=True) as client:
        assert login_form(client, name, CODE).status_code == 302
        assert client.get("/hub/spawn").status_code == 200
        hub.wait_server_ready(name, timeout=120)
        lab = client.get(f"/user/{name}/lab")
        assert lab.status_code == 200 and "jupyter-config-data" in lab.text
    elapsed = time.monotonic() - t0
    with hub.admin() as admin:
        admin.delete(f"/users/{name}/server")
    return elapsed


@pytest.mark.skipif(not os.environ.get("GRIDHUB_BENCH"), reason="set GRIDHUB_BENCH=1")
def test_login_to_lab_vs_bare(hub_factory):
    from hub_fixtures import ADMIN_TOKEN

    gridhub = hub_factory(
        {"GRIDHUB_MASTERCLASS_ACCESS_CODE": CODE, "GRIDHUB_CULL_IDLE_TIMEOUT": "0"},
        name="bench-gridhub",
    )
    bare = hub_factory(name="bench-bare")
    bare_config = bare.workdir / "bare_config.py"
    values = {"code": CODE, "user": TEST_UNIX_USER, "token": ADMIN_TOKEN}
    bare_config.write_text(BARE_CONFIG % values)
    bare.config = bare_config
    bare.state.mkdir(mode=0o700)
    results: dict[str, list[float]] = {"gridhub": [], "bare": []}
    hubs = {"bare": bare.start(), "gridhub": gridhub.start()}
    # alternate, so both see the same machine load
    for i in range(N):
        order = ("bare", "gridhub") if i % 2 == 0 else ("gridhub", "bare")
        for label in order:
            results[label].append(login_to_lab(hubs[label], f"{label}{i}"))
    for hub in hubs.values():
        hub.stop()
    medians = {k: statistics.median(v) for k, v in results.items()}
    ratio = medians["gridhub"] / medians["bare"]
    report = {"n": N, "seconds": results, "median": medians, "ratio": ratio, "goal": 1.2}
    (ARTIFACTS / "bench-hub-login.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({"median": medians, "ratio": ratio}))
    assert ratio <= 1.2, report
