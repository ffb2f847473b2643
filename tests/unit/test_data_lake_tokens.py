"""The data lake's pieces without processes: the hub's storage-token issuer
(gridhub.hub.storagetokens), its place in the hub config, and gridhub.data's
lake URLs with the fallback to the shipped samples."""

from __future__ import annotations

import json
import socket
import stat
import time
from pathlib import Path

import jwt
import pytest
from gridhub import data
from gridhub.hub import storagetokens
from gridhub.hub.settings import SettingsError, load_settings
from hub_build import build
from tornado.testing import AsyncHTTPTestCase

ISSUER = "https://gridhub.example:8443/services/gridhub-storage"
AUDIENCE = "https://gridhub.example:8443/lake"


def _issuer(tmp_path) -> storagetokens.Issuer:
    key = storagetokens.load_or_create_key(tmp_path / "issuer.pem")
    return storagetokens.Issuer(ISSUER, AUDIENCE, key)


def test_key_made_once_private_and_kept(tmp_path):
    first = _issuer(tmp_path)
    mode = stat.S_IMODE((tmp_path / "issuer.pem").stat().st_mode)
    assert mode == 0o600, oct(mode)
    again = _issuer(tmp_path)
    assert again.jwks == first.jwks and again.kid == first.kid
    # the published document holds the public key only
    (jwk,) = first.jwks["keys"]
    assert "d" not in jwk and jwk["kid"] == first.kid and jwk["alg"] == "ES256"


def test_tokens_read_only_expiring_verifiable_with_the_published_key(tmp_path):
    issuer = _issuer(tmp_path)
    token, expires = issuer.token("alice", 600)
    public = jwt.PyJWK(issuer.jwks["keys"][0]).key
    claims = jwt.decode(token, public, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["scope"] == "storage.read:/public storage.read:/protected"  # datasets only
    assert claims["sub"] == "alice" and claims["wlcg.ver"] == "1.0"
    assert claims["exp"] == expires and 590 <= expires - time.time() <= 600
    assert jwt.get_unverified_header(token)["kid"] == issuer.kid
    assert issuer.discovery == {"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"}
    # another issuer's key does not verify it
    other = storagetokens.Issuer(ISSUER, AUDIENCE, storagetokens.load_or_create_key(tmp_path / "o"))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token, jwt.PyJWK(other.jwks["keys"][0]).key, algorithms=["ES256"], audience=AUDIENCE
        )


def test_cache_token_file_private_replaced_whole(tmp_path):
    issuer = _issuer(tmp_path)
    path = tmp_path / "cache-token"
    storagetokens.write_cache_token(issuer, path, every=900)
    first = path.read_text()
    # 0600: the XRootD client (ztn) ignores a token file others may read
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    claims = jwt.decode(first.strip(), options={"verify_signature": False})
    assert claims["sub"] == "xcache" and claims["exp"] - claims["iat"] == 2700
    storagetokens.write_cache_token(issuer, path, every=900)
    assert path.read_text() != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cache-token")] == []


class TestIssuerHTTP(AsyncHTTPTestCase):
    """The public documents answer anyone; the token endpoint wants a hub token."""

    def get_app(self):
        import tempfile

        self.tmp = Path(tempfile.mkdtemp())
        self.issuer = _issuer(self.tmp)
        # the hub API is not reached by the requests here (refused before)
        return storagetokens.make_app(
            "/services/gridhub-storage/", self.issuer, "http://127.0.0.1:9/hub/api", 600
        )

    def test_discovery_and_jwks(self):
        r = self.fetch("/services/gridhub-storage/.well-known/openid-configuration")
        assert r.code == 200 and json.loads(r.body) == self.issuer.discovery
        r = self.fetch("/services/gridhub-storage/jwks")
        assert r.code == 200 and json.loads(r.body) == self.issuer.jwks
        assert r.headers["Cache-Control"] == "no-store"

    def test_token_needs_a_hub_token(self):
        r = self.fetch("/services/gridhub-storage/token", method="POST", body=b"")
        assert r.code == 401
        r = self.fetch(
            "/services/gridhub-storage/token",
            method="POST",
            body=b"",
            headers={"Authorization": "Basic eDp5"},
        )
        assert r.code == 401
        assert b"eyJ" not in r.body  # no token in a refusal


def test_hub_runs_the_issuer_only_with_a_lake(tmp_path, monkeypatch):
    c = build({}, tmp_path)
    assert "gridhub-storage" not in {s["name"] for s in c.JupyterHub.services}
    assert "GRIDHUB_LAKE_URL" not in c.Spawner.environment
    monkeypatch.setenv("FACILITY_LAKE_TOKENS", str(tmp_path / "lake"))
    c = build(
        {
            "GRIDHUB_LAKE_URL": "root://lake-cache:1094/",
            "GRIDHUB_PUBLIC_URL": "https://gridhub.example:8443",
        },
        tmp_path,
    )
    (svc,) = [s for s in c.JupyterHub.services if s["name"] == "gridhub-storage"]
    cmd = " ".join(svc["command"])
    assert f"--issuer={ISSUER}" in cmd and f"--audience={AUDIENCE}" in cmd
    assert f"--key-file={tmp_path / 'state' / 'secrets' / 'storage-issuer.pem'}" in cmd
    assert f"--cache-token-file={tmp_path / 'lake' / 'cache-token'}" in cmd
    env = c.Spawner.environment
    assert env["GRIDHUB_LAKE_URL"] == "root://lake-cache:1094"
    assert env["GRIDHUB_STORAGE_TOKEN_URL"] == ISSUER + "/token"


def test_lake_url_must_be_xrootd():
    with pytest.raises(SettingsError, match=r"GRIDHUB_LAKE_URL.*root://"):
        load_settings({"GRIDHUB_LAKE_URL": "https://lake.example"})


def test_lake_urls():
    env = {"GRIDHUB_LAKE_URL": "root://lake-cache:1094/"}
    assert (
        data.lake_url("/public/samples/a.root", env)
        == "root://lake-cache:1094//public/samples/a.root"
    )
    assert data.lake_url("public/x", env) == "root://lake-cache:1094//public/x"
    assert data.lake_url("/public/x", {}) is None


def test_choose_fileset_falls_back_to_the_local_copy_naming_the_lake(tmp_path, monkeypatch):
    (tmp_path / "fileset.json").write_text(
        json.dumps({"ttbar": {"files": {"t.root": "Events"}, "metadata": {"nevts": 200}}})
    )
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GRIDHUB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GRIDHUB_FILESET", raising=False)
    monkeypatch.setenv("GRIDHUB_LAKE_URL", f"root://127.0.0.1:{port}")
    fileset, source = data.choose_fileset(timeout=1)
    assert fileset["ttbar"]["files"] == {str(tmp_path / "t.root"): "Events"}
    assert source.startswith("shipped samples") and f"127.0.0.1:{port}" in source
    monkeypatch.delenv("GRIDHUB_LAKE_URL")
    assert data.choose_fileset(timeout=1)[1] == f"shipped samples {tmp_path / 'fileset.json'}"


def test_storage_token_without_an_issuer_says_so():
    with pytest.raises(RuntimeError, match="GRIDHUB_STORAGE_TOKEN_URL"):
        data.storage_token({})
