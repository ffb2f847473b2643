"""The notebook image (images/notebook), which also runs the Dask workers.

Built from the standard Dockerfile with this machine's build flags
(dockerharness.build_args), then: imports and versions as the non-root user,
a real analysis round trip with no network, and JupyterLab with the Dask
sidebar in a real browser.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dockerharness import (
    ROOT,
    RUN_ID,
    TEST_LABEL,
    Containers,
    docker,
    package_version,
    screenshot,
)

# The image build and server start-up are fixtures with their own bounded
# timeouts; pytest-timeout bounds only the test bodies.
pytestmark = pytest.mark.timeout(300, func_only=True)

LOCK = ROOT / "images" / "notebook" / "requirements.txt"
# distribution name -> import name; all must import, at the locked version.
PACKAGES = {
    "coffea": "coffea",
    "uproot": "uproot",
    "awkward": "awkward",
    "hist": "hist",
    "mplhep": "mplhep",
    "dask": "dask",
    "distributed": "distributed",
    "dask-gateway": "dask_gateway",
    "asyncssh": "asyncssh",
    "jupyterlab": "jupyterlab",
    "dask-labextension": "dask_labextension",
    "jupyter-server-proxy": "jupyter_server_proxy",
    "jupyterhub": "jupyterhub",
}


def locked_versions() -> dict[str, str]:
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.M))
    return {k.lower(): v for k, v in pins.items()}


def run_in_image(image: str, code: str, *docker_args: str, timeout: float = 180) -> str:
    """Run python code in a throwaway container (removed by --rm)."""
    return docker(
        "run",
        "--rm",
        "--label",
        f"{TEST_LABEL}={RUN_ID}",
        *docker_args,
        image,
        "python",
        "-c",
        code,
        timeout=timeout,
    ).stdout


def test_imports_and_versions_as_non_root(notebook_image: str) -> None:
    code = f"""
import importlib, importlib.metadata as md, json, os, pwd
pkgs = {PACKAGES!r}
for mod in [*pkgs.values(), "gridhub", "coffea.processor", "coffea.nanoevents"]:
    importlib.import_module(mod)
