"""IAM mode in a real browser: oidc-provider-mock stands in for INDIGO IAM.

Chromium (Debian's) driven by Playwright logs in through the provider's form, lands in
JupyterLab, clicks NEW in the Dask sidebar: a dask-gateway cluster (the facility of
gateway_fixtures: real dask-gateway-server with the DIRAC backend, behind Traefik,
authenticating the server's JupyterHub token) gets a worker that is a DIRAC job, a
notebook cell computes on it and the result shows on the page, the cluster's dashboard
opens in a JupyterLab tab. The server's BEARER_TOKEN_FILE holds a valid access token
that is replaced before it expires; a user outside the allowed groups gets the refusal
page. Stopping the server through the hub API stops the user's cluster: every DIRAC
job of it ends. Screenshots of each step go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from gridhub.dirac import FINAL_STATES
from playwright.sync_api import expect

try:
    from .hub_fixtures import *  # noqa: F403
    from .hub_fixtures import CHROMIUM, SCREENSHOTS, OIDCMock, chromium
except ImportError:
    from hub_fixtures import *  # noqa: F403
    from hub_fixtures import CHROMIUM, SCREENSHOTS, OIDCMock, chromium

from gateway_fixtures import hub_dirac_facility  # noqa: F401 (a fixture)
from processes import wait_for

TOKEN_LIFETIME = 45  # refreshed when half is left
FACILITY = "IAM Test Facility"
WORKER_TIMEOUT = 240_000  # ms: a DIRAC job is matched, started, and joins (loaded machine)
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


@pytest.fixture
def oidc():
    mock = OIDCMock(token_max_age=TOKEN_LIFETIME)
    yield mock
    mock.stop()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    with chromium() as b:
        yield b


def loopback_only(page) -> None:
    """No internet here: refuse anything but loopback (the mock's CSS comes from a CDN)."""

    def route(r):
        host = urlsplit(r.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"hub-iam-{name}.png"))


def iam_login(page, hub, sub: str) -> None:
    page.goto(hub.public_url + "/hub/login")
    assert FACILITY in page.content()
    page.get_by_text("Sign in with IAM").click()
    page.wait_for_selector("input[name=sub]", timeout=30_000)
    page.fill("input[name=sub]", sub)
    page.get_by_role("button", name="Authorize").click()


def dirac_jobs(facility, cluster: str) -> list[dict]:
    """The DIRAC jobs of a cluster (its workers), as DiracX reports them."""

    async def search():
        async with facility.diracx.client() as dx:
            return await dx.search(
                [{"parameter": "JobGroup", "operator": "eq", "value": cluster}],
                ["JobID", "Status", "JobName", "JobGroup"],
            )

    # (Playwright's sync API runs an event loop in this thread)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(search())).result(timeout=60)


def run_cell(page, code: str, marker: str, timeout: float = 180) -> str:
    """Type ``code`` into the notebook's last cell, run it, and return the output
    text once ``marker`` shows on the page (fail at once on a traceback)."""
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    cell = cells.nth(cells.count() - 1)
    cell.locator(".cm-content").click()
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")
    # A kernel that shows idle may still be connecting its channels, and then the
    # execute request is lost ("[ ]" stays): run the cell again.
    for _ in range(3):
        try:
            expect(cell.locator(".jp-InputPrompt")).to_have_text(
                re.compile(r"\[(\*|\d+)\]"), timeout=10_000
            )
            break
        except AssertionError:
            cell.locator(".cm-content").click()
            page.keyboard.press("Control+Enter")
    outputs = cell.locator(".jp-OutputArea-output")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = "\n".join(outputs.all_inner_texts())
        if marker in text:
            return text
        if "Traceback" in text or "Error" in text:
            shot(page, "cell-error")
            raise AssertionError(f"the cell failed:\n{text[-3000:]}")
        time.sleep(1)
    shot(page, "cell-timeout")
    raise TimeoutError(f"no {marker!r} on the page after {timeout} s")


