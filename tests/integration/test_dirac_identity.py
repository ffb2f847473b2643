"""Production identity: each user's jobs under the user's own DiracX login.

Real parts: DiracX 0.7 (the embedded server, its CS naming an identity
provider as a production DiracX names IAM), JupyterHub in IAM mode,
dask-gateway-server with the DIRAC backend, Traefik. Stand-in: IAM
(oidc-provider-mock, the hub's and DiracX's identity provider both).

A "browser" (httpx following redirects, submitting the provider's form when
it shows it: the mock has no session, real IAM passes straight through) logs
in at the hub: the hub's IAM login goes on through DiracX's
authorization-code flow (DiracX -> the same IdP -> DiracX -> the hub), and the
gateway receives the user's DiracX tokens. Then, with no robot and no
legacy exchange anywhere:

* each user's jobs are owned by their own DIRAC user, in the DIRAC group
  their IAM group maps to;
* one user's DiracX token neither sees nor kills the other's jobs;
* the login file is 0600 in a 0700 directory, and no token is in a log;
* the login ends (file gone, refresh token revoked) with the last cluster;
* a revoked login, or none, makes cluster creation fail at once with a
  message naming the DIRAC login and where to renew it;
* logout drops and revokes the login;
* an IAM group mapped to a DIRAC group DiracX does not give the user ends
  the login with DiracX's reason (403).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import stat
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from dask_gateway import Gateway, JupyterHubAuth
from gateway_fixtures import HUB_SERVICE, HubLink
from gridhub.dirac import FINAL_STATES, DiracXClient, DiracXForbidden
from hub_fixtures import ARTIFACTS, OIDCMock, _stop
from processes import EmbeddedDiracX, free_port, wait_for
from stack import Stack, configure_diracx_idp

METRICS_TOKEN = secrets.token_hex(16)
VO_GROUPS = {"higgs": "gridhub_higgs", "default": "gridhub_analysis"}
USERS = {
    # IdP subject: (hub name = DIRAC name, IAM groups, DIRAC groups in the CS)
    "alice-sub": ("alice", ["atlas"], ["gridhub_analysis"]),
    "bob-sub": ("bob", ["atlas", "higgs"], ["gridhub_analysis", "gridhub_higgs"]),
}
# in IAM group higgs, but not in DIRAC group gridhub_higgs in DiracX's registry
CAROL = ("carol-sub", ("carol", ["higgs"], ["gridhub_analysis"]))


class NoSite:
    """No grid site: the jobs stay queued in DiracX, which is all ownership needs."""

    def log(self) -> str:
        return ""


class IdentityStack(Stack):
    """The stack with an external-DiracX gateway: users' own DiracX logins,
    users authenticated by the hub (JupyterHub tokens)."""

    def __init__(self, work: Path, diracx: EmbeddedDiracX) -> None:
        self.link = HubLink(f"http://127.0.0.1:{free_port()}", secrets.token_hex(32))
        super().__init__(work, diracx, NoSite())

    def config(self, **overrides: object) -> str:
        return super().config(
            **{
                "DiracBackend__diracx_embedded_state_dir": "",  # not the embedded path
                "DiracBackend__diracx_user_logins": True,
                "DiracBackend__diracx_login_handoff_token": self.link.api_token,
                "DiracBackend__diracx_login_url": f"{self.hub_url}/hub/dirac-login",
                "DaskGateway__authenticator_class": (
                    "dask_gateway_server.auth.JupyterHubAuthenticator"
                ),
                "JupyterHubAuthenticator__jupyterhub_api_url": self.link.api_url,
                "JupyterHubAuthenticator__jupyterhub_api_token": self.link.api_token,
                "JupyterHubAuthenticator__jupyterhub_service_name": HUB_SERVICE,
                "DiracBackend__stop_clusters_on_shutdown": True,
                "DiracBackend__metrics_token": METRICS_TOKEN,
                **overrides,
            }
        )

    def logins_dir(self) -> Path:
        return self.work / "gateway-state" / "dirac-logins"

    def login_file(self, user: str) -> Path:
        import hashlib

        return self.logins_dir() / (hashlib.sha256(user.encode()).hexdigest()[:40] + ".json")

    def gateway_for(self, token: str) -> Gateway:
        return Gateway(
            address=self.public_url,
            proxy_address=self.proxy_address,
            auth=JupyterHubAuth(api_token=token),
        )


class PublicClientsOIDCMock(OIDCMock):
    """OIDCMock run by oidc_public_mock.py: DiracX redeems codes as a public client."""

    def __init__(self) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / "logs" / f"oidc-mock-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("oidc_public_mock.py")),
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: httpx.get(self.url + "/.well-known/openid-configuration", timeout=5).is_success,
            30,
            what="oidc-provider-mock",
        )

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture(scope="module")
def oidc():
    mock = PublicClientsOIDCMock()
    yield mock
    mock.stop()


@pytest.fixture(scope="module")
def ident(tmp_path_factory, oidc):
    for sub, (name, groups, _) in [*USERS.items(), CAROL]:
        oidc.set_user(sub, {"preferred_username": name, "groups": groups})
    work = tmp_path_factory.mktemp("identity")
    diracx = EmbeddedDiracX(work / "diracx" / "state")
    # DiracX's own client at the IdP: public, PKCE, no secret (as at IAM)
    r = httpx.post(
        f"{oidc.url}/oauth2/clients",
        json={
            "redirect_uris": [f"{diracx.url}/api/auth/authorize/complete"],
            "token_endpoint_auth_method": "none",
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    configure_diracx_idp(
        diracx.state_dir,
        oidc.url,
        r.json()["client_id"],
        {sub: (name, dirac_groups) for sub, (name, _, dirac_groups) in [*USERS.items(), CAROL]},
    )
    stack = IdentityStack(work, diracx)
    try:
        # the hub's callback, as a DiracX deployment lists it
        # (DIRACX_SERVICE_AUTH_ALLOWED_REDIRECTS)
        diracx._proc.argv += ["--allowed-redirect", f"{stack.hub_url}/hub/dirac-callback"]
        # access tokens of 1 minute: the gateway refreshes users' logins
        # every ~30 s while their clusters live (DiracX's default: 20 min)
        diracx._proc.env["DIRACX_SERVICE_AUTH_ACCESS_TOKEN_EXPIRE_MINUTES"] = "1"  # noqa: S105
        diracx.start()
        stack.start_hub(
            work / "hub",
            {
                "GRIDHUB_IAM_ISSUER": oidc.url,
                "GRIDHUB_IAM_CLIENT_ID": "gridhub-test",
                "GRIDHUB_IAM_CLIENT_SECRET": "gridhub-test-secret",
                "GRIDHUB_CULL_IDLE_TIMEOUT": "0",
                "GRIDHUB_HUB_BIND_URL": stack.link.bind_url,
                "GRIDHUB_GATEWAY_API_TOKEN": stack.link.api_token,
                "GRIDHUB_DIRACX_URL": diracx.url,
                "GRIDHUB_DIRACX_VO": "gridhub",
                "GRIDHUB_DIRACX_GROUPS": json.dumps(VO_GROUPS),
            },
        )
        yield stack
    finally:
        try:
            stack.stop()
        finally:
            diracx.stop()


def browse(client: httpx.Client, url: str, sub: str) -> tuple[httpx.Response, list[str]]:
    """Follow redirects as a browser does; on the IdP's form, sign in as
    ``sub``. Returns the last answer and every URL visited (no query)."""
    visited: list[str] = []
    r = client.get(url)
    for _ in range(40):
        where = str(r.url)
        visited.append(where.split("?")[0])
        if r.is_redirect:
            r = client.get(urljoin(where, r.headers["location"]))
        elif r.status_code == 200 and "/oauth2/authorize" in where and 'name="sub"' in r.text:
            r = client.post(where, data={"sub": sub})
        else:
            return r, visited
    raise AssertionError(f"more than 40 steps: {visited}")


def log_in(
    stack: IdentityStack,
    sub: str,
    path: str = "/hub/oauth_login",
    client: httpx.Client | None = None,
) -> httpx.Client:
    """Log in at the hub (``path`` /hub/dirac-login with a logged-in
    ``client``: renew the DiracX login only) and check the DiracX login ran."""
    client = client or httpx.Client(timeout=60, follow_redirects=False)
    r, visited = browse(client, f"{stack.hub_url}{path}?next=/hub/home", sub)
    assert r.status_code == 200 and urlsplit(str(r.url)).path == "/hub/home", (
        f"{r.status_code} at the end of:\n" + "\n".join(visited) + f"\n{r.text[-1500:]}\n"
        f"--- hub ---\n{stack.jupyterhub.log()[-3000:]}\n--- diracx ---\n"
        f"{stack.diracx.log()[-3000:]}"
    )
    diracx = stack.diracx.url
    # the DiracX login ran inside the hub's (chained), through the same IdP
    assert f"{diracx}/api/auth/authorize" in visited, visited
    assert f"{diracx}/api/auth/authorize/complete" in visited, visited
    assert f"{stack.hub_url}/hub/dirac-callback" in visited, visited
    return client


def hub_token(stack: IdentityStack, user: str) -> str:
    with stack.jupyterhub.admin() as admin:
        r = admin.post(f"/users/{user}/tokens", json={"note": "identity test", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return r.json()["token"]


class Static:
    """A token source that only reads a user's access token (no refresh:
    refreshing would rotate the gateway's refresh token under it)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def access_token(self) -> str:
        return self.token

    async def refresh(self) -> str:
        return self.token


