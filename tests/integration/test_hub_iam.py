"""IAM mode in a real browser: oidc-provider-mock stands in for INDIGO IAM.

Chromium (Debian's) driven by Playwright logs in through the provider's form, lands in
JupyterLab; the server's BEARER_TOKEN_FILE holds a valid access token that is replaced
before it expires; a user outside the allowed groups gets the refusal page.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

try:
    from .hub_fixtures import *  # noqa: F403
    from .hub_fixtures import SCREENSHOTS, OIDCMock, wait_for
except ImportError:
    from hub_fixtures import *  # noqa: F403
    from hub_fixtures import SCREENSHOTS, OIDCMock, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN_LIFETIME = 45  # refreshed when half is left
FACILITY = "IAM Test Facility"


@pytest.fixture
def oidc():
    mock = OIDCMock(token_max_age=TOKEN_LIFETIME)
    yield mock
    mock.stop()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


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


def test_iam_login_token_file_and_refusal(hub_factory, oidc, browser):
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
        },
        name="iam",
    ).start()

    context = browser.new_context(viewport={"width": 1280, "height": 800})
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
    page.get_by_role("button", name="NEW", exact=True).wait_for(timeout=30_000)
    shot(page, "3-dask-sidebar")

    model = hub.user_model("alice")
    assert "atlas" in model["groups"] and not model["admin"]

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
    # refreshed token lives an hour, so one refresh is what this test can observe.)
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
    third = second

    # no token in logs or any process's argv or environment
    log = hub.log()
    for token in (first, second, third):
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

    # a user outside the allowed groups gets a clear refusal page
    other = browser.new_context().new_page()
    loopback_only(other)
    iam_login(other, hub, "mallory")
    other.wait_for_selector("#gridhub-forbidden", timeout=60_000)
    text = other.content()
    assert f"not allowed to use {FACILITY}" in text and "atlas" in text
    shot(other, "4-refused")
    assert httpx.get(f"{hub.api}/users/mallory", headers={"Authorization": "token x"}).status_code
    context.close()
