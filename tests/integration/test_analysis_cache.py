"""The analysis cache on the data lake (issue 17): group areas, expiry, the cleaner.

A real xrootd origin (lake_fixtures.XRootDServer, Debian's xrootd 5.5 with
libXrdAccSciTokens) serves ``/cache`` writable beside the datasets; the
facility's own issuer (gridhub.hub.storagetokens, asking a stand-in of the
hub's identify endpoint who a hub token is and in which groups) signs the
tokens. Every cache operation runs in a subprocess with a clean environment
(``gridhub.analysiscache``, as a notebook or a Dask worker calls it), so a
hang would be cut by the subprocess deadline; the refusals are also checked
with Debian's own ``xrdcp`` and a token file (ztn), independent of our API.

Users: alice and bob are in group cms; carol is in atlas only; ``al`` is a
user whose name is the start of alice's (XRootD 5.5 matches scope paths as
string prefixes: gridhub.cachepolicy explains the areas' layout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from gridhub import cachepolicy
from lake_fixtures import RUN_AS, HubIssuer, XRootDServer, start_origin

PROMPT = 30.0
#: the lake image runs the cleaner with Debian's python3 (no gridhub dependencies)
SYSTEM_PYTHON = "/usr/bin/python3"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
USERS = {
    "hub-alice": {"name": "alice", "groups": ["cms"]},
    "hub-bob": {"name": "bob", "groups": ["cms"]},
    "hub-carol": {"name": "carol", "groups": ["atlas"]},
    "hub-al": {"name": "al", "groups": []},
}


def _unshare_works() -> bool:
    if not shutil.which("xrootd") or not shutil.which("unshare"):
        return False
    return (
        subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    )


pytestmark = pytest.mark.skipif(
    not _unshare_works(),
    reason="needs xrootd (apt: xrootd-server xrootd-scitokens-plugins) and unshare -m (root)",
)


@pytest.fixture(scope="module")
def export(lake_dir) -> Path:
    """The origin's tree: a dataset, and /cache/{users,groups} that xrootd writes."""
    root = lake_dir / "export"
    (root / "protected").mkdir(parents=True)
    (root / "protected" / "data.txt").write_text("a dataset\n")
    for kind in ("users", "groups"):
        (root / "cache" / kind).mkdir(parents=True)
    for path in [root, *root.rglob("*")]:
        shutil.chown(path, RUN_AS, RUN_AS)
    return root


@pytest.fixture(scope="module")
def issuer(lake_dir):
    server = HubIssuer(lake_dir / "storage-issuer.pem", USERS, cache_expiry=("1d", "2d"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def origin(lake_dir, export, issuer):
    server = start_origin(lake_dir, export, issuer)
    yield server
    server.stop()


def _env(tmp: Path, origin: XRootDServer, issuer: HubIssuer | None, hub_token: str | None) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BEARER_TOKEN", "XRD_", "X509_", "JUPYTERHUB_", "GRIDHUB_"))
    }
    runtime = tmp / f"run-{time.monotonic_ns()}"
    runtime.mkdir(mode=0o700)
    env.update(
        XDG_RUNTIME_DIR=str(runtime),
        X509_CERT_DIR=str(origin.ca_dir),
        XRD_CONNECTIONRETRY="1",
        XRD_REQUESTTIMEOUT="15",
        XRD_STREAMTIMEOUT="15",
        GRIDHUB_ANALYSIS_CACHE_URL=f"root://127.0.0.1:{origin.port}",
    )
    if (
        hub_token is not None and issuer is not None
    ):  # a notebook server: its hub token and the issuer's URL
        env.update(JUPYTERHUB_API_TOKEN=hub_token, GRIDHUB_STORAGE_TOKEN_URL=issuer.token_url)
    return env


API = r"""
import json, sys
from gridhub import analysiscache as cache
spec = json.loads(sys.argv[1])
kw = {k: spec[k] for k in ("group", "expires") if spec.get(k) is not None}
try:
    tok = spec.get("token")
    if spec["op"] == "token":
        t = cache.token()
        out = {"ok": {"repr": repr(t), "user": t.user, "max": t.max_expiry}}
    elif spec["op"] == "put":
        e = cache.put(spec["key"], spec["data"].encode(), token=tok, timeout=15, **kw)
        out = {"ok": [e.key, e.size, e.expires_at]}
    elif spec["op"] == "get":
        out = {"ok": cache.get(spec["key"], token=tok, timeout=15, **kw).decode()}
    elif spec["op"] == "list":
        entries = cache.list(token=tok, timeout=15, **kw)
        out = {"ok": [[e.key, e.size, e.expires_at] for e in entries]}
except (cache.CacheError, ValueError) as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


class Notebook:
    """``gridhub.analysiscache`` in a subprocess, as one hub user's notebook."""

    def __init__(self, tmp: Path, origin: XRootDServer, issuer: HubIssuer) -> None:
        self.tmp, self.origin, self.issuer = tmp, origin, issuer

    def __call__(self, hub_token: str | None, op: str, **spec) -> dict:
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-c", API, json.dumps({"op": op, **spec})],
            env=_env(self.tmp, self.origin, self.issuer, hub_token),
            capture_output=True,
            text=True,
            timeout=PROMPT + 30,
        )
        assert r.stdout.strip(), r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["wall"] = time.monotonic() - t0
        return out


