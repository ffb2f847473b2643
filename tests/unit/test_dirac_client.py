# ruff: noqa: S105, S106
"""gridhub.dirac against DiracX 0.7's responses (recorded from the embedded
server) served by an httpx MockTransport, plus a real closed port."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from gridhub.dirac import (
    DiracXClient,
    DiracXError,
    DiracXForbidden,
    DiracXJDLRejected,
    DiracXTokenExpired,
    DiracXUnreachable,
    JobState,
    RefreshingToken,
    extract_sandbox,
    make_sandbox,
)
from gridhub.dirac.jdl import command, input_sandbox_pfns, parse_jdl
from static_token import StaticToken

URL = "http://diracx.test.invalid:8000"
SECRET = "eyJ-secret-access-token"


class CountingToken(StaticToken):
    def __init__(self) -> None:
        super().__init__(SECRET)
        self.refreshes = 0

    async def refresh(self) -> str:
        self.refreshes += 1
        return SECRET + "-refreshed"


def client_with(handler, tokens=None, **kw) -> DiracXClient:
    dx = DiracXClient(URL, tokens or StaticToken(SECRET), **kw)
    transport = httpx.MockTransport(handler)

    def factory():
        if dx._http is None:
            dx._http = httpx.AsyncClient(base_url=URL, transport=transport)
            import asyncio

            dx._loop = asyncio.get_running_loop()
        return dx._http

    dx._client = factory  # type: ignore[method-assign]
    return dx


# Recorded from the embedded DiracX 0.7 server.
INSERTED = [
    {
        "JobID": 7,
        "Status": "Received",
        "MinorStatus": "Job accepted",
        "TimeStamp": "2026-11-25T14:00:44.123456Z",
    }
]
BAD_JDL = {"detail": "JDL syntax error"}
UNAUTHORIZED = {"detail": "Invalid JWT"}


async def test_submit_returns_job_ids():
    seen = {}

    def handler(req: httpx.Request):
        seen["auth"] = req.headers["Authorization"]
        seen["body"] = json.loads(req.content)
        return httpx.Response(201, json=INSERTED)

    async with client_with(handler) as dx:
        assert await dx.submit_jdl(['[Executable = "/bin/true"]']) == [7]
    assert seen["auth"] == f"Bearer {SECRET}"
    assert seen["body"] == ['[Executable = "/bin/true"]']


async def test_bad_jdl_raises_jdl_rejected_with_reason():
    async with client_with(lambda r: httpx.Response(400, json=BAD_JDL)) as dx:
        with pytest.raises(DiracXJDLRejected) as err:
            await dx.submit_jdl(["[Executable = "])
    assert err.value.reason.endswith("JDL syntax error")
    assert URL in str(err.value)


async def test_401_refreshes_once_then_token_expired_without_leaking_it():
    calls = []

    def handler(req):
        calls.append(req.headers["Authorization"])
        return httpx.Response(401, json=UNAUTHORIZED)

    tokens = CountingToken()
    async with client_with(handler, tokens) as dx:
        with pytest.raises(DiracXTokenExpired) as err:
            await dx.heartbeat(12, LoadAverage=1.0)
    assert tokens.refreshes == 1
    assert calls == [f"Bearer {SECRET}", f"Bearer {SECRET}-refreshed"]
    assert URL in str(err.value) and "job 12" in str(err.value)
    assert SECRET not in str(err.value)


async def test_401_then_ok_after_refresh():
    def handler(req):
        if req.headers["Authorization"].endswith("refreshed"):
            return httpx.Response(200, json=[{"job_id": 3, "command": "Kill", "arguments": ""}])
        return httpx.Response(401, json=UNAUTHORIZED)

    async with client_with(handler, CountingToken()) as dx:
        assert await dx.heartbeat(3) == ["Kill"]


async def test_403_is_forbidden():
    async with client_with(lambda r: httpx.Response(403, json={"detail": "Forbidden"})) as dx:
        with pytest.raises(DiracXForbidden):
            await dx.kill([5])


async def test_503_is_retried_then_unreachable():
    n = []

    def handler(req):
        n.append(1)
        return httpx.Response(503, json={"detail": "Cache key latest_revision is not ready yet."})

    async with client_with(handler, retries=2) as dx:
        with pytest.raises(DiracXUnreachable) as err:
            await dx.statuses([1])
    assert len(n) == 3
    assert "503" in str(err.value) and URL in str(err.value)


async def test_transient_503_recovers():
    n = []

    def handler(req):
        n.append(1)
        if len(n) == 1:
            return httpx.Response(503)
        return httpx.Response(
            200,
            json=[
                {
                    "JobID": 1,
                    "Status": "Running",
                    "MinorStatus": "Application",
                    "ApplicationStatus": "Unknown",
                }
            ],
        )

    async with client_with(handler) as dx:
        st = await dx.statuses([1])
    assert st[1].status == "Running" and st[1].minor_status == "Application"
    assert not st[1].final


def test_job_state_final_is_after_the_job_can_run_again():
    # the gateway counts a worker's job dead by JobState.final
    for status in ("Done", "Failed", "Killed", "Deleted", "Completed"):
        assert JobState(Status=status).final, status
    for status in ("Received", "Checking", "Waiting", "Matched", "Running", "Completing"):
        assert not JobState(Status=status).final, status


async def test_search_follows_pages():
    def handler(req):
        page = int(req.url.params["page"])
        if page == 1:
            jobs = [{"JobID": i} for i in range(1, 101)]
            return httpx.Response(206, json=jobs, headers={"Content-Range": "jobs 0-99/150"})
        jobs = [{"JobID": i} for i in range(101, 151)]
        return httpx.Response(206, json=jobs, headers={"Content-Range": "jobs 100-149/150"})

    async with client_with(handler) as dx:
        jobs = await dx.search([], ["JobID"])
    assert [j["JobID"] for j in jobs] == list(range(1, 151))


async def test_kill_sets_status_killed_on_live_jobs_only():
    """A final job keeps its status and the reason it ended: DiracX would
    refuse Killed but overwrite its minor status (as DIRAC, only live jobs
    are killed)."""
    bodies = []
    states = {4: "Running", 5: "Failed"}

    def handler(req):
        body = json.loads(req.content)
        bodies.append((req.method, req.url.path, body))
        if req.url.path == "/api/jobs/search":
            (cond,) = body["search"]
            return httpx.Response(
                200,
                json=[
                    {"JobID": i, "Status": states[i], "MinorStatus": "", "ApplicationStatus": ""}
                    for i in cond["values"]
                    if i in states
                ],
            )
        return httpx.Response(200, json={"success": {"4": {}}, "failed": {}})

    async with client_with(handler) as dx:
        await dx.kill([4, 5, 6])
        await dx.kill([5])
    # 6 is not seen (another user's, or gone): DiracX decides (403, 404)
    patches = [(p, b) for m, p, b in bodies if m == "PATCH"]
    assert [(p, sorted(b)) for p, b in patches] == [("/api/jobs/status", ["4", "6"])]
    (update,) = patches[0][1]["4"].values()
    assert update["Status"] == "Killed"


async def test_unreachable_server_is_named_and_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    async with DiracXClient(url, StaticToken(SECRET), retries=2) as dx:
        with pytest.raises(DiracXUnreachable) as err:
            await dx.submit_jdl(['[Executable = "/bin/true"]'])
    assert time.monotonic() - t0 < 30
    assert url in str(err.value)
    assert isinstance(err.value, DiracXError)


async def test_refreshing_token_file_is_rotated(tmp_path):
    f = tmp_path / "credentials.json"
    f.write_text(json.dumps({"access_token": "old", "refresh_token": "r1", "expires_on": 0}))
    tok = RefreshingToken.from_file(URL, f)

    async def fake_request(server, method, path, **kw):
        from gridhub.dirac.models import TokenResponse

        assert kw["data"]["refresh_token"] == "r1"
        return TokenResponse(access_token="new", expires_in=1200, refresh_token="r2")

    import gridhub.dirac.tokens as tokens

    orig = tokens._token_request
    tokens._token_request = fake_request
    try:
        assert await tok.access_token() == "new"
    finally:
        tokens._token_request = orig
    assert json.loads(f.read_text())["refresh_token"] == "r2"
    assert (f.stat().st_mode & 0o777) == 0o600
    assert "new" not in repr(tok) and "r2" not in repr(tok)


def test_sandbox_is_deterministic_and_roundtrips(tmp_path):
    files = {"job.sh": b"echo hi\n", "data/x.txt": b"x"}
    a, b = make_sandbox(files), make_sandbox(dict(reversed(files.items())))
    assert a == b
    extract_sandbox(a, tmp_path)
    assert (tmp_path / "job.sh").read_bytes() == b"echo hi\n"
    assert (tmp_path / "data" / "x.txt").read_bytes() == b"x"


def test_jdl_parsing():
    attrs = parse_jdl(
        '[\n  Executable = "/bin/sh";\n  Arguments = "gridhub-job.sh w-1";\n'
        '  InputSandbox = {"SB:SandboxSE|/S3/sandboxes/a/b/c/sha256:00.tar.bz2", "x.txt"};\n'
        "  NumberOfProcessors = 2;\n]"
    )
    assert command(attrs) == ["/bin/sh", "gridhub-job.sh", "w-1"]
    assert input_sandbox_pfns(attrs) == ["SB:SandboxSE|/S3/sandboxes/a/b/c/sha256:00.tar.bz2"]
    assert attrs["NumberOfProcessors"] == "2"


def _tar(*members: tuple[str, bytes | None, int]) -> tarfile.TarFile:
    """An in-memory tar of (name, content or None for a symlink, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, content, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if content is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


def test_sandbox_members_without_extraction_filters(tmp_path: Path) -> None:
    """The fallback for Pythons without tarfile filters (Debian 12's 3.11.2)
    keeps the "data" filter's policy."""
    from gridhub.dirac.client import _plain_members

    ok = _plain_members(_tar(("a/job.sh", b"x", 0o4777), ("b.env", b"y", 0o600)), tmp_path)
    assert [(m.name, m.mode) for m in ok] == [("a/job.sh", 0o755), ("b.env", 0o600)]
    for bad in (("../evil", b"x", 0o644), ("/etc/evil", b"x", 0o644), ("link", None, 0o777)):
        with pytest.raises(tarfile.TarError, match="not a plain file"):
            _plain_members(_tar(bad), tmp_path)


@pytest.mark.parametrize(
    "call",
    [
        lambda dx: dx.submit_jdl(['[Executable = "/bin/true"]']),
        lambda dx: dx.search([]),
        lambda dx: dx.heartbeat(4, LoadAverage=1.0),
        lambda dx: dx.job_jdl(4),
        lambda dx: dx.job_sandboxes(4),
        lambda dx: dx.download_sandbox(
            "SB:SandboxSE|/S3/b/v/g/u/sha256:" + "0" * 64 + ".tar.bz2", Path("/nonexistent")
        ),
    ],
)
async def test_a_2xx_answer_that_is_not_json_is_a_diracx_error_naming_server_and_call(call):
    # a proxy or captive portal answering for DiracX: 200 with an HTML page
    page = httpx.Response(200, text="<html>Sign in to the network</html>")
    async with client_with(lambda r: page) as dx:
        with pytest.raises(DiracXError) as err:
            await call(dx)
    msg = str(err.value)
    assert URL in msg and "not JSON" in msg, msg
    assert " /api/" in msg, msg  # the call: method and path
