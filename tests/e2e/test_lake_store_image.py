"""The xrootd image's ``store`` role (images/xrootd/gridhub-lake): the analysis
cache's server and its cleaner, as the image runs them.

The container runs read-only as ``xrootd`` with tmpfs where compose would put
volumes. It trusts the facility's issuer the way the compose lake does: the
issuer's certificate is mounted as ``/srv/gridhub/certs/facility.crt``. The
issuer is the hub's own app (gridhub.hub.storagetokens) on this host, reached
from the container as ``gridhub-issuer`` (Docker's host-gateway); the API
(gridhub.analysiscache) runs on this host against the container's published
port, trusting the store's certificate copied out of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time

import pytest
from dockerharness import RUN_ID, TEST_LABEL, build_image, docker
from gridhub import cachepolicy
from gridhub.hub import storagetokens

pytestmark = pytest.mark.timeout(420, func_only=True)
AUDIENCE = "https://gridhub.test/lake"
ISSUER_HOST = "gridhub-issuer"


@pytest.fixture(scope="module")
def xrootd_image() -> str:
    return build_image("xrootd")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # noqa: S104 - the container reaches it through the gateway
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    """The hub's issuer app on 0.0.0.0 (HTTPS, a certificate for ISSUER_HOST)."""
    from tornado import ioloop

    d = tmp_path_factory.mktemp("issuer")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={ISSUER_HOST}",
         "-addext", f"subjectAltName=DNS:{ISSUER_HOST}",
         "-keyout", str(d / "key.pem"), "-out", str(d / "facility.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (d / "facility.crt").chmod(0o644)
    d.chmod(0o755)
    port = _free_port()
    url = f"https://{ISSUER_HOST}:{port}/services/gridhub-storage"
    key = storagetokens.load_or_create_key(d / "issuer.pem")
    iss = storagetokens.Issuer(url, AUDIENCE, key)
    app = storagetokens.make_app("/services/gridhub-storage/", iss, "http://127.0.0.1:9", 600)
    ready, held = threading.Event(), {}

    def serve() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(d / "facility.crt", d / "key.pem")
        app.listen(port, "0.0.0.0", ssl_options=ctx)  # noqa: S104
        held["loop"] = ioloop.IOLoop.current()
        ready.set()
        held["loop"].start()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    iss.cert_dir = d  # type: ignore[attr-defined]
    yield iss
    held["loop"].add_callback(held["loop"].stop)


@pytest.fixture(scope="module")
def store(xrootd_image, issuer, tmp_path_factory):
    tmpfs = "uid=1000,gid=1000,mode=0700"
    cid = docker(
        "run", "-d", "--label", f"{TEST_LABEL}={RUN_ID}", "--read-only",
        "--add-host", f"{ISSUER_HOST}:host-gateway",
        "--tmpfs", f"/run/xrootd:{tmpfs}", "--tmpfs", f"/srv/lake/store:{tmpfs}",
        "--tmpfs", f"/var/lib/gridhub-lake/tls:{tmpfs}",
        "--tmpfs", "/var/lib/gridhub-lake/ca:uid=1000,gid=1000,mode=0755",
        "-v", f"{issuer.cert_dir}:/srv/gridhub/certs:ro",
        "-p", "127.0.0.1::1094",
        "-e", f"LAKE_ISSUER={issuer.url}", "-e", f"LAKE_AUDIENCE={AUDIENCE}",
        "-e", "LAKE_CACHE_CLEAN_EVERY=2",
        "-e", "GRIDHUB_LAKE_CACHE_DEFAULT_EXPIRY=1h", "-e", "GRIDHUB_LAKE_CACHE_MAX_EXPIRY=2h",
        xrootd_image, "store",
        timeout=120,
    ).stdout.strip()  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "initialization completed" not in (log := _logs(cid)):
            assert time.monotonic() < deadline, log[-4000:]
            time.sleep(1)
        port = int(docker("port", cid, "1094/tcp").stdout.split()[0].rsplit(":", 1)[1])
        ca = tmp_path_factory.mktemp("store-ca")
        # (docker cp does not see a tmpfs: read it through the container)
        pem = docker("exec", cid, "cat", "/var/lib/gridhub-lake/tls/origin.crt").stdout
        (ca / "store.pem").write_text(pem)
        digest = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(ca / "store.pem")],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        (ca / "store.pem").rename(ca / f"{digest}.0")
        yield {"id": cid, "url": f"root://localhost:{port}", "ca": ca}
    finally:
        print(_logs(cid)[-6000:])
        docker("rm", "-f", "-v", cid, check=False, timeout=60)


