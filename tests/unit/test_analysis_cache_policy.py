"""The analysis cache's rules (gridhub.cachepolicy), its cleaner's decisions
(gridhub.cacheclean on a folder), the issuer's token answer (scopes from the
hub's groups) and the notebook API's local checks (gridhub.analysiscache)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
import pytest
from gridhub import analysiscache, cacheclean, cachepolicy
from gridhub.hub import storagetokens
from tornado import web
from tornado.testing import AsyncHTTPTestCase

AUDIENCE = "https://gridhub.example/lake"
ISSUER = "https://gridhub.example/services/gridhub-storage"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7d", 7 * 86400), ("90m", 5400), ("12h", 43200), ("2w", 14 * 86400), ("3600", 3600),
     (3600, 3600), (" 5 S ", 5), ("1s", 1)],
)  # fmt: skip
def test_durations(value, seconds):
    assert cachepolicy.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "0", "0d", "-1d", "7 days", "1.5h", "d", 1.5, True, "7y"])
def test_bad_durations_are_refused(value):
    with pytest.raises(ValueError, match=r"duration|seconds"):
        cachepolicy.parse_duration(value)


def test_scopes_read_datasets_and_own_and_group_areas_only():
    scope = cachepolicy.scopes("alice", ["cms", "atlas", "cms"]).split()
    assert scope == [
        "storage.read:/public",
        "storage.read:/protected",
        *(
            f"storage.{op}:/cache/{area}/objects"
            for area in ("users/alice", "groups/atlas", "groups/cms")
            for op in ("read", "create", "modify")
        ),
    ]
    # never the root, never another area, never write outside /cache
    assert "storage.read:/" not in scope
    assert all(s.startswith("storage.read:") or ":/cache/" in s for s in scope)


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "../users/bob", "", "x" * 65, "-rf", ".hidden", "a b", "é"]
)
def test_names_that_are_no_safe_path_component_get_no_area(name):
    scope = cachepolicy.scopes("alice", [name])
    assert scope == cachepolicy.scopes("alice", []), scope
    assert cachepolicy.scopes(name, ["cms"]).count("/cache/users/") == 0
    with pytest.raises(ValueError):
        cachepolicy.group_area(name)


def test_no_area_path_is_a_prefix_of_another():
    """XRootD 5.5 grants a scope path to every path starting with it as a string."""
    names = ["al", "alice", "al.ice", "al-", "a", "alice2", "cms", "cms-higgs"]
    paths = [cachepolicy.user_area(n) for n in names] + [cachepolicy.group_area(n) for n in names]
    for a in paths:
        for b in paths:
            if a != b:
                assert not (b + "/x").startswith(a), (a, b)


def test_expiry_capped_by_the_maximum_and_defaulted():
    assert cachepolicy.expires_at(1000, None, 50, 100) == 1050
    assert cachepolicy.expires_at(1000, 1020, 50, 100) == 1020
    assert cachepolicy.expires_at(1000, 10**10, 50, 100) == 1100  # a greedy sidecar
    assert cachepolicy.expires_at(1000, None, 500, 100) == 1100
    assert cachepolicy.parse_sidecar("1700000000\n") == 1700000000
    assert cachepolicy.parse_sidecar("soon") is None
    assert cachepolicy.parse_sidecar("-5") is None


def _obj(root: Path, rel: str, size: int, mtime: float, declared: int | str | None = None):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    if declared is not None:
        Path(f"{path}.expires").write_text(f"{declared}\n")
    return path


def test_the_cleaner_decides_by_sidecar_default_and_maximum(tmp_path):
    now, day = 10_000_000.0, 86400
    g = "groups/cms/objects"
    expired = _obj(tmp_path, f"{g}/old", 1, now - 10, int(now - 1))
    fresh = _obj(tmp_path, f"{g}/fresh", 1, now - 10, int(now + day))
    greedy = _obj(tmp_path, f"{g}/deep/greedy", 1, now - 3 * day, int(now + 100 * day))
    undeclared_old = _obj(tmp_path, "users/al/objects/a", 1, now - 2 * day)
    undeclared_new = _obj(tmp_path, "users/al/objects/b", 1, now - 10)
    garbled = _obj(tmp_path, "users/al/objects/c", 1, now - 10, "soon")
    stray = _obj(tmp_path, "stray/x", 1, now - 100 * day)  # outside any area
    removed = cacheclean.clean(tmp_path, default=day, maximum=2 * day, now=now)
    assert sorted(removed) == sorted([expired, greedy, undeclared_old])
    for p in removed:
        assert not p.exists() and not Path(f"{p}.expires").exists()
    assert not (tmp_path / g / "deep").exists(), "an emptied folder stays"
    assert (tmp_path / g).is_dir(), "the area itself stays"
    for p in (fresh, undeclared_new, garbled, stray):
        assert p.exists()


def test_the_group_quota_removes_what_expires_soonest(tmp_path):
    now = 10_000_000.0
    g = "groups/cms/objects"
    first = _obj(tmp_path, f"{g}/first", 600, now, int(now + 100))
    second = _obj(tmp_path, f"{g}/second", 600, now, int(now + 200))
    third = _obj(tmp_path, f"{g}/third", 600, now, int(now + 300))
    mine = _obj(tmp_path, "users/alice/objects/big", 5000, now, int(now + 100))
    removed = cacheclean.clean(tmp_path, default=1000, maximum=1000, group_quota=1300, now=now)
    assert removed == [first]
    assert second.exists() and third.exists() and mine.exists(), "users' areas have no quota"
    assert cacheclean.parse_size("10g") == 10 << 30 and cacheclean.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        cacheclean.parse_size("lots")


def test_the_cleaner_leaves_a_fresh_sidecar_without_its_object(tmp_path):
    """A writer puts the object first, then its sidecar: a sidecar alone is
    removed only once older than the maximum."""
    now = 10_000_000.0
    young = _obj(tmp_path, "users/a/objects/x.expires", 1, now - 10)
    old = _obj(tmp_path, "users/a/objects/y.expires", 1, now - 1000)
    cacheclean.clean(tmp_path, default=100, maximum=500, now=now)
    assert young.exists() and not old.exists()


class TestTokenFromGroups(AsyncHTTPTestCase):
    """POST /token: the scope comes from the hub's answer about the caller
    (a stand-in of JupyterHub's identify endpoint here), never the request."""

    USERS = {
        "t-alice": {"kind": "user", "name": "alice", "groups": ["cms", "../users/bob"]},
        # a masterclass student: in the class (no shared area) and a real group
        "t-eve": {"kind": "user", "name": "eve", "groups": ["class", "cms"]},
        "t-svc": {"kind": "service", "name": "gateway"},
    }

    def get_app(self):
        import tempfile

        users = self.USERS

        class Identify(web.RequestHandler):
            def get(self):
                who = users.get(self.request.headers["Authorization"].split()[-1])
                if who is None:
                    raise web.HTTPError(403)
                self.finish(who)

        key = storagetokens.load_or_create_key(Path(tempfile.mkdtemp()) / "k.pem")
        self.issuer = storagetokens.Issuer(ISSUER, AUDIENCE, key)
        app = storagetokens.make_app(
            "/services/gridhub-storage/",
            self.issuer,
            f"http://127.0.0.1:{self.get_http_port()}/hub/api",
            600,
            ("2d", "10d"),
            no_area_groups=["class"],
        )
        app.add_handlers(r".*", [(r"/hub/api/user", Identify)])
        return app

    def _token(self, hub_token: str, body: bytes = b""):
        return self.fetch(
            "/services/gridhub-storage/token",
            method="POST",
            body=body,
            headers={"Authorization": f"token {hub_token}"},
        )

    def test_scopes_of_the_users_areas_and_groups(self):
        # the request asks for more: it is not listened to
        r = self._token("t-alice", json.dumps({"scope": "storage.modify:/"}).encode())
        assert r.code == 200, r.body
        answer = json.loads(r.body)
        claims = jwt.decode(
            answer["access_token"],
            jwt.PyJWK(self.issuer.jwks["keys"][0]).key,
            algorithms=["ES256"],
            audience=AUDIENCE,
        )
        assert claims["sub"] == "alice"
        assert claims["scope"] == answer["scope"] == cachepolicy.scopes("alice", ["cms"])
        assert "bob" not in claims["scope"] and "storage.modify:/ " not in claims["scope"] + " "
        assert answer["cache"] == {
            "default_expiry": 2 * 86400,
            "max_expiry": 10 * 86400,
            "areas": ["/cache/users/alice/objects", "/cache/groups/cms/objects"],
        }

    def test_a_group_without_an_area_grants_nothing_in_it(self):
        """The masterclass's class is every student: no shared area, or one
        student could change or delete another's objects there."""
        answer = json.loads(self._token("t-eve").body)
        assert answer["cache"]["areas"] == ["/cache/users/eve/objects", "/cache/groups/cms/objects"]
        assert "/cache/groups/class" not in answer["scope"], answer["scope"]
        assert answer["scope"] == cachepolicy.scopes("eve", ["cms"])

    def test_services_and_strangers_get_none(self):
        assert self._token("t-svc").code == 403
        assert self._token("t-nobody").code == 403


def _token(sub: str = "alice", lifetime: int = 600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + lifetime, "scope": "x"}, "k" * 32, "HS256")


