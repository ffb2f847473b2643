"""The whole facility from docker-compose.yml, driven the way a user drives it.

Builds every image (layer cache allowed), `docker-compose up -d` with the
embedded DiracX and local site, waits until every service is healthy, then,
through Traefik on https://<host>:<free port> (self-signed), where <host> is
the host's end of the link to the browser's own network namespace (the
browser runs there, as a user's runs on another machine: browser_netns.py):

1. a browser logs in with the masterclass access code (`gridhub-access-code`)
   and is seated on the warm pool's running server (seat-01), JupyterLab
   opens, NEW in the Dask sidebar creates a dask-gateway cluster whose
   workers are DIRAC jobs run by the local sites as containers on their
   site's grid network only, a cell scales it, computes and gathers a result;
   the cluster's dashboard link opens in the browser (PUBLIC_HOST stays the
   default gridhub.internal), and a click on its card opens its Task Stream pane;
   with four workers over the two sites, workers of one site exchange data
   directly and across sites through the relay, and nothing outside a site
   reaches a worker's site listener (issue 19);
2. the hub container restarts while the server and cluster run: both
   survive, and so does the browser session;
3. `down` then `up`: the user's files and the hub database are still there;
4. trust boundaries (issue 15), as student A with that cluster and student B
   with another: A's code, on A's notebook server and on A's own scheduler
   (``run_on_scheduler``), finds no facility secret and no key of B's, reaches
   no internal port, cannot use, stop or connect to B's cluster; a second
   login under A's name is refused, and so are logins past the failure limit;
   before that, the teacher logs in with the teacher code in a browser of
   their own and sees the class by the names students typed (issue 22);
5. no generated secret, user token or JWT in any container's log or grid job's output;
   monitoring (issue 20), while the cluster runs: every Prometheus scrape target up,
   the cluster and its workers counted, the usage page for an admin, 403 for a student;
   the data lake (issue 17): the cluster's grid workers read the shipped
   samples over root:// through the XCache, which then holds them; a read of
   a non-public path without a token is refused; a read token from the hub's
   issuer opens it at the origin; notebooks and workers reach the cache only;
   the analysis cache (lake-store): a student's notebook puts and gets an
   object in its own area, another student can neither read nor delete it;
6. teardown leaves no containers, networks, volumes or unfinished DIRAC jobs.

Timings, image sizes and the build times (first build and cached rebuild)
go to artifacts/compose-facility.json; screenshots to artifacts/screenshots/.
Compose: `docker compose` (v2) when present, else `docker-compose` (v1.29).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser_netns import BrowserNamespace, browser_namespace
from dockerharness import (
    ARTIFACTS,
    ROOT,
    RUN_ID,
    build_image,
    docker,
    facility_services,
    image_tag,
    screenshot,
)
from gridhub import cachepolicy
from gridhub.embedded.users import dirac_user_name
from headless_chromium import CHROMIUM, launch
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

pytestmark = pytest.mark.e2e

IMAGES = ("notebook", "hub", "gateway", "dirac", "traefik", "prometheus", "xrootd")
SERVICES = facility_services()
SITES = {"LCG.Local.gridhub": "localsite", "LCG.GPU.gridhub": "localsite-gpu"}  # stand-ins
SITE_NETWORKS = {"LCG.Local.gridhub": "grid", "LCG.GPU.gridhub": "grid-gpu"}  # one per site
PROJECT = f"gridhubtest{RUN_ID}"
USER = "alice"
TEACHER = "teacher"
# the warm pool (GRIDHUB_MASTERCLASS_POOL_SIZE=1) seats her on a server started before she came
SEAT = "seat-01"
HEALTHY_TIMEOUT = 420
CLUSTER_TIMEOUT = 600
RESULTS: dict = {"project": PROJECT}
FAILED_LOGIN_LIMIT = 3
PUBLIC_HOST = "gridhub.internal"  # the default: no PUBLIC_HOST in the test's settings
# a dashboard pane shows tasks: rows in the Task Stream's Bokeh data source
TASKS_SHOWN = """() => {
  let rows = 0;
  for (const doc of (window.Bokeh && window.Bokeh.documents) || []) {
    for (const m of doc.all_models) {
      if (m.data && m.data.duration) rows = Math.max(rows, m.data.duration.length);
    }
  }
  return rows > 0;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compose_cmd() -> list[str]:
    p = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return ["docker", "compose"] if p.returncode == 0 else ["docker-compose"]


def _save_results() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "compose-facility.json").write_text(json.dumps(RESULTS, indent=2) + "\n")