def _logs(cid: str) -> str:
    p = docker("logs", cid, check=False)
    return p.stdout + p.stderr


API = r"""
import json, sys
from gridhub import analysiscache as cache
spec = json.loads(sys.argv[1])
kw = {k: spec[k] for k in ("group", "expires") if spec.get(k)}
try:
    if spec["op"] == "put":
        cache.put(spec["key"], spec["data"].encode(), token=spec["token"], timeout=20, **kw)
        out = {"ok": True}
    else:
        out = {"ok": cache.get(spec["key"], token=spec["token"], timeout=20, **kw).decode()}
except cache.CacheError as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def _api(store: dict, **spec) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEARER_", "XRD_", "X509_"))}
    env.update(
        GRIDHUB_ANALYSIS_CACHE_URL=store["url"],
        X509_CERT_DIR=str(store["ca"]),
        XRD_CONNECTIONRETRY="1",
        XRD_REQUESTTIMEOUT="20",
    )
    r = subprocess.run(
        [sys.executable, "-c", API, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.stdout.strip(), r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _token(issuer, user: str, groups: list[str], lifetime: int = 600) -> str:
    return issuer.token(user, lifetime, cachepolicy.scopes(user, groups))[0]


def test_the_store_serves_group_areas_by_token_and_cleans(store, issuer):
    alice, carol = _token(issuer, "alice", ["cms"]), _token(issuer, "carol", ["atlas"])
    put = _api(store, op="put", key="h.txt", data="cms data", group="cms", token=alice)
    assert put == {"ok": True}, f"{put}\n{_logs(store['id'])[-4000:]}"
    assert _api(store, op="get", key="h.txt", group="cms", token=alice) == {"ok": "cms data"}
    refused = _api(store, op="get", key="h.txt", group="cms", token=carol)
    assert refused["error"] == "Refused" and "3010" in refused["message"], refused
    refused = _api(store, op="put", key="x", data="x", group="cms", token=carol)
    assert refused["error"] == "Refused", refused
    # the cleaner in the container removes an expired object, keeps the fresh one
    assert _api(store, op="put", key="old", data="o", group="cms", expires="1s", token=alice)["ok"]
    area = "/srv/lake/store" + cachepolicy.group_area("cms")
    deadline = time.monotonic() + 30
    while "old" in (files := docker("exec", store["id"], "ls", area).stdout.split()):
        assert time.monotonic() < deadline, files
        time.sleep(1)
    assert "h.txt" in files and "h.txt.expires" in files and "old.expires" not in files
    log = _logs(store["id"])
    assert f"removed {area}/old" in log, log[-3000:]
    # least privilege: xrootd and the cleaner run as the image's xrootd user
    # (uid 1000), on a read-only root file system
    top = docker("top", store["id"], "-o", "pid,uid,args").stdout.splitlines()
    cleaner = [line for line in top if "gridhub.cacheclean" in line]
    assert cleaner and cleaner[0].split()[1] == "1000", top
    assert all(line.split()[1] == "1000" for line in top[1:]), top
    inspect = json.loads(docker("inspect", store["id"]).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    assert inspect["Config"]["User"] == "xrootd"
    assert alice not in log and carol not in log
    # nothing without a token: the store has no anonymous path
    anon = subprocess.run(
        ["xrdfs", store["url"].removeprefix("root://"), "ls", cachepolicy.group_area("cms")],
        env={**os.environ, "X509_CERT_DIR": str(store["ca"]), "XRD_CONNECTIONRETRY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert anon.returncode != 0 and "3010" in anon.stderr, anon
