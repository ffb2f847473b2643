"""The user's own DiracX login: group mapping, scope, PKCE, the login token's
errors and the settings that switch it on (gridhub.dirac.userlogin, tokens)."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from gridhub.dirac import DiracXLoginRequired, UserLoginToken
from gridhub.dirac.userlogin import authorize_url, dirac_group, pkce_pair, scope
from gridhub.hub.settings import SettingsError, load_settings

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