class Facility:
    def __init__(self, tmp: Path, tags: dict[str, str], host: str = "127.0.0.1") -> None:
        """`host`: the address its ports are published on (and reached by)."""
        self.https = _free_port()
        self.http = _free_port()
        self.dask = _free_port()
        self.env_file = tmp / "facility.env"
        settings = {
            "COMPOSE_PROJECT_NAME": PROJECT,
            "HTTP_PORT": self.http,
            "HTTPS_PORT": self.https,
            "DASK_PORT": self.dask,
            "BIND_ADDRESS": host,
            "GRIDHUB_NOTEBOOK_IMAGE": tags["notebook"],
            "GRIDHUB_HUB_IMAGE": tags["hub"],
            "GRIDHUB_GATEWAY_IMAGE": tags["gateway"],
            "GRIDHUB_DIRAC_IMAGE": tags["dirac"],
            "GRIDHUB_TRAEFIK_IMAGE": tags["traefik"],
            "GRIDHUB_PROMETHEUS_IMAGE": tags["prometheus"],
            "GRIDHUB_XROOTD_IMAGE": tags["xrootd"],
            "GRIDHUB_CULL_IDLE_TIMEOUT": 0,
            "GRIDHUB_GATEWAY_IDLE_TIMEOUT": 0,
            "GRIDHUB_START_TIMEOUT": 300,
            "GRIDHUB_CPU_LIMIT": 2,
            "GRIDHUB_MEM_LIMIT": "3G",
            "GRIDHUB_WORKER_MEM_LIMIT": "3G",
            "GRIDHUB_MASTERCLASS_POOL_SIZE": 1,
            # the teacher (an admin: the teacher view and the monitoring view)
            "GRIDHUB_MASTERCLASS_TEACHERS": TEACHER,
            # small, so that the test can reach it (default 30 per 600 s)
            "GRIDHUB_MASTERCLASS_FAILED_LOGIN_LIMIT": FAILED_LOGIN_LIMIT,
        }
        # Only what a parallel test run needs (its own ports, project and image
        # tags) and what keeps the test short: no COMPOSE_FILE, no profile, no
        # PUBLIC_HOST, so the facility is the README's default one. --env-file
        # replaces .env, so a developer's .env cannot change it either.
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.base = [*_compose_cmd(), "--env-file", str(self.env_file), "-p", PROJECT]
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GRIDHUB_", "COMPOSE_", "FACILITY_"))
        }
        self.env.update({k: str(v) for k, v in settings.items()})
        self.url = f"https://{host}:{self.https}"

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        p = subprocess.run(
            [*self.base, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
        return p

    def exec(self, service: str, *cmd: str, timeout: float = 120) -> str:
        return self.compose("exec", "-T", service, *cmd, timeout=timeout).stdout

    def containers(self, *filters: str) -> list[str]:
        args = ["ps", "-aq"]
        for f in filters:
            args += ["--filter", f]
        return docker(*args).stdout.split()

    def service_of(self, container: str) -> str:
        """The compose service a container belongs to (scheduler containers
        carry service=scheduler)."""
        return docker(
            "inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}}', container
        ).stdout.strip()

    def project_containers(self) -> list[str]:
        return sorted(
            set(self.containers(f"label=com.docker.compose.project={PROJECT}"))
            | set(self.containers(f"label=org.gridhub.facility={PROJECT}"))
        )

    def server_of(self, user: str) -> list[str]:
        """The running server container of a hub user (DockerSpawner escapes
        names: seat-01's container is ...-jupyter-seat-2d01)."""
        out = []
        for cid in self.containers(f"label=org.gridhub.facility={PROJECT}", "status=running"):
            env = docker("inspect", "-f", "{{json .Config.Env}}", cid, check=False).stdout
            if f'"JUPYTERHUB_USER={user}"' in env:
                out.append(cid)
        return out

    def health(self) -> dict[str, str]:
        out = {}
        for cid in self.containers(f"label=com.docker.compose.project={PROJECT}"):
            p = docker(
                "inspect",
                "-f",
                '{{index .Config.Labels "com.docker.compose.service"}} '
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                cid,
                check=False,
            )
            parts = p.stdout.split()
            if len(parts) >= 2:
                out[parts[0]] = " ".join(parts[1:])
        return out

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT) -> float:
        t0 = time.monotonic()
        state: dict[str, str] = {}
        while time.monotonic() - t0 < timeout:
            state = self.health()
            if all(state.get(s) == "running healthy" for s in SERVICES):
                return time.monotonic() - t0
            time.sleep(2)
        raise TimeoutError(f"services not healthy after {timeout} s: {state}\n{self.logs()}")

    def logs(self, tail: int = 80) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}", check=False).stdout[-20000:]

    def save_logs(self, name: str) -> None:
        (ARTIFACTS / "compose").mkdir(parents=True, exist_ok=True)
        p = self.compose("logs", "--no-color", "--timestamps", check=False, timeout=120)
        (ARTIFACTS / "compose" / f"{name}.log").write_text(p.stdout + p.stderr)

    def job_logs(self) -> str:
        """The running grid jobs' stdout/stderr. Only while they run: the site
        removes a job's directory (it holds the cluster's key) when the job
        ends, and a killed job uploads no output sandbox."""
        return "".join(
            self.exec(
                site,
                "sh",
                "-c",
                "find /srv/gridhub/localsite -type f -name 'std.*' -exec cat {} + || true",
            )
            for site in SITES.values()
        )

    def save_job_logs(self, name: str) -> None:
        (ARTIFACTS / "compose").mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "compose" / f"grid-jobs-{name}.log").write_text(self.job_logs())

    def dirac_jobs(self) -> list[dict]:
        code = (
            "import asyncio, json\n"
            "from gridhub.dirac import DiracXClient\n"
            "from gridhub.embedded import facility_token_source\n"
            "URL = 'http://dirac:8000'\n"
            "async def main():\n"
            "    ts = facility_token_source('/srv/gridhub/dirac', URL)\n"
            "    async with DiracXClient(URL, ts) as dx:\n"
            "        cols = ['JobID', 'Status', 'JobGroup', 'JobName', 'Site',\n"
            "                'Owner', 'OwnerGroup']\n"
            "        jobs = await dx.search([], cols)\n"
            "    print(json.dumps(jobs))\n"
            "asyncio.run(main())\n"
        )
        return json.loads(self.exec("dirac", "python", "-c", code).strip().splitlines()[-1])

    def down(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`down --remove-orphans` as docs/operations.md tells a user: once,
        with servers, schedulers and grid jobs running; it must succeed."""
        return self.compose("down", "--remove-orphans", *args, timeout=300)

    def cluster_networks(self) -> list[str]:
        """The Dask clusters' own networks (the gateway creates them, compose
        does not know them: docs/operations.md, Stop)."""
        label = f"org.gridhub.network-of={PROJECT}_schedulers"
        return docker("network", "ls", "-q", "--filter", f"label={label}").stdout.split()

    def home_volumes(self) -> list[str]:
        return docker("volume", "ls", "-q", "--filter", f"name={PROJECT}_home-").stdout.split()

    def teardown(self) -> None:
        """The documented wipe: `down -v --remove-orphans`, then the users'
        home volumes (the hub creates them, compose does not know them). The
        fixture asserts it succeeded; the forced clean-up after it is only so
        that a failed run does not leave this machine dirty."""
        self.save_logs("final")
        try:
            self.down("-v")
            if self.home_volumes():
                docker("volume", "rm", *self.home_volumes())
            if self.cluster_networks():
                docker("network", "rm", *self.cluster_networks())
        finally:
            RESULTS["left_after_down"] = self.leftovers()
            for cid in self.project_containers():
                docker("rm", "-f", "-v", cid, check=False)
            for vol in docker("volume", "ls", "-q", "--filter", f"name={PROJECT}_").stdout.split():
                docker("volume", "rm", "-f", vol, check=False)
            for net in docker("network", "ls", "-q", "--filter", f"name={PROJECT}_").stdout.split():
                docker("network", "rm", net, check=False)

    def leftovers(self) -> dict[str, list[str]]:
        return {
            "containers": self.project_containers(),
            "networks": docker(
                "network", "ls", "-q", "--filter", f"name={PROJECT}_"
            ).stdout.split(),
            "volumes": docker("volume", "ls", "-q", "--filter", f"name={PROJECT}_").stdout.split(),
        }


@pytest.fixture(scope="module")
def tags(notebook_image: str) -> dict[str, str]:
    """Every image, built; build times (first build, then cached rebuild)."""
    out = {"notebook": notebook_image}
    builds: dict[str, dict] = {}
    times_file = ARTIFACTS / "build-times.json"
    for name in IMAGES:
        if name != "notebook":
            out[name] = build_image(name, image_tag(name))
        first = json.loads(times_file.read_text()).get(name, {})
        t0 = time.monotonic()
        build_image(name, out[name])  # nothing changed: all layers cached
        builds[name] = {
            "first_build_seconds": first.get("seconds"),
            "cached_rebuild_seconds": round(time.monotonic() - t0, 1),
            "size_mb": round(
                int(docker("image", "inspect", "-f", "{{.Size}}", out[name]).stdout) / 1e6
            ),
        }
    RESULTS["images"] = builds
    _save_results()
    return out


@pytest.fixture(scope="module")
def browser_ns(tmp_path_factory) -> Iterator[BrowserNamespace]:
    with browser_namespace(RUN_ID, CHROMIUM, tmp_path_factory.mktemp("browser")) as ns:
        yield ns


@pytest.fixture(scope="module")
def browser(playwright, browser_ns):  # type: ignore[no-untyped-def]
    """This module's browser: in a network namespace of its own, where the
    containers the facility starts do not abort its requests (browser_netns)."""
    b = launch(playwright, browser_ns.chromium)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def facility(tags, tmp_path_factory, browser_ns):
    f = Facility(tmp_path_factory.mktemp("compose"), tags, host=browser_ns.host_address)
    try:
        t0 = time.monotonic()
        f.compose("up", "-d", "--no-build", timeout=600)
        RESULTS["up_seconds"] = round(time.monotonic() - t0, 1)
        RESULTS["up_to_healthy_seconds"] = round(time.monotonic() - t0 + f.wait_healthy(), 1)
        _save_results()
        yield f
    finally:
        try:
            f.teardown()  # raises if `down -v` fails
        finally:
            _save_results()
        left = RESULTS["left_after_down"]
        assert not any(left.values()), f"`down -v --remove-orphans` left {left}"


# What the module's browser pages saw go wrong, for a failed run: written to
# artifacts/compose/browser.log when the module ends.
BROWSER_SEEN: list[str] = []


def watch(pg, name: str) -> None:
    """Record a page's console, errors, failed requests and navigations."""
    seen = BROWSER_SEEN
    pg.on("console", lambda m: seen.append(f"{name} console {m.type}: {m.text}"))
    pg.on("pageerror", lambda e: seen.append(f"{name} pageerror: {e}"))
    pg.on("requestfailed", lambda r: seen.append(f"{name} failed {r.url}: {r.failure}"))
    pg.on(
        "framenavigated",
        lambda f: seen.append(f"{name} navigated {f.url}") if f is pg.main_frame else None,
    )


def wait_or_reload(
    pg,
    url: str,
    selector: str,
    tries: int = 3,
    login: tuple[str, str] | None = None,
    timeout: float = 30,
) -> None:
    """Wait for `selector`; if it does not come, load `url` again, as a user would
    (and, with `login`, log in again when the login itself was lost).

    The browser runs on the Docker host: every container started (a seat
    server, a scheduler, a grid job) adds a network interface, and Chromium
    then aborts the requests in flight with ERR_NETWORK_CHANGED (seen in
    browser.log: a login's redirect never reached Traefik, the page stayed
    on the login form; a login POST aborted; JupyterLab stayed blank once). A
    browser elsewhere does not see the facility's interfaces change."""
    for attempt in range(tries):
        try:
            pg.wait_for_selector(selector, timeout=timeout * 1000)
            return
        except PlaywrightTimeoutError:
            if attempt == tries - 1:
                raise
            BROWSER_SEEN.append(f"reloading {url}: no {selector} at {pg.url}")
            try:
                pg.goto(url)
                if login and pg.locator("#username_input").count():
                    pg.fill("#username_input", login[0])
                    pg.fill("#password_input", login[1])
                    pg.click("#login_submit")
            except PlaywrightError as exc:  # aborted again: the next round retries
                BROWSER_SEEN.append(f"reload of {url} failed: {exc}")


def dismiss_connection_dialog(pg) -> None:
    """JupyterLab asks "Server unavailable or unreachable ... restart it?" when
    one of its requests fails, here when Chromium aborted it on a network
    change (wait_or_reload): the server runs, so dismiss it as a user would."""
    dialog = pg.locator(".jp-Dialog", has_text="Server unavailable or unreachable")
    while dialog.count():
        BROWSER_SEEN.append(f"dismissed: {dialog.first.inner_text()[:200]!r}")
        dialog.first.get_by_role("button", name="Dismiss").click()
        dialog.first.wait_for(state="detached", timeout=10_000)


@pytest.fixture(scope="module")
def lab(browser, facility):
    """One browser context for the module: the user's session is kept."""
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(60_000)
    pg = ctx.new_page()
    watch(pg, "lab")
    try:
        yield pg
    finally:
        (ARTIFACTS / "compose").mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "compose" / "browser.log").write_text("\n".join(BROWSER_SEEN) + "\n")
        ctx.close()


def wait_for_lab(pg) -> None:
    pg.wait_for_selector("#jp-main-dock-panel", timeout=300_000)
    pg.wait_for_selector("#jupyterlab-splash", state="detached", timeout=180_000)


def run_cell(pg, code: str, marker: str, timeout: float) -> str:
    """Type `code` into the notebook's last cell, run it, return the output
    text once `marker` appears (fail fast on a traceback)."""
    # the kernel must be connected, or the execute request is lost
    pg.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=120_000)
    time.sleep(1)
    dismiss_connection_dialog(pg)
    cell = pg.locator(".jp-Notebook .jp-Cell").last
    cell.locator(".cm-content").click()
    pg.keyboard.insert_text(code)
    pg.keyboard.press("Shift+Enter")
    time.sleep(5)
    if not pg.locator(".jp-Notebook .jp-Cell .jp-InputPrompt", has_text="[*]").count() and not (
        pg.locator(".jp-Notebook .jp-OutputArea-output").count()
    ):
        # not started (kernel still settling): run it again from the menu
        cell.click()
        pg.keyboard.press("Control+Enter")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = "\n".join(pg.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts())
        if marker in text:
            return text
        if "Traceback" in text or "Error" in text:
            screenshot(pg, f"compose-cell-error-{marker}")
            raise AssertionError(f"cell failed:\n{text[-3000:]}")
        time.sleep(2)
    screenshot(pg, f"compose-cell-timeout-{marker}")
    raise TimeoutError(f"no {marker!r} after {timeout} s")