@pytest.fixture
def nb(tmp_path, origin, issuer) -> Notebook:
    return Notebook(tmp_path, origin, issuer)


def xrdcp(
    tmp: Path, origin: XRootDServer, token: str, src: str, dst: str
) -> subprocess.CompletedProcess:
    """Debian's xrdcp with ``token`` in a 0600 token file (ztn over TLS)."""
    env = _env(tmp, origin, None, None)
    path = Path(env["XDG_RUNTIME_DIR"]) / "token"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    env["BEARER_TOKEN_FILE"] = str(path)
    return subprocess.run(
        ["xrdcp", "-f", "-s", src, dst], env=env, capture_output=True, text=True, timeout=PROMPT
    )


def _user_token(issuer: HubIssuer, hub_token: str, lifetime: int = 600) -> str:
    who = USERS[hub_token]
    token, _ = issuer.token(who["name"], lifetime, cachepolicy.scopes(who["name"], who["groups"]))
    return token


def assert_refused(result: dict, origin: XRootDServer, kind: str = "Refused") -> None:
    assert "error" in result, f"allowed: {result}\n{origin.log()}"
    assert result["error"] == kind, result
    assert result["wall"] < PROMPT, result
    assert "3010" in result["message"] or "ermission denied" in result["message"], result
    assert "eyJ" not in result["message"], "a token in the message"
    print(f"{kind} in {result['wall']:.1f} s: {result['message']}")


def test_the_issuer_derives_the_areas_from_the_hub(nb, issuer):
    """A notebook's token() asks the issuer with its hub token; the token's
    scope is the hub user's areas and its groups', and it never shows itself."""
    out = nb("hub-alice", "token")
    assert out["ok"]["user"] == "alice", out
    assert out["ok"]["repr"].startswith("<storage token of alice until "), out
    assert out["ok"]["max"] == 2 * 86400  # the deployer's maximum, from the issuer
    assert nb("not-a-hub-token", "token")["error"] == "NoToken"


def test_member_writes_and_reads_its_group_area(nb, origin, export):
    put = nb("hub-alice", "put", key="skim/hists.txt", data="alice's hists", group="cms")
    assert put.get("ok", [None])[0] == "skim/hists.txt", f"{put}\n{origin.log()}"
    on_disk = export / "cache/groups/cms/objects/skim/hists.txt"
    assert on_disk.read_text() == "alice's hists"
    # the expiry: the issuer's default (1 day), in the sidecar the cleaner reads
    declared = int(Path(f"{on_disk}.expires").read_text())
    assert abs(declared - (time.time() + 86400)) < 120
    # bob, another member, reads it and lists the area with its expiry
    assert nb("hub-bob", "get", key="skim/hists.txt", group="cms")["ok"] == "alice's hists"
    listing = nb("hub-bob", "list", group="cms")["ok"]
    assert listing == [["skim/hists.txt", len("alice's hists"), declared]], listing
    # an expiry beyond the deployer's maximum (2d) is refused before writing
    over = nb("hub-alice", "put", key="long.txt", data="x", group="cms", expires="3d")
    assert over["error"] == "ValueError" and "maximum" in over["message"], over
    # tokens travel in each request (authz): the origin never logs one (a JWT starts eyJ)
    assert "eyJ" not in origin.log(10_000_000)