def test_the_token_object_never_shows_its_value():
    raw = _token()
    tok = analysiscache.Token(raw)
    assert tok.user == "alice" and raw not in repr(tok) and raw not in str(tok)
    assert repr(tok).startswith("<storage token of alice until ")
    import pickle

    assert pickle.loads(pickle.dumps(tok)).secret() == raw  # noqa: S301 (it travels to workers)
    with pytest.raises(analysiscache.NoToken):
        analysiscache.Token("not-a-jwt")


def test_api_local_checks(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    monkeypatch.setenv(analysiscache.CACHE_URL_ENV, "root://127.0.0.1:9")
    with pytest.raises(analysiscache.NoToken, match="pass token="):
        analysiscache.get("x")
    tok = analysiscache.Token(_token(), default_expiry=60, max_expiry=3600)
    for key in ("../x", "a/../../b", "", "/", "x.expires"):
        with pytest.raises(ValueError):
            analysiscache.put(key, b"x", token=tok)
    with pytest.raises(ValueError, match="maximum of 3600 s"):
        analysiscache.put("x", b"x", token=tok, expires="2h")
    expired = _token(lifetime=-5)
    with pytest.raises(analysiscache.Expired, match="/cache/users/alice/objects/x") as err:
        analysiscache.get("x", token=expired)
    assert expired not in str(err.value)
    monkeypatch.delenv(analysiscache.CACHE_URL_ENV)
    with pytest.raises(analysiscache.CacheError, match="GRIDHUB_ANALYSIS_CACHE_URL"):
        analysiscache.get("x", token=tok)