def opened_by(context, link, url: str):
    """The page a click on ``link`` opens, loaded; it must be at ``url``."""
    with context.expect_page() as opened:
        link.click()
    page = opened.value
    page.wait_for_load_state()
    assert page.url == url, page.url
    return page


def test_iam_login_dask_cluster_token_file_and_refusal(
    hub_factory,
    oidc,
    browser,
    hub_dirac_facility,  # noqa: F811 (the imported fixture)
):
    facility = hub_dirac_facility
    oidc.set_user("alice", {"preferred_username": "alice", "groups": ["atlas"]})
    oidc.set_user("mallory", {"preferred_username": "mallory", "groups": ["cms"]})
    hub = hub_factory(
        {
            "GRIDHUB_FACILITY_NAME": FACILITY,
            "GRIDHUB_IAM_ISSUER": oidc.url,
            "GRIDHUB_IAM_CLIENT_ID": "gridhub-test",
            "GRIDHUB_IAM_CLIENT_SECRET": "gridhub-test-secret",
            "GRIDHUB_IAM_ALLOWED_GROUPS": "atlas",
            "GRIDHUB_IAM_ADMIN_GROUPS": "atlas-admins",
            "GRIDHUB_TOKEN_REFRESH_AGE": "2",
            "GRIDHUB_TOKEN_FILE_INTERVAL": "3",
            "GRIDHUB_CULL_IDLE_TIMEOUT": "0",
            # the gateway trusts this hub; the hub stops a user's clusters with the server
            **facility.hub_env(),
        },
        name="iam",
    )
    (hub.extra / "60-test-facility.py").write_text(facility.hub_config())
    hub.start()

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    page = context.new_page()
    loopback_only(page)
    t0 = time.monotonic()
    page.goto(hub.public_url + "/hub/login")
    shot(page, "1-login")
    iam_login(page, hub, "alice")
    page.wait_for_url("**/user/alice/lab**", timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=120_000)
    page.wait_for_selector(".jp-LauncherCard", timeout=60_000)
    print(f"IAM login to JupyterLab: {time.monotonic() - t0:.1f}s")
    shot(page, "2-jupyterlab")
    # the Dask sidebar (dask-labextension) is there, with its NEW button
    page.locator('[data-id="dask-dashboard-launcher"]').first.click()
    new = page.get_by_role("button", name="NEW", exact=True)
    new.wait_for(timeout=30_000)
    shot(page, "3-dask-sidebar")

    model = hub.user_model("alice")
    assert "atlas" in model["groups"] and not model["admin"]

    # NEW: the labextension's factory (dask_gateway.GatewayCluster) asks the gateway,
    # through the hub's Traefik, with the server's JupyterHub token
    t1 = time.monotonic()
    new.click()
    card = page.locator(".dask-ClusterListingItem").first
    card.wait_for(timeout=120_000)
    address = card.locator(".dask-ClusterListingItem-link").first.get_attribute("title")
    assert address.startswith(facility.proxy_address + "/"), address
    cluster = address.rsplit("/", 1)[-1]
    print(f"NEW to cluster {cluster}: {time.monotonic() - t1:.1f}s")
    shot(page, "4-cluster")
    # SCALE to one worker: a DIRAC job the local site runs, which joins the cluster
    card.locator(".dask-ClusterListingItem-scale").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input.dask-ScalingInput").first.fill("1")
    dialog.locator("button.jp-mod-accept").click()
    expect(card).to_contain_text("Number of Workers: 1", timeout=WORKER_TIMEOUT)
    print(f"SCALE to one worker: {time.monotonic() - t1:.1f}s")
    shot(page, "5-worker")
    jobs = dirac_jobs(facility, cluster)
    running = [j for j in jobs if j["Status"] == "Running"]
    assert len(running) == 1 and "alice" in running[0]["JobName"], jobs

    # a notebook cell computes on that cluster (the kernel has the server's token)
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=120_000)
    text = run_cell(
        page,
        "import dask.array as da\n"
        "from dask_gateway import Gateway\n"
        f"client = Gateway().connect({cluster!r}).get_client()\n"
        "total = int(da.arange(1, 1001, chunks=100).sum().compute())\n"
        "print(f\"SUM={total} WORKERS={len(client.scheduler_info()['workers'])}\")\n",
        "SUM=",
    )
    assert "SUM=500500 WORKERS=1" in text, text
    shot(page, "6-result")

    # the cluster's dashboard, through the hub's URL and Traefik. The card's link is
    # relative to the page (it opens under whatever name the browser used) and opens
    # Dask's status page ...
    prefix = f"/services/dask-gateway/clusters/{cluster}/"
    anchor = card.locator(".dask-ClusterListingItem-link a")
    assert anchor.get_attribute("href") == prefix + "status"
    status = opened_by(context, anchor, hub.public_url + prefix + "status")
    status.locator(".bk-Canvas, canvas").first.wait_for(timeout=120_000)
    shot(status, "7-dashboard-link")
    status.close()
    # ... and so does the link a notebook shows (cluster.dashboard_link in Markdown, as
    # the getting-started notebook does): JupyterLab opens it against the page
    run_cell(
        page,
        "from IPython.display import Markdown\n"
        f"shown = Gateway().connect({cluster!r})\n"
        "Markdown(f'[dashboard of {shown.name}]({shown.dashboard_link})')\n",
        "dashboard of",
    )
    shown = page.locator(".jp-RenderedMarkdown a", has_text="dashboard of").last
    assert shown.get_attribute("href") == prefix + "status"
    opened_by(context, shown, hub.public_url + prefix + "status").close()
    # ... and, while a computation runs, a click on the card brings up its panes: the
    # labextension asks this server's dask/dashboard/<id>/, which gridhub.hub.sidebar
    # sends on to the dashboard's path (dask-labextension's own proxy keeps only host
    # and port of the link and misses it: "Dashboard not connected").
    run_cell(
        page,
        "import time\n"
        "def slow(i):\n"
        "    time.sleep(1)\n"
        "    return i\n"
        "running = client.map(slow, range(60))\n"
        "print('STARTED')\n",
        "STARTED",
    )
    card.locator(".dask-ClusterListingItem-title").click()
    plot = page.locator('.dask-DashboardListing-item button[value="Task Stream"]')
    expect(plot).to_be_enabled(timeout=60_000)
    assert "dask/dashboard/" in page.locator(".dask-URLInput input").input_value()
    plot.click()
    frame = page.locator(".jp-MainAreaWidget iframe").last
    frame.wait_for(timeout=30_000)
    pane = frame.element_handle().content_frame()
    pane.locator(".bk-Canvas, canvas").first.wait_for(timeout=120_000)
    # the pane is this cluster's Task Stream, straight from its dashboard, with tasks in it
    assert pane.url == hub.public_url + prefix + "individual-task-stream", pane.url
    pane.wait_for_function(TASKS_SHOWN, timeout=60_000)
    shot(page, "8-dashboard-tab")
    # closing the pane brings the notebook back (as the compose e2e does before its
    # next cells)
    page.locator(".lm-TabBar-tab", has_text="Task Stream").locator(
        ".lm-TabBar-tabCloseIcon"
    ).click()
    page.locator(".jp-Notebook .jp-Cell .cm-content").last.wait_for(state="visible")

    # the access token reaches the server as a private file ...
    token_file = hub.home("alice") / ".gridhub" / "bearer_token"
    wait_for(token_file.exists, 60, what="BEARER_TOKEN_FILE")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    # (the mock revokes an access token when it is refreshed; IAM lets it expire.
    # So: the file's *current* token is valid.)
    first = wait_for(
        lambda: oidc.userinfo_ok(t := token_file.read_text().strip()) and t,
        15,
        what="a valid token in BEARER_TOKEN_FILE",
    )

    # ... and is replaced before it expires, while the server runs.
    # (oidc-provider-mock gives only authorization-code tokens the short lifetime; a
    # refreshed token lives an hour, so one refresh is what this test can observe.
    # The Dask steps above may have outlasted the first token already.)
    def auth_state():
        with hub.admin() as admin:
            return admin.get("/users/alice").json()["auth_state"]

    t1 = time.monotonic()
    if auth_state()["lifetime"] == TOKEN_LIFETIME:  # still the token from the login
        wait_for(
            lambda: token_file.read_text().strip() != first,
            2 * TOKEN_LIFETIME,
            interval=1,
            what="a refreshed token in BEARER_TOKEN_FILE",
        )
        print(f"token file refreshed after {time.monotonic() - t1:.1f}s")
    second = wait_for(
        lambda: oidc.userinfo_ok(t := token_file.read_text().strip()) and t,
        15,
        what="a valid refreshed token",
    )
    state = auth_state()
    assert state["lifetime"] != TOKEN_LIFETIME and state["access_token"] == second
    assert "Refreshing the IAM access token of alice" in hub.log()

    # no token in logs or any process's argv or environment
    log = hub.log()
    for token in {first, second}:
        assert token not in log
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    assert token.encode() not in (proc / "cmdline").read_bytes()
                    assert token.encode() not in (proc / "environ").read_bytes()
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    pass

    # the token service only answers authenticated users
    port = hub.env["GRIDHUB_TOKEN_SERVICE_PORT"]
    svc = f"http://127.0.0.1:{port}/services/gridhub-tokens/token"
    assert httpx.get(svc, timeout=10).status_code == 401
    assert httpx.get(svc, headers={"Authorization": "token nope"}, timeout=10).status_code == 403
    # ... and only tokens holding its scope (alice's server token has it: the token
    # file above was filled through it); another token of alice does not
    with hub.admin() as admin:
        r = admin.post(
            "/users/alice/tokens",
            json={"scopes": ["read:users:activity!user=alice"], "note": "a script's token"},
        )
        r.raise_for_status()
        narrow = r.json()["token"]
    r = httpx.get(svc, headers={"Authorization": f"token {narrow}"}, timeout=10)
    assert r.status_code == 403, r.status_code
    assert second not in r.text

    # a user outside the allowed groups gets a clear refusal page
    other = browser.new_context().new_page()
    loopback_only(other)
    iam_login(other, hub, "mallory")
    other.wait_for_selector("#gridhub-forbidden", timeout=60_000)
    text = other.content()
    assert f"not allowed to use {FACILITY}" in text and "atlas" in text
    shot(other, "9-refused")
    assert httpx.get(f"{hub.api}/users/mallory", headers={"Authorization": "token x"}).status_code

    # the server stops (as the idle-culler stops it: the hub API): the hub stops
    # alice's cluster, so every DIRAC job of it ends; nothing is left running
    context.close()
    t1 = time.monotonic()
    with hub.admin() as admin:
        assert admin.delete("/users/alice/server").status_code in (202, 204)
    wait_for(lambda: not hub.user_model("alice")["servers"], 60, what="alice's server to stop")
    assert f"Stopped the Dask clusters of alice: {cluster}" in hub.log()
    final = wait_for(
        lambda: (
            (js := dirac_jobs(facility, cluster))
            and all(j["Status"] in FINAL_STATES for j in js)
            and js
        ),
        120,
        interval=1,
        what=f"every DIRAC job of {cluster} in a final state",
    )
    print(f"server stop to all {len(final)} jobs final: {time.monotonic() - t1:.1f}s")
    assert {j["Status"] for j in final} <= {"Killed", "Done"}, final