STATE: dict = {}


def test_login_lab_cluster_on_grid(facility, lab):
    code = facility.exec("hub", "gridhub-access-code").strip()
    assert len(code) >= 8
    # the pool's seat server is up before the student comes (DockerSpawner)
    t_seat = time.monotonic()
    while f"User {SEAT} took" not in facility.compose("logs", "--no-color", "hub").stdout:
        assert time.monotonic() - t_seat < 420, f"no {SEAT} from the pool:\n{facility.logs()}"
        time.sleep(3)
    RESULTS["up_to_seat_ready_seconds"] = round(time.monotonic() - t_seat, 1)
    pg = lab
    t0 = time.monotonic()
    pg.goto(facility.url + "/hub/login")
    pg.fill("#username_input", USER)
    pg.fill("#password_input", code)
    screenshot(pg, "compose-01-login")
    pg.click("#login_submit")
    wait_for_lab(pg)
    try:
        # (the pool starts the next seat now: JupyterLab's first requests may be
        # aborted, ERR_NETWORK_CHANGED, and the lab stay blank; seen 16:22 on
        # 2026-12-04: a user reloads)
        wait_or_reload(
            pg,
            facility.url + f"/user/{SEAT}/lab",
            ".jp-LauncherCard",
            login=(USER, code),
            timeout=120,
        )
    finally:
        screenshot(pg, "compose-02-lab")
    RESULTS["login_to_lab_seconds"] = round(time.monotonic() - t0, 1)
    assert f"/user/{SEAT}/lab" in pg.url
    STATE["server"] = facility.server_of(SEAT)
    assert STATE["server"], "no running server container"
    # NEW in the Dask sidebar: the server's dask-labextension creates a
    # dask-gateway cluster, listed in the sidebar
    t1 = time.monotonic()
    pg.locator('[data-id="dask-dashboard-launcher"]').first.click()
    new = pg.get_by_role("button", name="NEW", exact=True)
    new.wait_for(timeout=60_000)
    new.click()  # Playwright waits until it is enabled (the manager is ready)
    pg.locator(".dask-ClusterListingItem").first.wait_for(timeout=180_000)
    screenshot(pg, "compose-03-dask-sidebar-new-cluster")

    pg.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    pg.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=120_000)
    pg.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    # a cell takes over the sidebar's cluster: two workers, a computation
    text = run_cell(
        pg,
        "import dask.array as da\n"
        "from dask_gateway import Gateway\n"
        "gateway = Gateway()\n"
        "(report,) = gateway.list_clusters()\n"
        "cluster = gateway.connect(report.name)\n"
        "cluster.scale(2)\n"
        "client = cluster.get_client()\n"
        "client.wait_for_workers(2, timeout=540)\n"
        "total = int(da.ones((2000, 2000), chunks=500).sum().compute())\n"
        "gathered = sum(client.gather(client.map(lambda x: x * x, range(10))))\n"
        "print('CLUSTER', cluster.name, 'RESULT', total, gathered,"
        " 'WORKERS', len(client.scheduler_info()['workers']))\n",
        "RESULT",
        CLUSTER_TIMEOUT,
    )
    RESULTS["cluster_to_result_seconds"] = round(time.monotonic() - t1, 1)
    screenshot(pg, "compose-04-result")
    line = next(x for x in text.splitlines() if x.startswith("CLUSTER"))
    parts = line.split()
    cluster = parts[1]
    assert parts[3:5] == ["4000000", "285"], line
    assert parts[-1] == "2", line
    STATE["cluster"] = cluster
    STATE["lab_request"] = pg.request.get  # the student's browser session

    # Every dashboard link shown opens in this browser of the default facility, whose
    # public name (gridhub.internal) the browser cannot resolve: cluster.dashboard_link
    # and the card's "Dashboard URL" are relative to the page ...
    prefix = f"/services/dask-gateway/clusters/{cluster}/"
    text = run_cell(pg, "print('LINK', cluster.dashboard_link)\n", "LINK ", 120)
    assert f"LINK {prefix}status" in text, text
    anchor = pg.locator(".dask-ClusterListingItem-link a").first
    assert anchor.get_attribute("href") == prefix + "status"
    with pg.context.expect_page() as opened:
        anchor.click()
    status = opened.value
    status.wait_for_load_state()
    assert status.url == facility.url + prefix + "status", status.url
    status.locator(".bk-Canvas, canvas").first.wait_for(timeout=120_000)
    screenshot(status, "compose-04b-dashboard-link")
    status.close()
    # ... and, while a computation runs, a click on the cluster's card opens its Task
    # Stream pane with the cluster's tasks in it (gridhub.hub.sidebar)
    run_cell(
        pg,
        "import time\n"
        "def slow(i):\n"
        "    time.sleep(1)\n"
        "    return i\n"
        "running = client.map(slow, range(60))\n"
        "print('STARTED')\n",
        "STARTED",
        120,
    )
    pg.locator(".dask-ClusterListingItem-title").first.click()
    pg.locator('.dask-DashboardListing-item button[value="Task Stream"]').click(timeout=60_000)
    frame = pg.locator(".jp-MainAreaWidget iframe").last
    frame.wait_for(timeout=30_000)
    pane = frame.element_handle().content_frame()
    pane.locator(".bk-Canvas, canvas").first.wait_for(timeout=120_000)
    assert pane.url == facility.url + prefix + "individual-task-stream", pane.url
    pane.wait_for_function(TASKS_SHOWN, timeout=60_000)
    screenshot(pg, "compose-04c-dashboard-pane")
    # close the pane: the notebook's tab comes to the front again for the next cells
    pg.locator(".lm-TabBar-tab", has_text="Task Stream").locator(".lm-TabBar-tabCloseIcon").click()
    pg.locator(".jp-Notebook .jp-Cell .cm-content").last.wait_for(state="visible")

    # the workers are DIRAC jobs of this cluster, run by the local site ...
    jobs = [j for j in facility.dirac_jobs() if j.get("JobGroup") == cluster]
    running = [j for j in jobs if j["Status"] == "Running"]
    assert len(running) >= 2, jobs
    assert all(j["Site"] in SITES for j in running), running
    # ... as containers on their site's grid network only
    job_ctrs = facility.containers(
        f"label=org.gridhub.facility={PROJECT}", "label=org.gridhub.job", "status=running"
    )
    assert len(job_ctrs) >= 2
    for cid in job_ctrs:
        nets = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", cid).stdout)
        env = docker("inspect", "-f", "{{json .Config.Env}}", cid).stdout
        (site,) = [s for s in SITES if f'"DIRACSITE={s}"' in env]
        assert list(nets) == [f"{PROJECT}_{SITE_NETWORKS[site]}"], (site, nets)
    # each opened its reverse path with OpenSSH over plain SSH (the gateway
    # pins its host key in the job; the image has ssh)
    opened = [line for line in facility.job_logs().splitlines() if "reverse path" in line]
    assert sum("client openssh" in line for line in opened) >= 2, opened
    RESULTS["dirac_jobs"] = running


# Prometheus' scrape jobs (images/prometheus/prometheus.yml.tmpl)
SCRAPE_JOBS = {"prometheus", "hub", "traefik", "gateway", "schedulers", "sites", "lake"}
CLF = re.compile(r'\S+ - \S+ \[[^\]]+\] "GET /hub/\S* HTTP/[\d.]+" \d{3} \d+ ')


