"""The data lake's core: a real XRootD origin with WLCG bearer tokens (issue 17).

Debian's xrootd 5.5 with libXrdAccSciTokens (lake_fixtures.py) serves a
NanoAOD sample from ``gridhub-samples fetch`` under ``/protected`` (tokens
only) and ``/public`` (anyone may read). Every read is done by a client
subprocess with a clean environment (its own ``BEARER_TOKEN_FILE`` or none),
so the token a read uses is exactly the one the test gives, and a refusal
that hung would be cut by the subprocess deadline and fail the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uproot
from lake_fixtures import RUN_AS, TokenIssuer, XRootDServer, start_origin
from processes import facility_tls

SAMPLE = "nano_tt_v12.root"
WARM = "warm-" + SAMPLE  # read by the warm-up test only: the cache has not seen it
#: a refusal must come back within this (the client's own timeouts are set lower)
PROMPT = 30.0

READER = r"""
import json, sys, time
t0 = time.monotonic()
try:
    import uproot
    with uproot.open(sys.argv[1], timeout=20) as f:
        n = int(f["Events"].num_entries)
        pt = f["Events"]["Jet_pt"].array(library="np")
    print(json.dumps({"entries": n, "jets": int(sum(len(x) for x in pt)),
                      "seconds": time.monotonic() - t0}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                      "seconds": time.monotonic() - t0}))
