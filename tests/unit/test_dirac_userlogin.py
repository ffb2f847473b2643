"""The user's own DiracX login: group mapping, scope, PKCE, the login token's
errors and the settings that switch it on (gridhub.dirac.userlogin, tokens)."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from gridhub.dirac import DiracXLoginRequired, DiracXTokenExpired, UserLoginToken
from gridhub.dirac.models import TokenResponse
from gridhub.dirac.userlogin import authorize_url, dirac_group, pkce_pair, scope
from gridhub.hub.secrets import load_secrets
from gridhub.hub.settings import SettingsError, load_settings
from hub_build import build, offline_discovery

GROUPS = {"higgs": "cms_higgs", "top": "cms_top", "default": "cms_user"}


@pytest.mark.parametrize(
    ("iam_groups", "expected"),
    [
        (["higgs"], "cms_higgs"),
        (["top", "higgs"], "cms_higgs"),  # the deployer's order decides
        (["atlas"], "cms_user"),
        ([], "cms_user"),
    ],
)
def test_iam_group_maps_to_dirac_group(iam_groups, expected):
    assert dirac_group(iam_groups, GROUPS) == expected


def test_no_default_leaves_the_vo_default_group_to_diracx():
    assert dirac_group(["atlas"], {"higgs": "cms_higgs"}) is None
    assert scope("cms", None) == "vo:cms"
    assert scope("cms", "cms_higgs") == "vo:cms group:cms_higgs"


def test_authorize_url_carries_pkce_s256_and_least_scope():
    verifier, challenge = pkce_pair()
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    url = authorize_url(
        "https://diracx.example/",
        redirect_uri="https://hub.example/hub/dirac-callback",
        scope=scope("cms", "cms_user"),
        state="s1",
        code_challenge=challenge,
    )
    parts = urlsplit(url)
    assert parts.path == "/api/auth/authorize"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q["code_challenge_method"] == "S256" and q["code_challenge"] == challenge
    assert q["scope"] == "vo:cms group:cms_user"
    assert q["client_id"] == "myDIRACClientID" and q["response_type"] == "code"
    assert verifier not in url


async def test_missing_login_is_named_with_where_to_renew(tmp_path):
    token = UserLoginToken(
        "http://127.0.0.1:9",
        tmp_path / "none.json",
        who="alice",
        login_url="https://hub.example/hub/dirac-login",
    )
    with pytest.raises(DiracXLoginRequired, match="DIRAC login of alice is missing") as err:
        await token.access_token()
    assert "https://hub.example/hub/dirac-login" in str(err.value)


class RecordingLogin(UserLoginToken):
    """DiracX's refresh grant as DiracX 0.7 answers it: "old" is revoked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.presented: list[str] = []

    async def _refresh_grant(self, refresh_token):
        self.presented.append(refresh_token)
        if refresh_token == "old":  # noqa: S105 (a test token)
            raise DiracXTokenExpired("cannot renew the token (401): Revoked", self.url)
        return TokenResponse(access_token="a2", refresh_token="new2", expires_in=600)  # noqa: S106


async def test_a_refused_refresh_token_is_never_presented_again(tmp_path):
    """DiracX revokes every token of a user when a refused one comes back, a
    login made meanwhile included (seen: a renewed login killed by the
    gateway's retries with the old token)."""
    path = tmp_path / "alice.json"
    path.write_text(json.dumps({"access_token": "a", "refresh_token": "old", "expires_on": 0}))
    token = RecordingLogin("http://127.0.0.1:9", path, who="alice")
    for _ in range(3):
        with pytest.raises(DiracXLoginRequired, match="expired or was revoked"):
            await token.access_token()
    assert token.presented == ["old"]
    # a new login written to the file (the hub's hand-over) is taken
    path.write_text(json.dumps({"access_token": "b", "refresh_token": "new", "expires_on": 0}))
    assert await token.access_token() == "a2"
    assert token.presented == ["old", "new"]


async def test_revoke_deletes_the_file_even_when_diracx_is_away(tmp_path):
    path = tmp_path / "alice.json"
    path.write_text(json.dumps({"access_token": "a", "refresh_token": "r", "expires_on": 0}))
    token = UserLoginToken("http://127.0.0.1:9", path, who="alice", timeout=1)
    await token.revoke()
    assert not path.exists()