def test_monitoring_sees_the_facility_and_only_admins_see_it(facility, lab, browser):
    """Issue 20 while the first test's cluster runs: Prometheus has every scrape
    target up (the scheduler's through the gateway) and counts the user's cluster
    and workers; a student gets 403 from the monitoring service, an admin (the
    teacher) its usage page and Prometheus' answers; Prometheus is out of reach of
    user code, Traefik's metrics want the token; Traefik logs requests in CLF."""
    cluster = STATE.get("cluster")
    assert cluster, "needs the cluster of the first test"
    student, r = _login(facility, "carol", facility.exec("hub", "gridhub-access-code").strip())
    assert r.status_code == 302, r.text[-500:]
    refused = student.get("/services/monitoring/", follow_redirects=True)
    assert refused.status_code == 403, (refused.status_code, refused.text[-300:])
    refused = student.get(
        "/services/monitoring/prometheus/api/v1/query",
        params={"query": "up"},
        follow_redirects=True,
    )
    assert refused.status_code == 403 and '"status":"success"' not in refused.text

    teacher_code = facility.exec("hub", "gridhub-access-code", "--teacher").strip()
    admin, r = _login(facility, TEACHER, teacher_code)
    assert r.status_code == 302, r.text[-500:]
    api = "/services/monitoring/prometheus/api/v1"

    def query(expr: str) -> float:
        r = admin.get(f"{api}/query", params={"query": expr}, follow_redirects=True)
        assert r.status_code == 200, r.text[-500:]
        return sum(float(x["value"][1]) for x in r.json()["data"]["result"])

    def targets() -> dict[str, list[dict]]:
        r = admin.get(f"{api}/targets", follow_redirects=True)
        assert r.status_code == 200, r.text[-500:]
        out: dict[str, list[dict]] = {}
        for target in r.json()["data"]["activeTargets"]:
            out.setdefault(target["labels"]["job"], []).append(target)
        return out

    t0 = time.monotonic()
    while True:  # scrapes every 15 s, service discovery of schedulers every 15 s
        found = targets()
        down = {
            f"{job}/{x['labels']['instance']}: {x['health']} {x.get('lastError')}"
            for job, xs in found.items()
            for x in xs
            if x["health"] != "up"
        }
        schedulers = {x["labels"].get("cluster") for x in found.get("schedulers", [])}
        if set(found) == SCRAPE_JOBS and not down and cluster in schedulers:
            break
        assert time.monotonic() - t0 < 180, f"targets {sorted(found)}, down {down}, {schedulers}"
        time.sleep(5)
    RESULTS["monitoring_targets_up_seconds"] = round(time.monotonic() - t0, 1)
    assert len(found["sites"]) == len(SITES)

    def at_least(minimum: float, expr: str) -> None:
        """Wait for Prometheus to see what the facility already is: a target up
        may not have been scraped since the workers joined (the scheduler's
        heartbeat to the gateway and the scrapes both come every 15 s)."""
        deadline = time.monotonic() + 90
        while (value := query(expr)) < minimum:
            assert time.monotonic() < deadline, f"{expr} = {value} after 90 s, want >= {minimum}"
            time.sleep(5)

    # the user's cluster and its workers, as the gateway, DIRAC, the scheduler and
    # the sites count them
    at_least(1, f'gridhub_gateway_clusters{{user="{SEAT}"}}')
    at_least(2, f'gridhub_gateway_workers{{user="{SEAT}",state="RUNNING"}}')
    at_least(2, 'gridhub_gateway_worker_jobs{status="Running"}')
    at_least(2, f'dask_scheduler_workers{{cluster="{cluster}"}}')
    at_least(2, "gridhub_localsite_jobs")
    at_least(1, "gridhub_gateway_dirac_up")  # one gateway: 1 is up
    at_least(1, "jupyterhub_running_servers")
    at_least(1, "traefik_entrypoint_requests_total")
    # the lake's origin and XCache (two targets), from XRootD's own summary
    # records (the healthchecks' logins are counted already)
    at_least(2, 'xrootd_up{job="lake"}')
    at_least(1, 'xrootd_xrootd_lgn_num{instance="lake-cache:9101"}')
    rules = admin.get(f"{api}/rules", follow_redirects=True).json()["data"]["groups"]
    assert {x["name"] for g in rules for x in g["rules"]} >= {
        "ScrapeTargetDown",
        "GatewayCannotReachDirac",
        "GridJobsFailingAtSite",
        "SiteHasNoFreeSlots",
    }
    # the usage page, in a browser, for the admin
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1500, "height": 1000})
    try:
        pg = ctx.new_page()
        watch(pg, "monitoring")
        # (next=: straight to the page, no server for the teacher)
        pg.goto(facility.url + "/hub/login?next=%2Fservices%2Fmonitoring%2F")
        pg.fill("#username_input", TEACHER)
        pg.fill("#password_input", teacher_code)
        pg.click("#login_submit")
        wait_or_reload(
            pg, facility.url + "/services/monitoring/", "#usage", login=(TEACHER, teacher_code)
        )
        pg.goto(facility.url + "/services/monitoring/?hours=1")
        wait_or_reload(pg, facility.url + "/services/monitoring/?hours=1", "#usage")
        for ident in ("active-users", "servers", "clusters", "workers", "cpu-user"):
            assert pg.locator(f"#plot-{ident}").count() == 1, ident
        # workers were running: a line (or, with one sample yet, a point)
        assert pg.locator("#plot-workers polyline, #plot-workers circle").count() >= 1
        screenshot(pg, "compose-05-monitoring-usage")
    finally:
        ctx.close()
    # Prometheus is not reachable from user code; Traefik's metrics want the token
    probe = (
        "import socket, urllib.request, urllib.error\n"
        "try:\n    socket.create_connection(('prometheus', 9090), 3).close(); print('OPEN')\n"
        "except OSError as e:\n    print('CLOSED', type(e).__name__)\n"
        "try:\n    urllib.request.urlopen(f'http://{PUBLIC_HOST}:8083/metrics', timeout=5)\n"
        "    print('METRICS OPEN')\n"
        "except urllib.error.HTTPError as e:\n    print('METRICS', e.code)\n"
        "try:\n    urllib.request.urlopen('http://lake-cache:9101/metrics', timeout=5)\n"
        "    print('LAKE OPEN')\n"
        "except urllib.error.HTTPError as e:\n    print('LAKE', e.code)\n"
        "except OSError as e:\n    print('LAKE CLOSED', type(e).__name__)\n"
    ).replace("{PUBLIC_HOST}", PUBLIC_HOST)
    outs = {
        where: _python_in(where, probe)
        for where in (STATE["server"][0], _scheduler_container(cluster))
    }
    for where, out in outs.items():
        assert "CLOSED" in out and "METRICS 401" in out, (where, out)
    # the XCache is on the users' network: its metrics want the token too; a
    # scheduler's network does not reach it at all
    notebook, scheduler = outs.values()
    assert "LAKE 401" in notebook, notebook
    assert "LAKE CLOSED" in scheduler, scheduler
    # Traefik's access log: one line per request in the Common Log Format
    assert CLF.search(facility.compose("logs", "--no-color", "traefik").stdout)


def test_getting_started_notebook_plots_what_the_cluster_computed(facility, lab):
    """Issue 21: the getting-started notebook, run in JupyterLab as a physicist
    runs it (Run All Cells), takes the sidebar's cluster, computes on its grid
    workers, reads the samples from the data lake and renders its plot."""
    cluster = STATE.get("cluster")
    assert cluster, "needs the cluster of the first test"
    # a student's home has the class's notebooks; a physicist's new home gets this
    # one from the image (tests/unit/test_home_notebooks.py): put it there as an
    # upload would, as the user
    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "00-getting-started.ipynb"
    subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            STATE["server"][0],
            "sh",
            "-c",
            'cat > "$HOME/getting-started.ipynb"',
        ],
        input=notebook.read_bytes(),
        check=True,
        timeout=60,
    )
    pg = lab.context.new_page()
    watch(pg, "getting-started")
    try:
        # a workspace of its own: the module's lab page (default workspace) must not
        # restore this notebook over its own when it reloads
        url = (
            f"{facility.url}/user/{SEAT}/lab/workspaces/getting-started/tree/getting-started.ipynb"
        )
        pg.goto(url)
        title = "Getting started on GridHub"  # its first cell
        wait_or_reload(pg, url, f'.jp-NotebookPanel .jp-Cell:has-text("{title}")')
        # this notebook's panel (the workspace may show the module's other notebook too)
        panel = pg.locator(".jp-NotebookPanel", has=pg.locator(".jp-Cell", has_text=title))
        pg.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=120_000)
        dismiss_connection_dialog(pg)
        pg.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        pg.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        plot = panel.locator(".jp-OutputArea-output img")
        outputs = panel.locator(".jp-OutputArea-output")
        prompts = panel.locator(".jp-CodeCell .jp-InputPrompt")
        deadline = time.monotonic() + 300  # (its cluster is up: no grid start)
        while True:
            # (text content: cells scrolled away have no rendered text, content-visibility)
            text = "\n".join(outputs.all_text_contents())
            if "Traceback" in text or "Error" in text:
                screenshot(pg, "compose-06-getting-started-error")
                raise AssertionError(f"the notebook failed:\n{text[-3000:]}")
            done = [re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts.all_text_contents()]
            if plot.count() and done and all(done):
                break
            if time.monotonic() > deadline:
                screenshot(pg, "compose-06-getting-started-timeout")
                raise AssertionError(
                    f"not done after 300 s: {[bool(d) for d in done]}\n{text[-2000:]}"
                )
            time.sleep(2)
        plot.first.scroll_into_view_if_needed()
        screenshot(pg, "compose-06-getting-started-plot")
        # the plot decoded in the browser: an image with pixels, not a broken link
        assert plot.count() == 1
        assert plot.first.evaluate("img => img.complete && img.naturalWidth > 0")
        assert f"connected to {cluster}" in text, text
        assert "16000000 entries histogrammed on the cluster" in text, text
        # the samples come from the lake, through the XCache, and open
        assert "fileset from the data lake: root://lake-cache" in text, text
        assert "200 events" in text, text
    finally:
        pg.close()


LAKE_READ = r"""
import json, socket, sys
from dask_gateway import Gateway
from gridhub import data

fileset, source = data.choose_fileset(timeout=10)
files = {f: spec["metadata"].get("nevts") for spec in fileset.values() for f in spec["files"]}
client = Gateway().connect(sys.argv[1]).get_client()

def read(url):
    import socket, uproot
    with uproot.open(url, timeout=60) as f:
        return int(f["Events"].num_entries), socket.gethostname()

def refused(url):
    import uproot
    try:
        with uproot.open(url, timeout=30) as f:
            return "READ " + ",".join(f.keys())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]

def reaches(url):
    from gridhub import data
    return data.reachable(url, timeout=3)

protected = data.lake_url("/protected/samples/nano_tt_v12.root")
origin = "root://lake-origin:1094//public/samples/fileset.json"
out = {
    "source": source,
    "files": files,
    "reads": client.gather(client.map(read, list(files), pure=False)),
    "here": socket.gethostname(),
    "refused_worker": client.submit(refused, protected, pure=False).result(),
    "refused_notebook": refused(protected),
    "worker_reaches_origin": client.submit(reaches, origin, pure=False).result(),
    "notebook_reaches_origin": reaches(origin),
    "token": data.storage_token(),
}
token = out.pop("token")
out["scope"], out["expires_at"] = token["scope"], token["expires_at"]
print("LAKE", json.dumps(out))
print("TOKEN", token["access_token"])
"""