"""


def _unshare_works() -> bool:
    if not shutil.which("xrootd") or not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(
    not _unshare_works(),
    reason="needs xrootd (apt: xrootd-server xrootd-scitokens-plugins) and unshare -m (root)",
)


@pytest.fixture(scope="module")
def lake_samples(tmp_path_factory) -> Path:
    from gridhub.samples import fetch

    return fetch(tmp_path_factory.mktemp("lake-samples"))


@pytest.fixture(scope="module")
def export(lake_samples, lake_dir) -> Path:
    root = lake_dir / "export"
    for area in ("protected", "public", "other"):
        (root / area).mkdir(parents=True)
        shutil.copy(lake_samples / SAMPLE, root / area / SAMPLE)
    shutil.copy(lake_samples / SAMPLE, root / "protected" / WARM)
    # the layout of the compose facility's origin: /public/samples + fileset.json
    (root / "public" / "samples").mkdir()
    shutil.copy(lake_samples / SAMPLE, root / "public" / "samples" / SAMPLE)
    fileset = {"ttbar": {"files": {SAMPLE: "Events"}, "metadata": {"nevts": 200}}}
    (root / "public" / "samples" / "fileset.json").write_text(json.dumps(fileset))
    for path in [root, *root.rglob("*")]:
        shutil.chown(path, RUN_AS, RUN_AS)
    return root


@pytest.fixture(scope="module")
def issuer():
    server = TokenIssuer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def origin(lake_dir, export, issuer):
    server = start_origin(lake_dir, export, issuer)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def expected(lake_samples) -> dict[str, int]:
    with uproot.open(lake_samples / SAMPLE) as f:
        t = f["Events"]
        return {
            "entries": int(t.num_entries),
            "jets": int(sum(len(x) for x in t["Jet_pt"].array(library="np"))),
        }


class Reader:
    """Reads a URL with uproot in a subprocess, as a notebook would."""

    def __init__(self, tmp: Path, origin: XRootDServer) -> None:
        self.tmp = tmp
        self.origin = origin

    def env(self, token: str | None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BEARER_TOKEN", "XRD_", "X509_"))
        }
        runtime = self.tmp / f"run-{time.monotonic_ns()}"
        runtime.mkdir(mode=0o700)
        env.update(
            XDG_RUNTIME_DIR=str(runtime),  # no bt_u<uid> there
            X509_CERT_DIR=str(self.origin.ca_dir),
            XRD_CONNECTIONRETRY="1",
            XRD_REQUESTTIMEOUT="15",
            XRD_STREAMTIMEOUT="15",
        )
        if token is not None:
            path = runtime / "token"
            path.touch(mode=0o600)
            path.write_text(token + "\n")
            env["BEARER_TOKEN_FILE"] = str(path)
        return env

    def __call__(
        self, url: str, token: str | None = None, script: str = READER, *args: str
    ) -> dict:
        stray = Path(f"/tmp/bt_u{os.getuid()}")  # noqa: S108 - WLCG discovery's last resort
        assert not stray.exists(), "a stray WLCG token file would be read"
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-c", script, url, *args],
            env=self.env(token),
            capture_output=True,
            text=True,
            timeout=PROMPT + 30,
        )
        elapsed = time.monotonic() - t0
        assert r.stdout.strip(), r.stderr[-3000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
        result["wall"] = elapsed
        return result


@pytest.fixture
def read(tmp_path, origin) -> Reader:
    return Reader(tmp_path, origin)


def assert_refused(result: dict, origin: XRootDServer) -> None:
    assert "error" in result, f"read was allowed: {result}\n{origin.log()}"
    print(f"refused in {result['wall']:.1f} s: {result['error']}")
    assert result["wall"] < PROMPT, f"refusal took {result['wall']:.1f} s"
    # XRootD's answer to an unauthorized open: kXR_NotAuthorized (3010)
    assert "3010" in result["error"] or "ermission denied" in result["error"], result["error"]


def test_read_with_valid_token(read, origin, issuer, expected):
    token = issuer.token("storage.read:/protected")
    result = read(origin.url(f"/protected/{SAMPLE}"), token)
    assert "error" not in result, f"{result}\n{origin.log()}"
    assert {k: result[k] for k in expected} == expected
    # the plugin fetched the issuer's keys over HTTPS (discovery, then the JWKS)
    assert "/.well-known/openid-configuration" in issuer.requests
    assert "/jwks" in issuer.requests
    # the origin decided by the token's scope (ztn over TLS), and never logged the token
    log = origin.log(200000)
    assert "Grant authorization based on scopes for operation=read, path=/protected/" in log
    assert token not in log and token.split(".")[2] not in log


def test_read_without_token_refused(read, origin):
    assert_refused(read(origin.url(f"/protected/{SAMPLE}")), origin)


def test_read_with_expired_token_refused(read, origin, issuer):
    token = issuer.token("storage.read:/protected", lifetime=-120)
    assert_refused(read(origin.url(f"/protected/{SAMPLE}"), token), origin)
    # refused for the right reason: the plugin saw the token and its expiry
    assert "token verification failed: token expired" in origin.log(10_000_000)


def test_read_with_token_for_other_path_refused(read, origin, issuer):
    token = issuer.token("storage.read:/other", sub="bob")
    assert_refused(read(origin.url(f"/protected/{SAMPLE}"), token), origin)
    # the token itself was valid: only its scope did not cover the path
    assert "subject=bob, issuer=" in origin.log(10_000_000)
    # the same token does read the path its scope names
    assert "error" not in read(origin.url(f"/other/{SAMPLE}"), token)


def test_public_path_without_token(read, origin, expected):
    result = read(origin.url(f"/public/{SAMPLE}"))
    assert "error" not in result, f"{result}\n{origin.log()}"
    assert {k: result[k] for k in expected} == expected


PICK = r"""
import json, sys
from gridhub.data import pick
path, description = pick(sys.argv[1], sys.argv[2], timeout=10)
print(json.dumps({"path": path, "description": description}))
"""


def test_gridhub_data_pick(read, origin, issuer, lake_samples):
    """The notebooks' ``gridhub.data.pick``: the lake with a token, else the
    shipped copy, saying why (the storage's refusal), without hanging."""
    url, local = origin.url(f"/protected/{SAMPLE}"), str(lake_samples / SAMPLE)
    ok = read(url, issuer.token("storage.read:/protected"), PICK, local)
    assert ok["path"] == url, ok
    assert ok["description"] == f"online: {url}"
    refused = read(url, None, PICK, local)
    assert refused["path"] == local, refused
    assert "permission denied" in refused["description"], refused["description"]
    assert refused["wall"] < PROMPT
    print(refused["description"])


def _https_get(url: str, token: str | None, nbytes: int = 4096) -> tuple[int, bytes]:
    headers = {"Range": f"bytes=0-{nbytes - 1}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = httpx.get(url, headers=headers, verify=str(facility_tls().cert), timeout=PROMPT)
    return r.status_code, r.content if r.status_code in (200, 206) else b""


def test_https_with_token(origin, issuer, lake_samples):
    """XrdHttp: the same authorization over https:// with an Authorization header."""
    head = (lake_samples / SAMPLE).read_bytes()[:4096]
    url = origin.url(f"/protected/{SAMPLE}", "https")
    status, body = _https_get(url, issuer.token("storage.read:/protected"))
    assert status in (200, 206), origin.log()
    assert body == head
    assert _https_get(url, None)[0] == 403
    assert _https_get(url, issuer.token("storage.read:/other"))[0] == 403
    assert _https_get(url, issuer.token("storage.read:/protected", lifetime=-120))[0] == 403
    status, body = _https_get(origin.url(f"/public/{SAMPLE}", "https"), None)
    assert status in (200, 206) and body == head


@pytest.fixture(scope="module")
def xcache(lake_dir, export, issuer, origin):
    """An XCache in front of ``origin``; it reads as ``xcache`` with a read-only token."""
    token = issuer.token("storage.read:/", sub="xcache", lifetime=3600)
    server = start_origin(lake_dir, export, issuer, origin=origin, origin_token=token)
    yield server
    server.stop()


def _origin_reads(origin: XRootDServer, path: str) -> int:
    """Opens for reading of ``path`` the origin authorized (one log line each)."""
    needle = f"Grant authorization based on scopes for operation=read, path={path}"
    return origin.log(10_000_000).count(needle)


def test_xcache_second_read_from_cache(tmp_path, origin, xcache, issuer, expected):
    path = f"/protected/{SAMPLE}"
    read = Reader(tmp_path, xcache)
    token = issuer.token("storage.read:/protected")
    before = _origin_reads(origin, path)
    first = read(xcache.url(path), token)
    assert "error" not in first, f"{first}\n{xcache.log()}\n{origin.log()}"
    assert {k: first[k] for k in expected} == expected
    after_first = _origin_reads(origin, path)
    assert after_first > before, f"the cache did not read from the origin\n{origin.log()}"
    assert xcache.cache_dir is not None
    cached = xcache.cache_dir / path.lstrip("/")
    assert cached.is_file(), sorted(str(p) for p in xcache.cache_dir.rglob("*"))
    assert Path(f"{cached}.cinfo").is_file()

    second = read(xcache.url(path), token)
    assert {k: second[k] for k in expected} == expected
    assert _origin_reads(origin, path) == after_first, "second read went to the origin"
    # the cache authorizes its own clients with the same issuer
    assert_refused(read(xcache.url(path)), xcache)


WARMER = r"""
import json, sys
from gridhub import data
try:
    print(json.dumps(data.warm(sys.argv[1:], timeout=20)))
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_warm_fills_the_xcache_before_the_first_read(
    tmp_path, origin, xcache, issuer, expected, lake_samples
):
    """gridhub.data.warm reads a file through the cache once; the analysis'
    first read after it never goes to the origin."""
    path = f"/protected/{WARM}"
    read = Reader(tmp_path, xcache)
    token = issuer.token("storage.read:/protected")
    before = _origin_reads(origin, path)
    warmed = read(xcache.url(path), token, WARMER)
    warmed.pop("wall")
    assert warmed == {xcache.url(path): (lake_samples / SAMPLE).stat().st_size}, warmed
    after_warm = _origin_reads(origin, path)
    assert after_warm > before, f"warm() did not go through the cache\n{origin.log()}"
    first = read(xcache.url(path), token)
    assert {k: first[k] for k in expected} == expected, first
    assert _origin_reads(origin, path) == after_warm, "the first read went to the origin"
    # a file the token does not cover: the error names it and the storage's answer
    other = xcache.url(f"/other/{SAMPLE}")
    refused = read(other, token, WARMER)
    assert other in refused.get("error", ""), refused


@pytest.fixture(scope="module")
def hub_issuer(lake_dir):
    """The facility's own issuer (gridhub.hub.storagetokens, what the hub runs
    in the compose facility), its tornado app on HTTPS with the test certificate."""
    import asyncio
    import ssl
    import threading

    from gridhub.hub import storagetokens
    from lake_fixtures import AUDIENCE
    from processes import free_port
    from tornado import ioloop

    tls, port = facility_tls(), free_port()
    url = f"https://127.0.0.1:{port}/services/gridhub-storage"
    key = storagetokens.load_or_create_key(lake_dir / "storage-issuer.pem")
    issuer = storagetokens.Issuer(url, AUDIENCE, key)
    app = storagetokens.make_app("/services/gridhub-storage/", issuer, "http://127.0.0.1:9", 600)
    ready, held = threading.Event(), {}

    def serve() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls.cert, tls.key)
        app.listen(port, "127.0.0.1", ssl_options=ctx)
        held["loop"] = ioloop.IOLoop.current()
        ready.set()
        held["loop"].start()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10), "the issuer did not start"
    yield issuer
    held["loop"].add_callback(held["loop"].stop)


def test_tokens_of_the_hub_issuer(tmp_path, lake_dir, export, hub_issuer, expected):
    """The origin trusts the hub's issuer: its read token opens a protected
    file; an expired one of the same issuer is refused."""
    server = start_origin(lake_dir, export, hub_issuer)
    try:
        read = Reader(tmp_path, server)
        url = server.url(f"/protected/{SAMPLE}")
        token, _ = hub_issuer.token("alice", 600)
        result = read(url, token)
        assert "error" not in result, f"{result}\n{server.log()}"
        assert {k: result[k] for k in expected} == expected
        assert "Grant authorization based on scopes for operation=read" in server.log(200000)
        expired, _ = hub_issuer.token("alice", -120)
        assert_refused(read(url, expired), server)
        assert token not in server.log(10_000_000)
    finally:
        server.stop()


LAKE_FILESET = r"""
import json
import uproot
from gridhub import data
fileset, source = data.choose_fileset(timeout=10)
(url,) = fileset["ttbar"]["files"]
with uproot.open(url, timeout=20) as f:
    n = int(f["Events"].num_entries)
print(json.dumps({"source": source, "url": url, "entries": n,
                  "nevts": fileset["ttbar"]["metadata"]["nevts"]}))
"""


def test_choose_fileset_reads_the_lake_through_the_xcache(tmp_path, xcache, expected):
    """What the AGC notebook does by default: the lake's fileset.json through
    the XCache (gridhub.data.read_bytes, the XRootD client), its files as
    root:// URLs through the cache, readable without a token (/public)."""
    env = Reader(tmp_path, xcache).env(None)
    env["GRIDHUB_LAKE_URL"] = f"root://127.0.0.1:{xcache.port}"
    env.pop("GRIDHUB_FILESET", None)
    r = subprocess.run(
        [sys.executable, "-c", LAKE_FILESET],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROMPT + 30,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    lake = f"root://127.0.0.1:{xcache.port}//public/samples"
    assert got["source"] == f"the data lake: {lake}/fileset.json", got
    assert got["url"] == f"{lake}/{SAMPLE}"
    assert got["entries"] == got["nevts"] == expected["entries"]
    assert xcache.cache_dir is not None
    assert (xcache.cache_dir / "public" / "samples" / "fileset.json").is_file()