def test_non_member_is_refused(nb, origin, tmp_path, issuer):
    nb("hub-alice", "put", key="secret.txt", data="cms only", group="cms")
    # carol (atlas) through the API: read, write and list of cms' area refused
    assert_refused(nb("hub-carol", "get", key="secret.txt", group="cms"), origin)
    assert_refused(nb("hub-carol", "put", key="mine.txt", data="x", group="cms"), origin)
    assert_refused(nb("hub-carol", "list", group="cms"), origin)
    # and with Debian's xrdcp and her token in a file (ztn)
    token = _user_token(issuer, "hub-carol")
    url = origin.url(f"{cachepolicy.group_area('cms')}/secret.txt")
    local = tmp_path / "out.txt"
    r = xrdcp(tmp_path, origin, token, url, str(local))
    assert r.returncode != 0 and "3010" in r.stderr, r
    src = tmp_path / "in.txt"
    src.write_text("carol's")
    r = xrdcp(tmp_path, origin, token, str(src), origin.url(f"{cachepolicy.group_area('cms')}/c"))
    assert r.returncode != 0 and "3010" in r.stderr, r
    # her own group's area she may write
    r = xrdcp(tmp_path, origin, token, str(src), origin.url(f"{cachepolicy.group_area('atlas')}/c"))
    assert r.returncode == 0, f"{r.stderr}\n{origin.log()}"


def test_a_user_cannot_write_or_read_another_users_area(nb, origin, tmp_path, issuer, export):
    assert "ok" in nb("hub-alice", "put", key="notes.txt", data="alice's own"), origin.log()
    assert nb("hub-alice", "get", key="notes.txt")["ok"] == "alice's own"
    src = tmp_path / "in.txt"
    src.write_text("not yours")
    alice = cachepolicy.user_area("alice")
    # bob (also in cms) and al (whose name is the start of alice's) both refused
    for who in ("hub-bob", "hub-al"):
        token = _user_token(issuer, who)
        r = xrdcp(tmp_path, origin, token, str(src), origin.url(f"{alice}/notes.txt"))
        assert r.returncode != 0 and "3010" in r.stderr, f"{who}: {r}\n{origin.log()}"
        r = xrdcp(tmp_path, origin, token, origin.url(f"{alice}/notes.txt"), str(tmp_path / "o"))
        assert r.returncode != 0 and "3010" in r.stderr, f"{who}: {r}"
        # nor a folder beside alice's whose name starts like it
        r = xrdcp(tmp_path, origin, token, str(src), origin.url("/cache/users/alice2/objects/x"))
        assert r.returncode != 0 and "3010" in r.stderr, f"{who}: {r}"
    assert (export / "cache/users/alice/objects/notes.txt").read_text() == "alice's own"
    # the datasets stay read-only to users
    r = xrdcp(
        tmp_path, origin, _user_token(issuer, "hub-alice"), str(src), origin.url("/protected/x")
    )
    assert r.returncode != 0 and "3010" in r.stderr, r


def test_a_token_whose_expiry_passed_is_refused(nb, origin, tmp_path, issuer):
    expired = _user_token(issuer, "hub-alice", lifetime=-120)
    # the storage itself refuses it (xrdcp, no API of ours in between)
    src = tmp_path / "in.txt"
    src.write_text("late")
    r = xrdcp(
        tmp_path, origin, expired, str(src), origin.url(f"{cachepolicy.user_area('alice')}/late")
    )
    assert r.returncode != 0 and "3010" in r.stderr, f"{r}\n{origin.log()}"
    assert "token verification failed: token expired" in origin.log(10_000_000)
    # the API says so before asking, naming the path and when it expired
    out = nb(None, "put", key="late.txt", data="x", token=expired)
    assert out["error"] == "Expired" and "storage token expired at" in out["message"], out
    assert "/cache/users/alice/objects/late.txt" in out["message"] and "eyJ" not in out["message"]
    # a worker without any token is told what to do
    out = nb(None, "get", key="late.txt")
    assert out["error"] == "NoToken" and "token=" in out["message"], out
    assert expired not in origin.log(10_000_000)


@pytest.fixture(scope="module")
def cleaner(lake_dir) -> Path:
    """The cleaner as the lake image carries it: gridhub's package folder with the
    two modules it needs, run by the system python (standard library only)."""
    package = lake_dir / "cleaner" / "gridhub"
    package.mkdir(parents=True)
    source = Path(cachepolicy.__file__).parent
    for name in ("__init__.py", "cachepolicy.py", "cacheclean.py"):
        shutil.copy(source / name, package / name)
    return package.parent


def _clean(cleaner: Path, export: Path, *args: str) -> subprocess.CompletedProcess:
    """The cleaner as the origin's user (it owns the files; it needs nothing else)."""
    return subprocess.run(
        [RUNUSER, "-u", RUN_AS, "--", SYSTEM_PYTHON, "-m", "gridhub.cacheclean",
         "--root", str(export / "cache"), *args],
        capture_output=True, text=True, timeout=60, cwd=cleaner,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cleaner)},
    )  # fmt: skip