def _origin_read(facility: Facility, token: str | None) -> subprocess.CompletedProcess[str]:
    """xrdcp of the protected sample at the origin, inside its container (the
    only place that reaches it), the token given on stdin, never in argv."""
    script = (
        'read -r t; if [ -n "$t" ]; then export BEARER_TOKEN="$t"; fi; '
        "xrdcp -f root://localhost:1094//protected/samples/nano_tt_v12.root /dev/null "
        "&& echo READ-OK"
    )
    (cid,) = facility.containers(
        f"label=com.docker.compose.project={PROJECT}",
        "label=com.docker.compose.service=lake-origin",
    )
    return subprocess.run(
        ["docker", "exec", "-i", cid, "sh", "-c", script],
        input=(token or "") + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lake_reads_through_the_xcache(facility, lab):
    """The grid workers of the first test's cluster read the shipped samples
    over root:// through the XCache, which keeps them; the protected copy is
    refused without a token and opens at the origin with a hub-issued one."""
    cluster = STATE.get("cluster")
    assert cluster, "needs the cluster of the first test"
    (server,) = facility.server_of(SEAT)
    out = _python_in(server, LAKE_READ, cluster)
    lake = json.loads(out.split("LAKE ", 1)[1].splitlines()[0])
    token = out.split("TOKEN ", 1)[1].split()[0]
    RESULTS["lake"] = {k: v for k, v in lake.items()}
    _save_results()
    assert lake["source"] == "the data lake: root://lake-cache:1094//public/samples/fileset.json"
    files = lake["files"]
    assert sorted(u.rsplit("/", 1)[1] for u in files) == ["nano_dy.root", "nano_tt_v12.root"]
    assert all(u.startswith("root://lake-cache:1094//public/samples/") for u in files)
    # every file read on a grid worker (not the notebook), all its events
    assert [n for n, _ in lake["reads"]] == list(files.values()) == [200, 40], lake
    assert all(host != lake["here"] for _, host in lake["reads"])
    for where in ("refused_worker", "refused_notebook"):
        assert "3010" in lake[where] or "ermission denied" in lake[where], lake[where]
    assert lake["worker_reaches_origin"] is False and lake["notebook_reaches_origin"] is False
    # the cache served them: its volume holds both files (and their .cinfo)
    cached = facility.exec("lake-cache", "find", "/var/cache/xrootd", "-type", "f").split()
    RESULTS["lake"]["cached"] = cached
    for name in ("nano_tt_v12.root", "nano_dy.root"):
        assert f"/var/cache/xrootd/public/samples/{name}" in cached, cached
        assert f"/var/cache/xrootd/public/samples/{name}.cinfo" in cached, cached
    assert not [f for f in cached if "/protected/" in f], cached
    assert "with the cache's own token" in facility.compose("logs", "lake-cache").stdout
    # ... and the origin knew the cache by that token (ztn over TLS: the
    # token's subject), not as an anonymous unix login ("login as xrootd")
    origin_log = facility.compose("logs", "lake-origin").stdout
    assert "login as xcache" in origin_log, origin_log[-3000:]
    # the hub's issuer: a token that reads the datasets and writes only the
    # student's own analysis-cache area (the class is no shared area), never
    # the whole lake (gridhub.cachepolicy); the origin accepts it (its keys
    # fetched through Traefik); without it the same read is refused
    scopes = lake["scope"].split()
    assert "storage.read:/protected" in scopes and "storage.read:/" not in scopes, scopes
    writes = {s.split(":", 1)[1] for s in scopes if not s.startswith("storage.read:")}
    assert writes == {cachepolicy.user_area(SEAT)}, scopes
    assert 0 < lake["expires_at"] - time.time() <= 3600
    refused = _origin_read(facility, None)
    assert "READ-OK" not in refused.stdout, refused
    assert "3010" in refused.stderr or "ermission denied" in refused.stderr, refused.stderr
    granted = _origin_read(facility, token)
    assert "READ-OK" in granted.stdout, f"{granted.stdout}\n{granted.stderr}"
    # each container of the lake: read-only, not root; the origin on the
    # internal network only, the cache also on the users' and each site's grid network
    for service, nets in (
        ("lake-origin", {"internal"}),
        ("lake-cache", {"internal", "users", *SITE_NETWORKS.values()}),
    ):
        (cid,) = facility.containers(
            f"label=com.docker.compose.project={PROJECT}",
            f"label=com.docker.compose.service={service}",
        )
        info = json.loads(docker("inspect", cid).stdout)[0]
        assert info["HostConfig"]["ReadonlyRootfs"], service
        assert info["Config"]["User"] == "xrootd", service
        assert set(info["NetworkSettings"]["Networks"]) == {f"{PROJECT}_{n}" for n in nets}


def test_teacher_sees_the_class(facility, browser):
    """Issue 22: the teacher's code (`gridhub-access-code --teacher`), the login
    form, the teacher's view (a hub service behind the hub's login): the class
    by the names students typed, not by seat. Before the trust-boundary test,
    whose refused logins lock this address out of logging in for a while."""
    assert STATE.get("cluster"), "needs the student of the first test"
    code = facility.exec("hub", "gridhub-access-code", "--teacher").strip().splitlines()[-1]
    assert len(code) >= 32
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(60_000)
    try:
        pg = ctx.new_page()
        watch(pg, "teacher")
        # straight to the view: the teacher needs no server of their own
        pg.goto(facility.url + "/hub/login?next=%2Fservices%2Fteacher%2F")
        pg.fill("#username_input", TEACHER)
        pg.fill("#password_input", code)
        pg.click("#login_submit")
        wait_or_reload(pg, facility.url + "/services/teacher/", "#class", login=(TEACHER, code))
        pg.locator("#class td.name", has_text=USER).first.wait_for(timeout=60_000)
        screenshot(pg, "compose-teacher-view")
        names = pg.locator("#class td.name").all_inner_texts()
        # the students by the names they typed, not their seats (carol is the
        # monitoring test's student: she logged in too)
        assert USER in names and not any(n.startswith("seat-") for n in names), names
        assert f"The class: {len(names)} students" in pg.locator("#teacher-view").inner_text()
        # the view is the teacher's: the student's own browser gets 403
        r = STATE["lab_request"](facility.url + "/services/teacher/api/class")
        assert r.status == 403, r.status
    finally:
        ctx.close()
    # the students' servers (and kernels, inside) weigh less than the hub (Docker's
    # default, 1024) when the cores are busy: cpu_shares of nice 10 (server_nice)
    shares = docker("inspect", "-f", "{{.HostConfig.CpuShares}}", STATE["server"][0]).stdout
    assert int(shares) == 110, shares


def _scheduler_container(cluster: str) -> str:
    return f"{PROJECT}-scheduler-{cluster}"


def _python_in(cid: str, code: str, *args: str, timeout: float = 300) -> str:
    """Run ``code`` with the container's Python, as its own user and environment."""
    p = subprocess.run(
        ["docker", "exec", "-i", cid, "python", "-", *args],
        input=code,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if p.returncode != 0:  # the whole output as an artifact: the first error counts
        (ARTIFACTS / "compose").mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "compose" / f"python-{cid[:12]}.log").write_text(p.stdout + "\n" + p.stderr)
    assert p.returncode == 0, f"python in {cid[:12]} failed:\n{p.stdout[-2000:]}\n{p.stderr[:3000]}"
    return p.stdout


def _login(facility: Facility, name: str, code: str) -> tuple[httpx.Client, httpx.Response]:
    """A second browser: the hub's login form (xsrf cookie and field)."""
    client = httpx.Client(base_url=facility.url, verify=False, timeout=60)  # noqa: S501 (self-signed)
    client.get("/hub/login").raise_for_status()
    xsrf = client.cookies.get("_xsrf", path="/hub/")
    r = client.post(
        "/hub/login",
        data={"username": name, "password": code, "_xsrf": xsrf},
        follow_redirects=False,
    )
    return client, r


def _pem_line(pem: str) -> str:
    """A line from the middle of a PEM body: found whatever the file's layout."""
    body = [x for x in pem.splitlines() if x and not x.startswith("-----")]
    return body[len(body) // 2]


def _needles(facility: Facility, b_key: str) -> dict[str, str]:
    """Every secret of the facility, and B's cluster key: what A must not find."""
    found = _secret_files(facility, "hub", "/srv/gridhub/state/secrets")
    found |= _secret_files(facility, "hub", "/srv/gridhub/shared")
    found |= _secret_files(facility, "gateway", "/srv/gridhub/state/secrets")
    found |= _secret_files(facility, "dirac", "/srv/gridhub/dirac")
    found |= _secret_files(facility, "hub", "/srv/gridhub/monitoring")
    key = facility.exec(  # (where the hub keeps it: before issue 15, in its state)
        "hub",
        "sh",
        "-c",
        "cat /srv/gridhub/shared/tls/facility.key || cat "
        "/srv/gridhub/state/secrets/tls/facility.key",
    )
    found["the facility's TLS key"] = _pem_line(key)
    found["B's cluster TLS key"] = _pem_line(b_key)
    assert any("cookie_secret" in k for k in found) and any("api-key" in k for k in found), found
    return found


TAMPER = """
import json, sys, time
import boto3
from gridhub.dirac import make_sandbox
from gridhub.embedded import BUCKET, dirac_user_name, server_info, store_credentials
STATE = "/srv/gridhub/dirac"
key_id, secret = store_credentials(STATE)
s3 = boto3.client("s3", endpoint_url=server_info(STATE)["s3_url"], region_name="us-east-1",
                  aws_access_key_id=key_id, aws_secret_access_key=secret)
owner = "/" + dirac_user_name(sys.argv[1]) + "/"
evil = make_sandbox({"gridhub-job.sh": b"echo TAMPERED-PAYLOAD-RAN; exit 0\\n"})
deadline = time.monotonic() + 120
while True:  # the gateway uploads a cluster's sandbox right after creating it
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
            if owner in "/" + o["Key"]]
    if keys or time.monotonic() > deadline:
        break
    time.sleep(2)
for k in keys:
    s3.put_object(Bucket=BUCKET, Key=k, Body=evil)
print("TAMPERED", json.dumps(keys))
"""

JOB_OF = """
import asyncio, json, sys
from gridhub.dirac import DiracXClient
from gridhub.embedded import facility_token_source
URL = "http://dirac:8000"
async def main():
    async with DiracXClient(URL, facility_token_source("/srv/gridhub/dirac", URL)) as dx:
        jobs = await dx.search([], ["JobID", "Status", "MinorStatus", "JobGroup"])
    print("JOBS", json.dumps([j for j in jobs if j.get("JobGroup") == sys.argv[1]]))
asyncio.run(main())
"""


def _tampered_sandbox_refused(facility: Facility, b_server: str, b_user: str, cluster: str) -> int:
    out = facility.exec("dirac", "python", "-c", TAMPER, b_user)
    keys = json.loads(out.split("TAMPERED", 1)[1])
    assert keys, f"no sandbox of {b_user} in the store"
    _python_in(
        b_server, f"from dask_gateway import Gateway\nGateway().connect('{cluster}').scale(1)\n"
    )
    deadline, jobs = time.monotonic() + 240, []
    while time.monotonic() < deadline:
        out = facility.exec("dirac", "python", "-c", JOB_OF, cluster)
        jobs = json.loads(out.split("JOBS", 1)[1])
        failed = [j for j in jobs if j["Status"] == "Failed"]
        if failed:
            break
        # (Running / Job Initialization is the wrapper's set-up, as in DIRAC,
        # before the sandbox is checked; "Application" would be B's payload)
        started = [
            j
            for j in jobs
            if j["Status"] == "Done"
            or (j["Status"] == "Running" and j["MinorStatus"] != "Job Initialization")
        ]
        assert not started, jobs
        time.sleep(3)
    else:
        raise AssertionError(f"B's job was not refused: {jobs}")
    job = failed[0]
    assert job["MinorStatus"] == "Input sandbox checksum mismatch", job
    logs = facility.compose("logs", "--no-color", *SITES.values(), check=False).stdout
    assert f"Job {job['JobID']}: input sandbox refused" in logs, logs[-3000:]
    assert "TAMPERED-PAYLOAD-RAN" not in facility.job_logs()
    return int(job["JobID"])


def test_trust_boundaries(facility, lab):
    """Issue 15 on the running facility, as students A (alice, the cluster of
    the first test) and B (bob, a cluster of his own)."""
    a_cluster = STATE.get("cluster")
    assert a_cluster, "needs the cluster of the first test"
    code = facility.exec("hub", "gridhub-access-code").strip()

    # B logs in from another browser and gets a server (a seat or his own)
    b_user, b_server = _student_server(facility, "bob", code)
    out = _python_in(
        b_server,
        "from dask_gateway import Gateway\n"
        "c = Gateway().new_cluster(shutdown_on_close=False)\n"
        "print('BCLUSTER', c.name)\n"
        "print(c.security.tls_key)\n",
    )
    b_cluster = out.split("BCLUSTER", 1)[1].split()[0]
    b_key = out.split(b_cluster, 1)[1]
    assert "PRIVATE KEY" in b_key

    # A's code, on A's notebook server and on A's scheduler
    internal = ["gateway:8000", "gateway:8022", "dirac:8000", "dirac:8010"]
    schedulers = [f"scheduler-{c}:{p}" for c in (a_cluster, b_cluster) for p in (8786, 8787, 8788)]
    # B's scheduler by name and by address, as A's code scanning its network would find it
    b_info = json.loads(docker("inspect", _scheduler_container(b_cluster)).stdout)[0]
    b_addresses = [n["IPAddress"] for n in b_info["NetworkSettings"]["Networks"].values()]
    b_scheduler = [
        f"{h}:{p}" for h in [f"scheduler-{b_cluster}", *b_addresses] for p in (8786, 8787, 8788)
    ]
    request = {
        "cluster": a_cluster,
        "other_cluster": b_cluster,
        "needles": _needles(facility, b_key),
        # (Traefik's ports are open to notebooks by design; its API's 401 is checked below)
        "notebook_targets": internal + schedulers,
        "scheduler_targets": [
            "hub:8081",
            "dirac:8000",
            "dirac:8010",
            "localsite:8000",
            *b_scheduler,
        ],
    }
    (a_server,) = facility.server_of(SEAT)
    probes_src = (Path(__file__).parent / "trust_probes.py").read_text()
    out = _python_in(a_server, probes_src, json.dumps(request))
    probes = json.loads(out.split("PROBES ", 1)[1].splitlines()[0])
    RESULTS["trust_probes"] = {k: v for k, v in probes.items()}
    _save_results()

    # each scheduler in a container of its own: no volume, unprivileged,
    # read-only, no capabilities, on its cluster's own network, shared with
    # Traefik and the gateway only
    for cluster in (a_cluster, b_cluster):
        info = json.loads(docker("inspect", _scheduler_container(cluster)).stdout)[0]
        assert info["State"]["Running"], info["State"]
        own = f"{PROJECT}_schedulers-{cluster}"
        assert list(info["NetworkSettings"]["Networks"]) == [own]
        members = json.loads(docker("network", "inspect", own).stdout)[0]["Containers"]
        services = {facility.service_of(cid) for cid in members}
        assert services == {"scheduler", "traefik", "gateway"}, services
        assert info["Mounts"] == [], info["Mounts"]
        assert info["Config"]["User"] not in ("", "0", "root", "1000", "1000:1000")
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"], host
        assert "no-new-privileges" in host["SecurityOpt"] and host["PidsLimit"] > 0
        assert host["Binds"] in (None, []), host["Binds"]

    sched = probes["scheduler"]
    assert isinstance(sched, dict), f"run_on_scheduler failed: {sched}"
    assert sched["found"] == [], sched["found"]  # no facility secret, none of B's
    assert sched["uid"] not in (0, 1000), sched["uid"]  # not root, not the gateway's account
    opened = {t: v for t, v in {**probes["ports"], **sched["ports"]}.items() if v == "open"}
    assert not opened, opened
    assert sched["stop_other_with_own_token"] in (401, 403, 404), sched
    assert "connected" != probes["connect_other"], probes
    assert not probes["other_scheduler_with_own_creds"].startswith("connected"), probes
    # Traefik's API entrypoint for the hub answers nothing without the hub's credentials
    r = _python_in(
        a_server,
        "import urllib.request, urllib.error\n"
        f"try: urllib.request.urlopen('http://{PUBLIC_HOST}:8099/api/http/routers', timeout=10)\n"
        "except urllib.error.HTTPError as e: print('STATUS', e.code)\n"
        "else: print('STATUS 200')\n",
    )
    # 401 (the hub's route, wrong credentials) or 404 (no route matches): never an answer
    assert "STATUS 401" in r or "STATUS 404" in r, r
    # Someone holding the store's credential rewrites B's sandbox: B's next
    # worker job is refused by the site, with the reason, and never runs it
    job_id = _tampered_sandbox_refused(facility, b_server, b_user, b_cluster)
    RESULTS["tampered_sandbox_job"] = job_id
    # B's cluster is untouched by A's attempts, and B stops it
    out = _python_in(
        b_server,
        "from dask_gateway import Gateway\n"
        "g = Gateway()\n"
        "print('BLIST', [c.name for c in g.list_clusters()])\n"
        f"g.stop_cluster('{b_cluster}')\n",
    )
    assert b_cluster in out.split("BLIST", 1)[1], out
    deadline = time.monotonic() + 60
    while docker("ps", "-aq", "--filter", f"name={_scheduler_container(b_cluster)}").stdout.strip():
        assert time.monotonic() < deadline, "B's scheduler container is still there"
        time.sleep(1)

    # a second person typing A's name does not get A's server
    mallory, r = _login(facility, USER, code)
    assert r.status_code == 403 and "already taken" in r.text, (r.status_code, r.text[-300:])
    # failed logins past the limit: refused, the right code too (the refused
    # login under A's name above counts as one failure from this address)
    for i in range(FAILED_LOGIN_LIMIT - 1):
        assert _login(facility, "eve", f"wrong-{i}")[1].status_code == 403
    eve, r = _login(facility, "eve", code)
    assert r.status_code == 429, r.status_code
    for c in (mallory, eve):
        c.close()


# Run on A's notebook server, with A's credentials: four workers of A's
# cluster (the stand-in sites share jobs by job ID, so both sites hold some),
# a fresh 1 MB transfer for every ordered pair of workers, then each worker's
# direct-peer summary, and who reaches each worker's site listener.
PEERS_PROBE = """
import json, operator, socket, sys
import numpy as np
from dask_gateway import Gateway
from distributed import wait
from gridhub.tunnel.direct_peers import summary

cluster = Gateway().connect(sys.argv[1])
cluster.scale(4)
client = cluster.get_client()
client.wait_for_workers(4, timeout=540)
workers = sorted(client.scheduler_info()["workers"])
for src in workers:
    for dst in workers:
        if src != dst:
            big = client.submit(np.ones, 2**17, workers=[src], pure=False)
            wait(big)
            got = client.submit(operator.attrgetter("nbytes"), big, workers=[dst], pure=False)
            assert got.result(timeout=120) == 2**20
            del big, got

def probe(address):
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        return repr(e)
    return "open"

peers = client.run(summary)
reach = {}
for w in workers:
    address = peers[w]["address"]
    reach[w] = {"notebook": probe(address), "scheduler": client.run_on_scheduler(probe, address)}
    reach[w].update({o: client.run(probe, address, workers=[o])[o] for o in workers if o != w})
cluster.scale(2)
client.close()
print("PEERS " + json.dumps({"workers": workers, "peers": peers, "reach": reach}))
"""


def test_same_site_peers_direct_other_sites_relay(facility, lab):
    """Issue 19 in compose: a grid network per stand-in site; workers of one
    site exchange data directly, across sites through the relay; a worker's
    site listener is reached by its own site's workers only (not by the
    notebook, the scheduler nor another site's workers)."""
    cluster = STATE.get("cluster")
    assert cluster, "needs the cluster of the first test"
    (a_server,) = facility.server_of(SEAT)
    out = _python_in(a_server, PEERS_PROBE, cluster, timeout=CLUSTER_TIMEOUT)
    got = json.loads(out.split("PEERS ", 1)[1].splitlines()[0])
    RESULTS["direct_peers"] = got
    _save_results()
    workers, peers, reach = got["workers"], got["peers"], got["reach"]
    site = {w: peers[w]["site"] for w in workers}
    assert set(site.values()) == set(SITES), site  # the four workers are at both sites
    assert all(peers[w]["off"] is None and peers[w]["address"] for w in workers), peers
    pairs = {"same": 0, "cross": 0}
    for dst in workers:
        for src in workers:
            if src == dst:
                continue
            stats = peers[dst]["peers"][src.rsplit("/", 1)[1]]
            if site[src] == site[dst]:
                pairs["same"] += 1
                assert stats["path"] == "direct" and stats["direct_connects"] >= 1, stats
                assert stats["relay_connects"] == 0 and stats["failed_direct"] == 0, stats
                assert reach[src][dst] == "open", (src, dst, reach[src])
            else:
                pairs["cross"] += 1
                assert stats["path"] == "relay", stats
                assert stats["why"] == f"other site ({site[src]})", stats
                assert reach[src][dst] != "open", (src, dst, reach[src])
        assert reach[dst]["notebook"] != "open" and reach[dst]["scheduler"] != "open", reach
    assert pairs["same"] and pairs["cross"], pairs


def test_hub_restart_keeps_server_cluster_session(facility, lab):
    assert STATE.get("cluster"), "needs the cluster of the previous test"
    pg = lab
    run_cell(pg, "open('persist.txt', 'w').write('kept')\nprint('WROTE')\n", "WROTE", 60)
    t0 = time.monotonic()
    facility.compose("restart", "hub", timeout=120)
    facility.wait_healthy(180)
    RESULTS["hub_restart_to_healthy_seconds"] = round(time.monotonic() - t0, 1)
    # the same server container still runs
    assert facility.server_of(SEAT) == STATE["server"]
    # the kernel, its client and the cluster are alive
    text = run_cell(
        pg,
        "print('AGAIN', client.submit(lambda x: x + 1, 41).result(),"
        " [c.name for c in gateway.list_clusters()])\n",
        "AGAIN",
        180,
    )
    assert "AGAIN 42" in text and STATE["cluster"] in text.split("AGAIN 42")[-1]
    # the browser session survives: reloading goes straight to JupyterLab
    pg.goto(facility.url + f"/user/{SEAT}/lab")
    wait_for_lab(pg)
    assert "/hub/login" not in pg.url
    screenshot(pg, "compose-05-after-hub-restart")

    # A new gateway container (an upgrade recreates it) takes over the running
    # cluster: its scheduler container is the same one, the kernel's client computes
    sched = docker("inspect", "-f", "{{.Id}}", _scheduler_container(STATE["cluster"])).stdout
    t0 = time.monotonic()
    facility.compose("up", "-d", "--no-build", "--no-deps", "--force-recreate", "gateway")
    facility.wait_healthy(180)
    RESULTS["gateway_recreate_to_healthy_seconds"] = round(time.monotonic() - t0, 1)
    pg.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=120_000)
    text = run_cell(
        pg,
        "print('AFTER', client.submit(lambda x: x * 2, 21).result(),"
        " [c.name for c in gateway.list_clusters()])\n",
        "AFTER",
        180,
    )
    assert "AFTER 42" in text and STATE["cluster"] in text.split("AFTER 42")[-1], text
    assert (
        docker("inspect", "-f", "{{.Id}}", _scheduler_container(STATE["cluster"])).stdout == sched
    )

    # stop the cluster: its DIRAC jobs end, its containers go
    facility.save_job_logs("cluster")
    pg.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=120_000)
    run_cell(pg, "cluster.shutdown()\nprint('STOPPED')\n", "STOPPED", 180)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = [j for j in facility.dirac_jobs() if j.get("JobGroup") == STATE["cluster"]]
        active = [j for j in jobs if j["Status"] not in ("Done", "Failed", "Killed", "Deleted")]
        ctrs = facility.containers(f"label=org.gridhub.facility={PROJECT}", "label=org.gridhub.job")
        ctrs += facility.containers(f"name={_scheduler_container(STATE['cluster'])}")
        if not active and not ctrs:
            break
        time.sleep(3)
    assert not active, active
    assert not ctrs, ctrs
    # the student's own use in the notebook, a table and a plot (issue 20): one
    # record per worker job of the stopped cluster, with CPU seconds
    text = run_cell(
        pg,
        "import gridhub\n"
        "frame = gridhub.usage()\n"
        "mine = frame[frame.cluster == cluster.name]\n"
        "print('USAGE', len(mine), int(mine.cpu_s.sum() > 0), sorted(set(mine.site)))\n",
        "USAGE",
        120,
    )
    line = next(x for x in text.splitlines() if x.startswith("USAGE"))
    assert line.split()[1:3] == [str(len(jobs)), "1"], (line, jobs)
    plot = pg.locator(".jp-Notebook .jp-OutputArea-output.jp-RenderedImage img").last
    plot.wait_for(timeout=30_000)
    assert plot.evaluate("img => img.naturalWidth") > 100
    screenshot(pg, "compose-06-usage-in-notebook")