import gridhub
print(json.dumps({{
    "uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name,
    "versions": {{d: md.version(d) for d in pkgs}},
    "gridhub": [gridhub.__version__, md.version("gridhub")],
}}))
"""
    out = json.loads(run_in_image(notebook_image, code).strip().splitlines()[-1])
    assert out["uid"] == 1000 and out["user"] == "jovyan"
    lock = locked_versions()
    for dist, version in out["versions"].items():
        assert version == lock[dist], f"{dist} {version} in the image, {lock[dist]} locked"
    assert out["gridhub"] == [package_version()] * 2


def test_image_metadata_and_no_build_secrets(notebook_image: str) -> None:
    cfg = json.loads(docker("image", "inspect", notebook_image).stdout)[0]["Config"]
    assert cfg["User"] == "1000:100"
    assert cfg["Healthcheck"]["Test"][0] == "CMD"
    labels = cfg["Labels"]
    for key in ("title", "source", "licenses", "description", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == package_version()
    # The CA passed to the build stage must not reach the final image.
    history = docker("history", "--no-trunc", notebook_image).stdout
    assert "EXTRA_CA_CERTS" not in history and "BEGIN CERTIFICATE" not in history
    assert not any("EXTRA_CA" in e or "PIP_CERT" in e for e in cfg["Env"])
    files = run_in_image(
        notebook_image,
        "import glob; print(glob.glob('/usr/local/share/ca-certificates/*'));"
        "import shutil; print([t for t in ('gcc', 'cc', 'make') if shutil.which(t)])",
        "--network",
        "none",
    )
    assert files.split() == ["[]", "[]"], files


def test_the_image_carries_the_examples_a_new_home_gets(notebook_image: str) -> None:
    """$GRIDHUB_EXAMPLES holds the repository's getting-started and AGC
    notebooks as they are (the compose facility copies them into a
    physicist's new home: images/hub/jupyterhub_config.d/50-compose.py)."""
    code = (
        "import os, pathlib, json; root = pathlib.Path(os.environ['GRIDHUB_EXAMPLES']);"
        " print(json.dumps({str(p.relative_to(root)): p.read_text()"
        " for p in root.rglob('*') if p.is_file()}))"
    )
    found = json.loads(run_in_image(notebook_image, code, "--network", "none"))
    notebooks = Path(__file__).resolve().parents[2] / "notebooks"
    want = {
        str(p.relative_to(notebooks)): p.read_text()
        for p in [notebooks / "00-getting-started.ipynb", *(notebooks / "agc-ttbar").iterdir()]
        if p.is_file()
    }
    assert found == want, sorted(found)


def test_analysis_round_trip_offline(notebook_image: str) -> None:
    """uproot writes and reads a TTree, awkward/hist/coffea work on it, and
    a Dask LocalCluster with a worker process computes: no network needed."""
    code = """
import numpy as np, uproot, awkward as ak, hist, dask.array as da
from distributed import Client, LocalCluster
from coffea.nanoevents import NanoEventsFactory, BaseSchema
with uproot.recreate("/tmp/t.root") as f:
    f["Events"] = {"pt": np.arange(1000, dtype="f8") % 100, "n": np.arange(1000) % 7}
ev = NanoEventsFactory.from_root({"/tmp/t.root": "Events"}, schemaclass=BaseSchema,
                                 mode="eager").events()
h = hist.Hist.new.Reg(10, 0, 100, name="pt").Double().fill(ak.to_numpy(ev.pt))
with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as c, Client(c) as cl:
    s = int(da.arange(10_000, chunks=1000).sum().compute())
    w = len(cl.scheduler_info()["workers"])
print(len(ev), int(h.sum()), int(ak.sum(ev.n)), s, w)
"""
    out = run_in_image(notebook_image, code, "--network", "none", timeout=240)
    assert out.split()[-5:] == [
        "1000",
        "1000",
        str(sum(i % 7 for i in range(1000))),
        str(sum(range(10_000))),
        "1",
    ], out


@dataclass
class Lab:
    url: str
    token: str
    cid: str


@pytest.fixture(scope="module")
def lab(notebook_image: str) -> Iterator[Lab]:
    """`jupyter lab` in the image, token auth, published on 127.0.0.1 only."""
    c = Containers()
    token = secrets.token_hex(24)
    try:
        cid = c.run(
            notebook_image,
            docker_args=(
                "-e",
                f"JUPYTER_TOKEN={token}",
                "-p",
                "127.0.0.1::8888",
                "--health-interval",
                "2s",
                "--health-start-period",
                "0s",
            ),
        )
        url = f"http://127.0.0.1:{c.port(cid, 8888)}"
        deadline = time.monotonic() + 120
        while True:
            state = json.loads(docker("inspect", cid).stdout)[0]["State"]
            assert state["Running"], f"jupyter lab exited:\n{c.logs(cid)[-3000:]}"
            health = state.get("Health", {}).get("Status")
            try:
                up = httpx.get(f"{url}/api", timeout=5).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and health == "healthy":
                break
            assert time.monotonic() < deadline, (
                f"lab not up and healthy in 120s (up={up}, health={health}):\n{c.logs(cid)[-3000:]}"
            )
            time.sleep(1)
        yield Lab(url, token, cid)
    finally:
        c.remove_all()


def test_lab_requires_the_token(lab: Lab) -> None:
    assert httpx.get(f"{lab.url}/api/contents", timeout=10).status_code == 403
    bad = httpx.get(f"{lab.url}/api/contents", headers={"Authorization": "token nope"}, timeout=10)
    assert bad.status_code == 403
    ok = httpx.get(
        f"{lab.url}/api/contents", headers={"Authorization": f"token {lab.token}"}, timeout=10
    )
    assert ok.status_code == 200 and ok.json()["type"] == "directory"


def test_lab_fetches_nothing_from_the_web(lab: Lab) -> None:
    """No news feed (JupyterLab would ask every user to subscribe to it and then
    fetch it from jupyterlab.github.io) and no update check against PyPI
    (images/notebook/jupyter_server_config.json)."""
    page = httpx.get(f"{lab.url}/lab", headers={"Authorization": f"token {lab.token}"}, timeout=30)
    assert page.status_code == 200
    config = json.loads(
        re.search(
            r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
            page.text,
            re.S,
        )[1]
    )
    assert config["news"] == {"disabled": True}, config.get("news")
    # the server's own configuration, as it loads it (config files and their .d)
    shown = docker(
        "exec",
        lab.cid,
        "python",
        "-c",
        "from jupyter_server.serverapp import ServerApp; app = ServerApp(); app.load_config_file();"
        " print(app.config.LabApp.check_for_updates_class)",
    ).stdout
    assert shown.strip() == "jupyterlab.NeverCheckForUpdate", shown


def test_server_extensions_answer(lab: Lab) -> None:
    h = {"Authorization": f"token {lab.token}"}
    clusters = httpx.get(f"{lab.url}/dask/clusters", headers=h, timeout=10)
    assert clusters.status_code == 200 and clusters.json() == []
    p = docker("exec", lab.cid, "jupyter", "server", "extension", "list")
    out = p.stdout + p.stderr
    for ext in ("dask_labextension", "jupyter_server_proxy", "jupyterlab"):
        assert re.search(rf"{ext}\s.*enabled", out), out


def test_dask_sidebar_in_browser(lab: Lab, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{lab.url}/lab?token={lab.token}", wait_until="domcontentloaded")
    tab = page.locator('li.lm-TabBar-tab[data-id="dask-dashboard-launcher"]')
    tab.wait_for(state="visible", timeout=90_000)
    tab.click()
    panel = page.locator("#dask-dashboard-launcher")
    panel.wait_for(state="visible")
    assert "CLUSTERS" in panel.inner_text()
    new = panel.locator('[data-command="dask:launch-cluster"]')
    new.wait_for(state="visible")
    assert new.inner_text().strip() == "NEW"
    # NEW starts a cluster through the labextension's factory (LocalCluster
    # in a bare image; the hub config points it at dask-gateway).
    new.click()
    panel.locator("ul.dask-ClusterListing-list > li").first.wait_for(
        state="visible", timeout=60_000
    )
    screenshot(page, "notebook-dask-sidebar")
    h = {"Authorization": f"token {lab.token}"}
    clusters = httpx.get(f"{lab.url}/dask/clusters", headers=h, timeout=10).json()
    assert len(clusters) == 1 and clusters[0]["dashboard_link"], clusters