def test_external_diracx_without_robot_needs_iam_and_vo():
    with pytest.raises(SettingsError, match="diracx_vo"):
        load_settings({"GRIDHUB_DIRACX_URL": "https://diracx.example"})
    s = load_settings(
        {
            "GRIDHUB_DIRACX_URL": "https://diracx.example",
            "GRIDHUB_IAM_ISSUER": "https://iam.example",
            "GRIDHUB_IAM_CLIENT_ID": "hub",
            "GRIDHUB_DIRACX_VO": "cms",
            "GRIDHUB_DIRACX_GROUPS": '{"higgs": "cms_higgs"}',
        }
    )
    assert s.diracx_user_logins and s.diracx_groups == {"higgs": "cms_higgs"}
    robot = load_settings(
        {"GRIDHUB_DIRACX_URL": "https://diracx.example", "GRIDHUB_DIRACX_TOKEN_FILE": "/r.json"}
    )
    assert not robot.diracx_user_logins


# -- the gateway's hand-over route (gridhub.gateway.diraclogins) ----------


def _request(method: str, user: str, token: str | None, body: object = None):
    from aiohttp.test_utils import make_mocked_request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = make_mocked_request(method, f"/api/v1/dirac-logins/{user}", headers=headers)
    req.match_info.update({"user": user})

    async def read_json():
        return body

    req.json = read_json  # type: ignore[method-assign]
    return req


async def test_handover_stores_0600_only_for_the_hub_and_keeps_it_while_clusters_live(tmp_path):
    import stat

    from gridhub.gateway.diraclogins import DiracLogins

    logins = DiracLogins(tmp_path / "logins", "http://127.0.0.1:9")
    live: set[str] = set()
    forgotten: list[str] = []

    async def forget(user: str) -> None:
        forgotten.append(user)

    handle = logins.handler("hub-secret", lambda u: u in live, forget)
    good = {"access_token": "A", "refresh_token": "R", "expires_in": 1200}

    assert (await handle(_request("PUT", "alice", None, good))).status == 403
    assert (await handle(_request("PUT", "alice", "wrong", good))).status == 403
    assert (await handle(_request("PUT", "alice", "hub-secret", {"x": 1}))).status == 422
    no_refresh = {"access_token": "A", "expires_in": 1200}
    assert (await handle(_request("PUT", "alice", "hub-secret", no_refresh))).status == 422
    assert not logins.path("alice").exists()

    assert (await handle(_request("PUT", "alice", "hub-secret", good))).status == 200
    path = logins.path("alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["refresh_token"] == good["refresh_token"]

    live.add("alice")  # logout while a cluster lives: kept, its jobs stay killable
    assert (await handle(_request("DELETE", "alice", "hub-secret"))).status == 202
    assert path.exists() and not forgotten
    live.clear()
    assert (await handle(_request("DELETE", "alice", "hub-secret"))).status == 200
    assert not path.exists() and forgotten == ["alice"]


# -- the hub's config: the DiracX login only without a robot ---------------


def _iam_build(env, tmp_path, monkeypatch):
    offline_discovery(monkeypatch)
    env = {
        "GRIDHUB_STATE_DIR": str(tmp_path / "state"),
        "GRIDHUB_IAM_ISSUER": "https://iam.example.org",
        "GRIDHUB_IAM_CLIENT_ID": "gridhub",
        "GRIDHUB_PUBLIC_URL": "https://hub.example.org",
        "GRIDHUB_GATEWAY_URL": "http://gateway:8000",
        "GRIDHUB_DIRACX_URL": "https://diracx.example.org",
        **env,
    }
    return build(env, tmp_path, config_dir=tmp_path), load_secrets(load_settings(env))


def test_hub_runs_the_diracx_login_without_a_robot(tmp_path, monkeypatch):
    c, secrets = _iam_build(
        {"GRIDHUB_DIRACX_VO": "cms", "GRIDHUB_DIRACX_GROUPS": '{"default": "cms_user"}'},
        tmp_path,
        monkeypatch,
    )
    a = c.IAMAuthenticator
    assert a.diracx_url == "https://diracx.example.org"
    assert a.diracx_vo == "cms" and a.diracx_groups == {"default": "cms_user"}
    assert a.diracx_redirect_uri == "https://hub.example.org/hub/dirac-callback"
    assert a.diracx_handoff_url == "http://gateway:8000/api/v1/dirac-logins"
    assert a.diracx_handoff_token == secrets.gateway_api_token


def test_robot_is_the_deployers_explicit_choice(tmp_path, monkeypatch):
    c, _ = _iam_build({"GRIDHUB_DIRACX_TOKEN_FILE": "/srv/robot.json"}, tmp_path, monkeypatch)
    assert "diracx_url" not in c.IAMAuthenticator