def test_down_up_keeps_files_and_hub_db(facility, lab):
    # a user's grid job runs while the facility goes down; it asks for the GPU
    # tag, which only the GPU stand-in site offers
    pg = lab
    text = run_cell(
        pg,
        "c2 = gateway.new_cluster(tags='GPU'); c2.scale(1)\n"
        "c2.get_client().wait_for_workers(1, timeout=540)\nprint('GRIDJOB', c2.name)\n",
        "GRIDJOB",
        CLUSTER_TIMEOUT,
    )
    c2 = text.split("GRIDJOB", 1)[1].split()[0]
    (job,) = [j for j in facility.dirac_jobs() if j.get("JobGroup") == c2]
    assert (job["Status"], job["Site"]) == ("Running", "LCG.GPU.gridhub"), job
    # ... under the student's own DIRAC identity, in the class's DIRAC group
    assert (job["Owner"], job["OwnerGroup"]) == (dirac_user_name(SEAT), "gridhub_class"), job
    jobs = facility.containers(
        f"label=org.gridhub.facility={PROJECT}", "label=org.gridhub.job", "status=running"
    )
    assert jobs and facility.server_of(SEAT)
    facility.save_logs("before-down")
    facility.save_job_logs("before-down")
    t0 = time.monotonic()
    facility.down()  # once, no retry
    RESULTS["down_seconds"] = round(time.monotonic() - t0, 1)
    assert not facility.project_containers()
    # compose removes its networks; the clusters' own (the gateway's, compose
    # does not know them) stay, with nothing on them, until the next gateway
    left = docker("network", "ls", "-q", "--filter", f"name={PROJECT}_").stdout.split()
    assert sorted(left) == sorted(facility.cluster_networks()) and left, left
    t0 = time.monotonic()
    facility.compose("up", "-d", "--no-build", timeout=600)
    RESULTS["second_up_to_healthy_seconds"] = round(
        time.monotonic() - t0 + facility.wait_healthy(), 1
    )
    deadline = time.monotonic() + 60
    while facility.cluster_networks():
        assert time.monotonic() < deadline, f"the new gateway left {facility.cluster_networks()}"
        time.sleep(1)
    users = facility.exec(
        "hub",
        "python",
        "-c",
        "import sqlite3; print([r[0] for r in sqlite3.connect("
        "'/srv/gridhub/state/jupyterhub.sqlite').execute('select name from users')])",
    )
    assert SEAT in users
    pg.goto(facility.url + "/hub/spawn")
    wait_for_lab(pg)
    assert "/hub/login" not in pg.url  # the cookie secret survived too
    r = pg.request.get(facility.url + f"/user/{SEAT}/api/contents/persist.txt?content=1")
    assert r.status == 200, r.text()
    assert r.json()["content"] == "kept"
    screenshot(pg, "compose-06-after-down-up")
    # no DIRAC job is left unfinished
    active = [
        j
        for j in facility.dirac_jobs()
        if j["Status"] not in ("Done", "Failed", "Killed", "Deleted")
    ]
    assert not active, active


