"""The embedded DiracX (a real DiracX 0.7 server) and the local site."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import httpx
import pytest
from gridhub.dirac import (
    DiracXClient,
    DiracXJDLRejected,
    DiracXTokenExpired,
    DiracXUnreachable,
)
from gridhub.embedded import API_KEY, SIGNING_KEY, STATE_KEY
from processes import wait_for
from static_token import StaticToken

JOB_SH = b"""\
echo "pid $$" > pid.txt
echo "payload says: $(cat data.txt)"
echo "site $DIRACSITE job $DIRACJOBID"
echo result > result.txt
case "$1" in
  sleep) sleep 300 ;;
  exit) exit "$2" ;;
esac
"""


def run(coro):
    return asyncio.run(coro)


def jdl(pfn: str, args: str) -> str:
    return (
        f'[Executable = "/bin/sh"; Arguments = "job.sh {args}"; JobName = "test {args}";'
        f' InputSandbox = {{"{pfn}"}}; OutputSandbox = {{"std.out", "std.err", "result.txt"}};]'
    )


async def submit(diracx, args: str) -> int:
    async with diracx.client() as dx:
        pfn = await dx.upload_sandbox({"job.sh": JOB_SH, "data.txt": b"hello grid"})
        (job_id,) = await dx.submit_jdl([jdl(pfn, args)])
        return job_id


async def wait_status(diracx, job_id: int, want: set[str], site=None, timeout: float = 60):  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    async with diracx.client() as dx:
        while time.monotonic() < deadline:
            st = (await dx.statuses([job_id]))[job_id]
            if st.status in want:
                return st
            await asyncio.sleep(0.5)
    logs = site.log() if site else ""
    raise AssertionError(f"job {job_id} is {st} after {timeout} s, wanted {want}\n{logs}")


def test_server_serves_discovery_and_keeps_secrets_private(diracx_server):
    print(f"embedded DiracX started in {diracx_server.startup_seconds:.1f} s")
    r = httpx.get(f"{diracx_server.url}/.well-known/openid-configuration")
    assert r.status_code == 200
    assert r.json()["issuer"] == diracx_server.url
    assert r.json()["token_endpoint"] == f"{diracx_server.url}/api/auth/token"
    r = httpx.get(
        f"{diracx_server.url}/api/.well-known/openid-configuration", follow_redirects=True
    )
    assert r.json()["issuer"] == diracx_server.url
    d = diracx_server.state_dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for secret in (SIGNING_KEY, STATE_KEY, API_KEY):
        assert stat.S_IMODE((d / secret).stat().st_mode) == 0o600, secret
    assert (d / "cs" / ".git").is_dir()
    assert (d / "db" / "jobdb.db").is_file()


def test_facility_token_via_legacy_exchange(diracx_server):
    async def go():
        ts = diracx_server.token_source()
        tok = await ts.access_token()
        assert await ts.access_token() == tok  # cached
        assert await ts.refresh() != tok  # refresh_token grant gives a new one
        async with httpx.AsyncClient() as http:
            r = await http.get(
                f"{diracx_server.url}/api/auth/userinfo",
                headers={"Authorization": f"Bearer {await ts.access_token()}"},
            )
        assert r.status_code == 200, r.text
        info = r.json()
        assert (info["vo"], info["dirac_group"], info["preferred_username"]) == (
            "gridhub",
            "gridhub_user",
            "gridhub",
        )
        assert tok not in repr(ts)

    run(go())


def test_bad_jdl_is_rejected_with_the_reason(diracx_server):
    async def go():
        async with diracx_server.client() as dx:
            with pytest.raises(DiracXJDLRejected) as err:
                await dx.submit_jdl(["[Executable = "])
        assert "JDL syntax error" in err.value.reason
        assert diracx_server.url in str(err.value)

    run(go())


def test_invalid_token_is_token_expired(diracx_server):
    async def go():
        async with DiracXClient(diracx_server.url, StaticToken("not-a-token")) as dx:
            with pytest.raises(DiracXTokenExpired) as err:
                await dx.statuses([1])
        assert diracx_server.url in str(err.value)
        assert "not-a-token" not in str(err.value)

    run(go())


def test_job_with_sandbox_runs_on_the_local_site_and_ends_done(diracx_server, diracx_local_site):
    job_id = run(submit(diracx_server, "ok"))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, diracx_local_site))
    assert st.status == "Done", (st, diracx_local_site.log())

    async def check():
        async with diracx_server.client() as dx:
            (job,) = await dx.search(
                [{"parameter": "JobID", "operator": "eq", "value": job_id}], ["Site"]
            )
            assert job["Site"] == "LCG.Local.gridhub"
            sbs = await dx.job_sandboxes(job_id)
            assert len(sbs["Output"]) == 1
            dest = diracx_local_site.work_dir / f"out-{job_id}"
            await dx.download_sandbox(sbs["Output"][0], dest)
            assert (dest / "result.txt").read_text() == "result\n"
            # (the job's directory is gone: its output is in the output sandbox)
            out = (dest / "std.out").read_text()
            assert "payload says: hello grid" in out
            assert f"site LCG.Local.gridhub job {job_id}" in out

    run(check())


def test_job_exiting_3_ends_failed(diracx_server, diracx_local_site):
    job_id = run(submit(diracx_server, "exit 3"))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, diracx_local_site))
    assert st.status == "Failed"
    assert st.minor_status == "exit code 3"

    # The gateway kills the job of every worker it gives up on, failed ones
    # included: the job keeps its status and the reason it failed.
    async def kill_and_read():
        async with diracx_server.client() as dx:
            await dx.kill([job_id])
            return (await dx.statuses([job_id]))[job_id]

    st = run(kill_and_read())
    assert (st.status, st.minor_status) == ("Failed", "exit code 3"), st


def test_killed_job_ends_killed_and_its_process_is_gone(diracx_server, diracx_local_site):
    job_id = run(submit(diracx_server, "sleep"))
    run(wait_status(diracx_server, job_id, {"Running"}, diracx_local_site))
    pid_file = diracx_local_site.jobs_dir / str(job_id) / "pid.txt"
    wait_for(pid_file.exists, 30, f"{pid_file}")
    pid = int(pid_file.read_text().split()[1])
    os.kill(pid, 0)  # it runs

    async def kill():
        async with diracx_server.client() as dx:
            await dx.kill([job_id])

    run(kill())
    st = run(wait_status(diracx_server, job_id, {"Killed", "Done", "Failed"}, diracx_local_site))
    assert st.status == "Killed"

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 15, f"job {job_id}'s process {pid} to end after Kill", retry=())


def test_unreachable_server_fails_fast_naming_it(diracx_server):
    async def go():
        dead = f"http://127.0.0.1:{diracx_server.port}"
        diracx_server.stop()
        try:
            async with DiracXClient(dead, StaticToken("x"), retries=2) as dx:
                t0 = time.monotonic()
                with pytest.raises(DiracXUnreachable) as err:
                    await dx.submit_jdl(['[Executable = "/bin/true"]'])
                assert time.monotonic() - t0 < 30
            assert dead in str(err.value)
        finally:
            diracx_server.start()

    run(go())


def test_restart_keeps_keys_databases_and_jobs(diracx_server, diracx_local_site):
    d = diracx_server.state_dir
    secrets_before = {f: (d / f).read_bytes() for f in (SIGNING_KEY, STATE_KEY, API_KEY)}
    cs_head = (d / "cs" / ".git" / "refs" / "heads" / "master").read_text()

    async def snapshot():
        async with diracx_server.client() as dx:
            return {j["JobID"]: j["Status"] for j in await dx.search([], ["JobID", "Status"])}

    before = run(snapshot())
    assert before
    diracx_server.stop()
    diracx_server.start()
    assert {f: (d / f).read_bytes() for f in secrets_before} == secrets_before
    assert (d / "cs" / ".git" / "refs" / "heads" / "master").read_text() == cs_head
    after = run(snapshot())
    assert {k: after[k] for k in before} == before
    # and it still runs jobs (the local site kept polling through the restart)
    job_id = run(submit(diracx_server, "ok"))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, diracx_local_site))
    assert st.status == "Done"