def test_the_cleaner_removes_expired_objects_and_keeps_fresh_ones(
    nb, origin, export, issuer, cleaner
):
    area = export / "cache/groups/cms/objects"
    assert "ok" in nb("hub-alice", "put", key="old.txt", data="soon", group="cms", expires="2s")
    assert "ok" in nb("hub-alice", "put", key="fresh.txt", data="later", group="cms", expires="1d")
    # an object whose sidecar asks for a century (written past the API): the
    # maximum counts from its last write
    token = _user_token(issuer, "hub-alice")
    work = Path(tempfile.mkdtemp(dir=export.parent))
    src = work / "sidecar"
    src.write_text(str(int(time.time()) + 100 * 365 * 86400))
    shutil.chown(work, RUN_AS, RUN_AS)
    sidecar_url = origin.url("/cache/groups/cms/objects/greedy.txt.expires")
    assert xrdcp(work, origin, token, str(src), sidecar_url).returncode == 0
    src.write_text("forever?")
    assert (
        xrdcp(
            work, origin, token, str(src), origin.url("/cache/groups/cms/objects/greedy.txt")
        ).returncode
        == 0
    )
    time.sleep(3)
    # before the cleaner ran, an expired object is refused by the API as expired
    out = nb("hub-bob", "get", key="old.txt", group="cms")
    assert out["error"] == "Expired" and "cms/objects/old.txt expired at" in out["message"], out
    r = _clean(cleaner, export, "--default", "1d", "--maximum", "2d")
    assert r.returncode == 0, r.stderr
    assert not (area / "old.txt").exists() and not (area / "old.txt.expires").exists(), r.stderr
    assert (area / "fresh.txt").read_text() == "later"
    assert (area / "greedy.txt").exists(), "the maximum (2d) has not passed"
    assert "removed" in r.stderr and "old.txt" in r.stderr
    # with a maximum of 2 s, the century-long sidecar does not save it
    r = _clean(cleaner, export, "--default", "1s", "--maximum", "2s")
    assert not (area / "greedy.txt").exists(), r.stderr
    assert nb("hub-bob", "get", key="old.txt", group="cms")["error"] == "NotFound"


DASK = r"""
import json, os
from dask.distributed import Client, LocalCluster
import pyarrow as pa
from gridhub import analysiscache as cache

tok = cache.token()                  # in the notebook, with its hub token ...
del os.environ["JUPYTERHUB_API_TOKEN"]  # ... which the workers do not have
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                  dashboard_address=None) as cluster, Client(cluster) as client:
    tables = [pa.table({"part": [i] * 3, "pt": [10.0 * i, 20.0, 30.0]}) for i in range(4)]
    keys = [f"skim/part-{i}.parquet" for i in range(4)]
    written = client.gather(client.map(
        cache.put_parquet, keys, tables, token=tok, group="cms", expires="1h", pure=False))
    where = client.gather(client.map(lambda _: os.getpid(), range(4), pure=False))
    listing = [e.key for e in cache.list("skim", token=tok, group="cms")]
    back = cache.get_parquet("skim/part-2.parquet", token=tok, group="cms")
    # a worker without a token: a clear error, not a hang
    try:
        client.submit(cache.get, "skim/part-0.parquet", group="cms", pure=False).result(60)
        no_token = ""
    except cache.NoToken as exc:
        no_token = str(exc)
print(json.dumps({"written": [w.key for w in written], "pids": sorted(set(where)),
                  "me": os.getpid(), "listing": listing, "back": back.to_pydict(),
                  "no_token": no_token, "repr": repr(tok)}))
"""


def test_dask_workers_write_a_parquet_file_per_partition(tmp_path, origin, issuer):
    """The notebook hands its token to a cluster's workers (its repr hides it);
    each task writes its partition as parquet into the group's area."""
    r = subprocess.run(
        [sys.executable, "-c", DASK],
        env=_env(tmp_path, origin, issuer, "hub-bob"),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    keys = [f"skim/part-{i}.parquet" for i in range(4)]
    assert out["written"] == keys
    assert out["me"] not in out["pids"], "the puts ran in the notebook, not on workers"
    assert [k for k in out["listing"] if k.startswith("skim/part-")] == keys, out
    assert out["back"] == {"part": [2, 2, 2], "pt": [20.0, 20.0, 30.0]}
    assert "pass token=" in out["no_token"], out
    assert out["repr"].startswith("<storage token of bob until")
    assert "eyJ" not in r.stderr, "a token in the workers' logs"