def run(coro):
    return asyncio.run(coro)


async def search_as(url: str, token: str, cluster: str) -> list[dict]:
    async with DiracXClient(url, Static(token)) as dx:
        return await dx.search(
            [{"parameter": "JobGroup", "operator": "eq", "value": cluster}],
            ["JobID", "Owner", "OwnerGroup", "Status"],
        )


def all_jobs(stack: IdentityStack, cluster: str) -> list[dict]:
    """Every job of a cluster, as DiracX's job administrator (the facility
    identity of this test's DiracX, used by the test only) sees them."""

    async def go():
        async with stack.diracx.client() as dx:
            return await dx.search(
                [{"parameter": "JobGroup", "operator": "eq", "value": cluster}],
                ["JobID", "Owner", "OwnerGroup", "Status"],
            )

    return run(go())


def tokens_in(path: Path) -> dict:
    return json.loads(path.read_text())


def refresh_status(stack: IdentityStack, refresh: str) -> int:
    """The HTTP status of DiracX's answer when ``refresh`` is presented."""
    r = httpx.post(
        f"{stack.diracx.url}/api/auth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "myDIRACClientID",
            "refresh_token": refresh,
        },
        timeout=30,
    )
    return r.status_code


def test_each_users_jobs_are_their_own_in_their_groups_dirac_group(ident):
    stack = ident
    clients = {name: log_in(stack, sub) for sub, (name, _, _) in USERS.items()}
    for c in clients.values():
        c.close()
    seen_tokens: list[str] = []
    for name in clients:
        f = stack.login_file(name)
        assert f.exists(), f"the gateway holds no DiracX login of {name}"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        seen_tokens += [tokens_in(f)["access_token"], tokens_in(f)["refresh_token"]]
    assert stat.S_IMODE(stack.logins_dir().stat().st_mode) == 0o700

    gateways = {name: stack.gateway_for(hub_token(stack, name)) for name in clients}
    clusters = {}
    try:
        for name, n in (("alice", 2), ("bob", 1)):
            cluster = gateways[name].new_cluster()
            cluster.scale(n)
            clusters[name] = cluster
        jobs = {
            name: wait_for(
                lambda c=c, n=n: len(js := all_jobs(stack, c.name)) == n and js,
                120,
                f"{name}'s jobs in DiracX",
                stack.gateway.logfile,
                retry=(),
            )
            for (name, c), n in zip(clusters.items(), (2, 1), strict=True)
        }
        owners = {name: {(j["Owner"], j["OwnerGroup"]) for j in js} for name, js in jobs.items()}
        assert owners == {
            "alice": {("alice", "gridhub_analysis")},
            "bob": {("bob", "gridhub_higgs")},  # bob is in IAM group higgs
        }

        # alice's own DiracX token (the gateway's, read only) sees her jobs, not bob's
        alice_access = tokens_in(stack.login_file("alice"))["access_token"]
        seen_tokens += [alice_access, tokens_in(stack.login_file("alice"))["refresh_token"]]
        url = stack.diracx.url
        mine = run(search_as(url, alice_access, clusters["alice"].name))
        assert {j["JobID"] for j in mine} == {j["JobID"] for j in jobs["alice"]}
        assert run(search_as(url, alice_access, clusters["bob"].name)) == []

        async def kill_bobs():
            async with DiracXClient(url, Static(alice_access)) as dx:
                await dx.kill([int(j["JobID"]) for j in jobs["bob"]])

        with pytest.raises(DiracXForbidden):
            run(kill_bobs())
        assert all(j["Status"] not in FINAL_STATES for j in all_jobs(stack, clusters["bob"].name))

        # the gateway's usage route reads DIRAC with the caller's own login
        from gridhub.accounting import fetch_usage

        usage = fetch_usage(gateways["alice"])
        assert usage["user"] == "alice"
        assert {j["job_id"] for j in usage["jobs"]} == {int(j["JobID"]) for j in jobs["alice"]}

        # ... and the metrics each user's jobs with that user's login
        r = httpx.get(
            f"{stack.public_url}/api/v1/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            verify=str(stack.cert),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        lines = r.text.splitlines()
        assert "gridhub_gateway_dirac_up 1" in lines, r.text
        counted = [
            float(x.rsplit(" ", 1)[1])
            for x in lines
            if x.startswith("gridhub_gateway_worker_jobs{")
        ]
        assert sum(counted) == 3, r.text

        refresh_before_stop = tokens_in(stack.login_file("alice"))["refresh_token"]
    finally:
        for cluster in clusters.values():
            cluster.shutdown()
        for g in gateways.values():
            g.close()

    # every job ended with its cluster, killed with its owner's token
    for name, cluster in clusters.items():
        wait_for(
            lambda c=cluster: all(j["Status"] in FINAL_STATES for j in all_jobs(stack, c.name)),
            60,
            f"{name}'s jobs final",
            stack.gateway.logfile,
            retry=(),
        )
        # the login ends with the user's last cluster: file gone
        wait_for(
            lambda n=name: not stack.login_file(n).exists(),
            30,
            f"{name}'s DiracX login dropped",
            stack.gateway.logfile,
        )
    # ... and revoked at DiracX
    assert refresh_status(stack, refresh_before_stop) in (400, 401)

    # no token in any log of the run
    logs = [
        stack.gateway.logfile,
        stack.jupyterhub.log_path,
        stack.traefik.logfile,
        stack.diracx.state_dir.parent / f"{stack.diracx.state_dir.name}-diracx.log",
        *ARTIFACTS.joinpath("logs").glob("oidc-mock-*.log"),
    ]
    for log in logs:
        text = Path(log).read_text(errors="replace")
        for tok in seen_tokens:
            assert tok not in text, f"a DiracX token is in {log}"


def test_revoked_or_missing_login_is_named_at_cluster_creation(ident):
    stack = ident
    # bob has no DiracX login now (it ended with his last cluster)
    with stack.gateway_for(hub_token(stack, "bob")) as g:
        with pytest.raises(Exception, match=r"DIRAC login of bob is missing") as err:
            g.new_cluster()
        assert "/hub/dirac-login" in str(err.value)

    # alice logs in again, follows the link the message gives (renewing her
    # DiracX login alone), then DiracX revokes it
    browser = log_in(stack, "alice-sub")
    try:
        log_in(stack, "alice-sub", path="/hub/dirac-login", client=browser)
    finally:
        browser.close()
    refresh = tokens_in(stack.login_file("alice"))["refresh_token"]
    r = httpx.post(
        f"{stack.diracx.url}/api/auth/revoke",
        data={"token": refresh, "client_id": "myDIRACClientID"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    token = hub_token(stack, "alice")
    with stack.gateway_for(token) as g:
        with pytest.raises(Exception, match=r"DIRAC login of alice has expired or was revoked"):
            g.new_cluster()
    # nothing was created (asked over plain HTTP: a second call of the dask
    # client after a refusal once hung in its event loop thread)
    r = httpx.get(
        f"{stack.public_url}/api/v1/clusters/",
        headers={"Authorization": f"jupyterhub {token}"},
        verify=str(stack.cert),
        timeout=30,
    )
    assert r.status_code == 200 and r.json() == {}, r.text


def test_logout_drops_and_revokes_the_login(ident):
    stack = ident
    client = log_in(stack, "bob-sub")
    refresh = tokens_in(stack.login_file("bob"))["refresh_token"]
    r = client.get(f"{stack.hub_url}/hub/logout")
    client.close()
    assert r.status_code in (200, 302, 303), r.status_code
    assert not stack.login_file("bob").exists()
    assert refresh_status(stack, refresh) in (400, 401)


def test_a_group_diracx_does_not_give_the_user_is_refused_by_name(ident):
    stack = ident
    with httpx.Client(timeout=60, follow_redirects=False) as browser:
        r, visited = browse(browser, f"{stack.hub_url}/hub/oauth_login?next=/hub/home", CAROL[0])
    assert visited[-1] == f"{stack.hub_url}/hub/dirac-callback", visited
    assert r.status_code == 403, r.status_code
    assert "DIRAC refused your login" in r.text
    assert "User is not a member of the requested group (carol, gridhub_higgs)" in r.text
    assert not stack.login_file("carol").exists()


def end_diracx_session(stack: IdentityStack, user: str) -> None:
    """DiracX ends the user's session: their refresh token revoked, then
    presented again, so DiracX revokes every refresh token of the user
    (whichever the gateway holds by now)."""
    refresh = tokens_in(stack.login_file(user))["refresh_token"]
    httpx.post(
        f"{stack.diracx.url}/api/auth/revoke",
        data={"token": refresh, "client_id": "myDIRACClientID"},
        timeout=30,
    ).raise_for_status()
    assert refresh_status(stack, refresh) == 401


def test_a_running_cluster_is_kept_fresh_and_takes_a_renewed_login(ident):
    stack = ident
    browser = log_in(stack, "alice-sub")
    try:
        with stack.gateway_for(hub_token(stack, "alice")) as g:
            cluster = g.new_cluster()
            try:
                cluster.scale(1)
                wait_for(
                    lambda: len(all_jobs(stack, cluster.name)) == 1,
                    120,
                    "alice's first job",
                    stack.gateway.logfile,
                    retry=(),
                )
                # kept fresh: the gateway refreshes (rotates) her login while it lives
                first = tokens_in(stack.login_file("alice"))["refresh_token"]
                wait_for(
                    lambda: tokens_in(stack.login_file("alice"))["refresh_token"] != first,
                    120,
                    "the gateway refreshing alice's DiracX login",
                    stack.gateway.logfile,
                )
                end_diracx_session(stack, "alice")
                # once her access token runs out the gateway's refresh is refused, by name
                wait_for(
                    lambda: (
                        "the DIRAC login of alice has expired or was revoked" in stack.gateway.log()
                    ),
                    150,
                    "the gateway naming alice's ended DiracX login",
                    stack.gateway.logfile,
                )
                # she renews it (the link the message gives); the running cluster takes it
                log_in(stack, "alice-sub", path="/hub/dirac-login", client=browser)
                cluster.scale(2)
                jobs = wait_for(
                    lambda: len(js := all_jobs(stack, cluster.name)) == 2 and js,
                    120,
                    "alice's second job, after the renewal",
                    stack.gateway.logfile,
                    retry=(),
                )
                assert {(j["Owner"], j["OwnerGroup"]) for j in jobs} == {
                    ("alice", "gridhub_analysis")
                }
            finally:
                cluster.shutdown()
        wait_for(
            lambda: all(j["Status"] in FINAL_STATES for j in all_jobs(stack, cluster.name)),
            60,
            "alice's jobs final",
            stack.gateway.logfile,
            retry=(),
        )
    finally:
        browser.close()