# The analysis cache (issue 17) as notebooks use it: run on a student's server
# with the student's own credentials (the hub's storage token, gridhub.analysiscache)
CACHE_OWNER = r"""
import json, os, sys
from gridhub import analysiscache as cache
phase, key, data = sys.argv[1:4]
out = {"url": os.environ.get("GRIDHUB_ANALYSIS_CACHE_URL")}
tok = cache.token()
out["user"] = tok.user
if phase == "put":
    out["put"] = cache.put(key, data.encode(), expires="1h").size
    out["path"] = f"{cache.area()}/{key}"
    try:  # the class is no shared area: every student is in it
        cache.put("shared.txt", b"x", group="class")
        out["class_area"] = "written"
    except cache.CacheError as exc:
        out["class_area"] = f"{type(exc).__name__}: {exc}"
out["get"] = cache.get(key).decode()
out["list"] = [[e.key, e.size] for e in cache.list()]
if phase == "delete":
    cache.delete(key)
    try:
        out["after_delete"] = cache.get(key).decode()
    except cache.CacheError as exc:
        out["after_delete"] = type(exc).__name__
print("CACHE", json.dumps(out))
"""

# Run on another student's server with that student's credentials: the owner's
# object, addressed by its path on the store, with this student's token and with none
CACHE_OTHER = r"""
import json, os, sys
from XRootD import client
from gridhub import analysiscache as cache
path = sys.argv[1]
url = os.environ["GRIDHUB_ANALYSIS_CACHE_URL"]
tok = cache.token()

def answer(status):
    return "ok" if status.ok else f"[{status.errno}] {status.message.strip()}".replace(
        tok.secret(), "<token>"
    )

def read(target):
    with client.File() as f:
        status, _ = f.open(f"{url}//{target}", timeout=30)
        if status.ok:
            status, data = f.read(0, 1 << 20, timeout=30)
            return f"READ {data!r}" if status.ok else answer(status)
        return answer(status)

authz = f"?authz=Bearer%20{tok.secret()}"
fs = client.FileSystem(url)
out = {
    "user": tok.user,
    "read": read(path + authz),
    "read_anonymous": read(path),
    "delete": answer(fs.rm(path + authz, timeout=30)[0]),
    "delete_anonymous": answer(fs.rm(path, timeout=30)[0]),
    "list": answer(fs.dirlist(path.rsplit("/", 1)[0] + authz, timeout=30)[0]),
}
cache.put("mine.txt", b"mine", expires="10m")
out["own"] = cache.get("mine.txt").decode()
print("OTHER", json.dumps(out))
"""


def _student_server(facility: Facility, name: str, code: str) -> tuple[str, str]:
    """A new student logged in with the access code: (hub user, server container)."""
    client, r = _login(facility, name, code)
    assert r.status_code == 302, (r.status_code, r.text[-500:])
    try:
        xsrf = {"X-XSRFToken": client.cookies.get("_xsrf", path="/hub/") or ""}
        user = client.get("/hub/api/user", headers=xsrf).json()["name"]
        client.post(f"/hub/api/users/{user}/server", headers=xsrf)  # 400 when already running
        deadline = time.monotonic() + 300
        while not (
            facility.server_of(user)
            and client.get(f"/hub/api/users/{user}", headers=xsrf)
            .json()["servers"]
            .get("", {})
            .get("ready")
        ):
            assert time.monotonic() < deadline, f"no server for {name} ({user})"
            time.sleep(2)
    finally:
        client.close()
    (server,) = facility.server_of(user)
    return user, server


def test_analysis_cache_round_trip_and_areas(facility):
    """Issue 17, the analysis cache in compose (lake-store): a student's
    notebook puts an object with gridhub.analysiscache and gets it back; the
    object sits in the student's own area on the store's volume, with its
    expiry sidecar; another student cannot read, list or delete it (with their
    own token or none); the class group has no area. The store is read-only,
    runs as xrootd, on the users' network only; notebooks trust its
    certificate from a read-only volume that holds no key.

    Needs only the facility (its own two students: it runs alone with -k). In
    the module's order it comes after the hub was restarted, which forgot the
    failed logins of test_trust_boundaries (kept in the hub's memory)."""
    code = facility.exec("hub", "gridhub-access-code").strip()
    owner, owner_server = _student_server(facility, "dana", code)
    other, other_server = _student_server(facility, "erin", code)
    assert owner != other
    key, data = "skim/part-0.txt", f"dana's skim {RUN_ID}"

    put = _python_in(owner_server, CACHE_OWNER, "put", key, data)
    got = json.loads(put.split("CACHE ", 1)[1].splitlines()[0])
    RESULTS["analysis_cache"] = {"owner": got}
    assert got["url"] == "root://lake-store:1094", got
    assert (got["user"], got["put"], got["get"]) == (owner, len(data), data), got
    assert got["path"] == f"{cachepolicy.user_area(owner)}/{key}", got
    assert [key, len(data)] in got["list"], got
    assert got["class_area"].startswith("Refused:") and "3010" in got["class_area"], got

    # on the store's volume, in the owner's area, with its expiry (1 h from now)
    stored = facility.exec("lake-store", "cat", f"/srv/lake/store{got['path']}")
    assert stored == data, stored
    expires = int(facility.exec("lake-store", "cat", f"/srv/lake/store{got['path']}.expires"))
    assert 3000 < expires - time.time() <= 3600, expires

    out = _python_in(other_server, CACHE_OTHER, got["path"])
    them = json.loads(out.split("OTHER ", 1)[1].splitlines()[0])
    RESULTS["analysis_cache"]["other"] = them
    _save_results()
    assert them["user"] == other and them["own"] == "mine", them
    for attempt in ("read", "read_anonymous", "delete", "delete_anonymous", "list"):
        assert them[attempt].startswith("[3010]"), (attempt, them)

    # still there, unchanged; the owner deletes it
    again = _python_in(owner_server, CACHE_OWNER, "delete", key, data)
    after = json.loads(again.split("CACHE ", 1)[1].splitlines()[0])
    assert after["get"] == data and after["after_delete"] == "NotFound", after
    left = facility.exec("lake-store", "find", "/srv/lake/store/cache", "-type", "f").split()
    assert not [f for f in left if f.startswith(f"/srv/lake/store{got['path']}")], left

    # the store: read-only, not root, on the users' network only, reading the
    # issuer's keys through Traefik there
    (cid,) = facility.containers(
        f"label=com.docker.compose.project={PROJECT}",
        "label=com.docker.compose.service=lake-store",
    )
    info = json.loads(docker("inspect", cid).stdout)[0]
    assert info["HostConfig"]["ReadonlyRootfs"] and info["Config"]["User"] == "xrootd"
    assert set(info["NetworkSettings"]["Networks"]) == {f"{PROJECT}_users"}
    # the notebooks: the store's certificate from its own volume, read-only, no key in it
    mounts = json.loads(docker("inspect", owner_server).stdout)[0]["Mounts"]
    (ca,) = [m for m in mounts if m.get("Name") == f"{PROJECT}_lake-store-ca"]
    assert ca["RW"] is False, ca
    env = docker("inspect", "-f", "{{json .Config.Env}}", owner_server).stdout
    assert f'"X509_CERT_DIR={ca["Destination"]}"' in env, env
    listing = docker("exec", owner_server, "sh", "-c", f"cat {ca['Destination']}/*").stdout
    assert "CERTIFICATE" in listing and "PRIVATE KEY" not in listing


# a JSON Web Token: DiracX access and refresh tokens
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")


def _secret_files(facility: Facility, service: str, directory: str) -> dict[str, str]:
    """name -> text of every file in a container's secrets directory."""
    listing = facility.exec(
        service,
        "sh",
        "-c",
        f'for f in {directory}/*; do [ -f "$f" ] && printf "%s %s\\n" "${{f##*/}}" '
        '"$(base64 -w0 < "$f")"; done; exit 0',
    )
    out = {}
    for line in listing.splitlines():
        name, _, b64 = line.partition(" ")
        value = base64.b64decode(b64).decode(errors="replace").strip()
        if len(value) >= 8:  # a real secret, not an empty marker
            out[f"{service}:{directory}/{name}"] = value
    return out


def test_no_secret_or_token_in_any_log(facility, lab):
    """After the whole run: no generated secret, no user API token and no JWT
    in any container's log (services, the user's server) or in the grid jobs'
    stdout/stderr, including the logs saved before `down`."""
    secrets_ = _secret_files(facility, "hub", "/srv/gridhub/state/secrets")
    secrets_ |= _secret_files(facility, "hub", "/srv/gridhub/shared")
    secrets_ |= _secret_files(facility, "gateway", "/srv/gridhub/state/secrets")
    secrets_ |= _secret_files(facility, "dirac", "/srv/gridhub/dirac")
    secrets_ |= _secret_files(facility, "hub", "/srv/gridhub/monitoring")
    assert any("traefik_provider_token" in k for k in secrets_), sorted(secrets_)
    assert any("metrics_token" in k for k in secrets_), sorted(secrets_)
    (server,) = facility.server_of(SEAT)
    token = docker("exec", server, "printenv", "JUPYTERHUB_API_TOKEN").stdout.strip()
    assert len(token) >= 16
    secrets_[f"{SEAT}'s JUPYTERHUB_API_TOKEN"] = token

    logs = {}
    for cid in facility.project_containers():
        p = docker("logs", cid, check=False, timeout=60)
        logs[f"docker logs {cid[:12]}"] = p.stdout + p.stderr
    logs["compose logs before down"] = (ARTIFACTS / "compose" / "before-down.log").read_text()
    for name in ("cluster", "before-down"):
        path = ARTIFACTS / "compose" / f"grid-jobs-{name}.log"
        logs[f"grid jobs' stdout/stderr ({name})"] = path.read_text()
        assert "distributed.worker" in logs[f"grid jobs' stdout/stderr ({name})"]  # they are there
    found = [
        f"{what} in {where}"
        for where, text in logs.items()
        for what, value in secrets_.items()
        if value in text
    ]
    found += [f"a JWT in {where}" for where, text in logs.items() if JWT.search(text)]
    assert not found, found
