"""Accounting and metrics of worker jobs (issue 20), on loopback.

Real parts: the embedded DiracX (its job search, PATCH /api/jobs/metadata and
the embedded accounting read route), dask-gateway-server with the gridhub
DIRAC backend (``/api/v1/usage``, ``/api/v1/metrics``), Traefik. The stand-in
local site measures each job as DIRAC's JobWrapper would and records it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import dask.array as da
import httpx
import pytest
from gateway_fixtures import Facility, final_jobs, running_cluster
from gridhub.accounting import fetch_usage, totals, usage
from gridhub.dirac import FINAL_STATES
from gridhub.embedded.users import USER_GROUP, dirac_user_name
from processes import LocalSiteProcess, free_port, wait_for

USER = "acct_user"
SITE = "LCG.Local.gridhub"
METRICS_TOKEN = secrets.token_hex(16)


class MetricsFacility(Facility):
    def config(self, **overrides: object) -> str:
        return super().config(DiracBackend__metrics_token=METRICS_TOKEN, **overrides)


@pytest.fixture(scope="module")
def facility(tmp_path_factory, diracx_server, diracx_local_site):
    f = MetricsFacility(tmp_path_factory.mktemp("acct"), diracx_server, diracx_local_site)
    yield f
    f.stop()


def metrics(facility: Facility, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(
        facility.public_url + "/api/v1/metrics", headers=headers, verify=str(facility.cert)
    )


def get(facility: Facility, path: str, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(
        facility.public_url + path, headers=headers, verify=str(facility.cert), timeout=30
    )


def check_scheduler_relay(facility: Facility, cluster: str) -> None:
    """Prometheus' service discovery of the running schedulers, and a scheduler's own
    metrics relayed by the gateway (gateway/scrape.py; docs/monitoring.md)."""
    assert get(facility, "/api/v1/metrics/schedulers", None).status_code == 401
    found = get(facility, "/api/v1/metrics/schedulers").json()
    (target,) = [t for t in found if t["labels"]["cluster"] == cluster]
    assert target["labels"]["user"] == USER
    # the path as Prometheus scrapes it: with the prefix Traefik strips
    path = target["labels"]["__metrics_path__"]
    origin, _, prefix = facility.public_url.partition("://")[2].partition("/")
    assert path.startswith(f"/{prefix}/api/v1/metrics/schedulers/"), path
    relayed = httpx.get(
        f"https://{origin}{path}",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        verify=str(facility.cert),
        timeout=30,
    )
    assert relayed.status_code == 200, relayed.text[-500:]
    workers = sum(
        float(line.rsplit(" ", 1)[1])
        for line in relayed.text.splitlines()
        if line.startswith("dask_scheduler_workers{")
    )
    assert workers == 2, relayed.text[:2000]
    assert get(facility, "/api/v1/metrics/schedulers/no-such-cluster").status_code == 404


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_worker_jobs_are_accounted_per_user_group_and_cluster(facility):
    with facility.client(USER) as gateway:
        check_accounting(facility, gateway)


def check_accounting(facility, gateway) -> None:
    with running_cluster(gateway, 2, timeout=120) as (cluster, client):
        name = cluster.name
        x = da.random.RandomState(1).random((1500, 1500), chunks=(500, 500))
        assert float(client.compute((x @ x.T).sum()).result(timeout=120)) > 0

        # the metrics answer while the cluster runs, and count it
        assert metrics(facility, None).status_code == 401
        bad = metrics(facility, "not-the-token")
        assert bad.status_code == 403 and "wrong metrics token" in bad.text
        r = metrics(facility)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert sample(r.text, "gridhub_gateway_clusters", user=USER, state="RUNNING") == 1

        # the gateway learns that a worker runs from the scheduler's next
        # heartbeat, which may come after the client saw the worker join
        def two_running():
            r = metrics(facility)
            return sample(r.text, "gridhub_gateway_workers", user=USER, state="RUNNING") == 2 and r

        r = wait_for(two_running, 60, "2 RUNNING workers in the gateway's metrics", facility.logs)
        running_here = sample(r.text, "gridhub_gateway_worker_jobs", status="Running", site=SITE)
        assert running_here >= 2, r.text
        assert sample(r.text, "gridhub_gateway_dirac_up") == 1
        check_scheduler_relay(facility, name)
        client.close()

    jobs = final_jobs(facility.diracx, name, facility.logs)
    assert len(jobs) == 2, jobs

    # the user's own accounting, through the gateway as a notebook asks it;
    # a job the gateway killed is final in DiracX before its site has
    # stopped it and recorded what it used (as with DIRAC's JobWrapper)
    data = wait_for(
        lambda: (
            (d := fetch_usage(gateway))
            and len(d["jobs"]) == len(jobs)
            # what each used and how it ended: the record is final (a read
            # before its exit status came could differ from the next one)
            and all(r["cpu_s"] is not None and r["exit_status"] is not None for r in d["jobs"])
            and d
        ),
        30,
        "the site recorded what each job used and how it ended",
        facility.logs,
        interval=0.5,
        retry=(),
    )
    records = {r["job_id"]: r for r in data["jobs"]}
    assert set(records) == {j["JobID"] for j in jobs}, (data, jobs)
    # every user's jobs, for the admins' usage page (docs/monitoring.md): the same records
    assert get(facility, "/api/v1/usage/all", None).status_code == 401
    everyone = get(facility, "/api/v1/usage/all").json()
    mine = {r["job_id"]: r for r in everyone["jobs"] if r["job_id"] in records}
    assert mine == records
    for j in jobs:
        rec = records[j["JobID"]]
        assert rec["job_group"] == name
        assert rec["status"] == j["Status"]
        assert rec["site"] == SITE
        assert rec["cpu_s"] is not None and rec["cpu_s"] > 0, (rec, facility.site.log()[-3000:])
        assert rec["wall_s"] > 0 and rec["cpu_s"] < rec["wall_s"] * os.cpu_count() + 1
        assert rec["memory_kb"] > 10_000  # a Dask worker is tens of MB
        assert rec["bytes_read"] > 0
        # Done: the worker exited 0; Killed: the site stopped it (a signal, or
        # the worker's own clean exit on SIGTERM)
        if rec["status"] == "Done":
            assert rec["exit_status"] == 0, rec
        else:
            assert rec["status"] == "Killed" and rec["exit_status"] is not None, rec

    # the totals per user and per group match DiracX's own job records
    owner = dirac_user_name(USER)

    async def dirac_view():
        async with facility.diracx.client() as c:
            found = await c.search(
                [{"parameter": "Owner", "operator": "eq", "value": owner}],
                ["JobID", "Owner", "OwnerGroup"],
            )
            params = await c.job_accounting([int(j["JobID"]) for j in found])
        return found, params

    found, params = asyncio.run(dirac_view())
    assert {int(j["JobID"]) for j in found} == set(records)
    cpu = sum(p["CPUTime(ms)"] for p in params.values()) / 1000
    assert cpu > 0
    per_user = data["totals"]["owner"]
    assert list(per_user) == [owner]
    assert per_user[owner]["jobs"] == len(found)
    assert per_user[owner]["cpu_s"] == pytest.approx(cpu, abs=0.01)
    assert per_user[owner]["by_site"] == {SITE: len(found)}
    per_group = data["totals"]["owner_group"]
    assert {g: t["jobs"] for g, t in per_group.items()} == {USER_GROUP: len(found)}
    assert {j["OwnerGroup"] for j in found} == {USER_GROUP}
    assert per_group[USER_GROUP]["cpu_s"] == pytest.approx(cpu, abs=0.01)
    assert data["totals"]["job_group"][name]["jobs"] == 2

    # gridhub.usage(): the same as a table (and a plot, headless here)
    os.environ.setdefault("MPLBACKEND", "Agg")
    frame = usage(gateway)
    assert sorted(frame["job_id"]) == sorted(records)
    assert set(frame["cluster"]) == {name}
    assert (frame["cpu_s"] > 0).all()


def test_totals_refuse_an_unknown_grouping():
    with pytest.raises(ValueError, match="totals by 'owners': choose one of owner, "):
        totals([], "owners")


def test_a_user_reads_only_their_own_jobs_accounting(facility):
    """The embedded read route: a user's token reads their jobs only."""
    from gridhub.dirac import DiracXClient, DiracXForbidden
    from gridhub.embedded import user_token_source

    async def go():
        async with facility.diracx.client() as admin:
            mine = await admin.search(
                [{"parameter": "Owner", "operator": "eq", "value": dirac_user_name(USER)}],
                ["JobID"],
            )
        tokens = user_token_source(facility.diracx.state_dir, facility.diracx.url, USER)
        async with DiracXClient(facility.diracx.url, tokens) as user:
            own = await user.job_accounting([int(j["JobID"]) for j in mine])
            assert set(own) == {int(j["JobID"]) for j in mine} and own
            # a job that is not theirs (here: none at all) is refused, by id
            with pytest.raises(DiracXForbidden, match=r"not your jobs .*\[999999999\]"):
                await user.job_accounting([int(mine[0]["JobID"]), 999_999_999])
            with pytest.raises(Exception, match="at most 1000 job ids"):
                await user.job_accounting(list(range(1, 1100)))

    t0 = time.monotonic()
    asyncio.run(go())
    assert time.monotonic() - t0 < 30


METRICS_SITE = "LCG.Acct.test"
#: a job of its own (no other site takes a job naming this site): about half
#: a second of CPU in Python, then exit 3 (DIRAC's ClassAd splits values at
#: ";", hence no shell loop)
BUSY_JDL = f"""[
  Executable = "python3";
  Arguments = "-c 'raise SystemExit(3 if sum(range(30_000_000)) else 0)'";
  JobName = "accounting-busy";
  JobGroup = "accounting-test";
  JobType = "User";
  StdOutput = "std.out";
  StdError = "std.err";
  OutputSandbox = {{"std.out", "std.err"}};
  Site = {{"{METRICS_SITE}"}};
]"""


def test_the_site_measures_a_busy_job_and_reports_it_in_its_metrics(diracx_server, tmp_path):
    port = free_port()
    site = LocalSiteProcess(
        diracx_server, tmp_path / "jobs", "--site", METRICS_SITE, "--metrics-port", str(port)
    ).start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: httpx.get(url).status_code == 200, 30, "site metrics", site.log)
        assert httpx.get(url.replace("/metrics", "/other")).status_code == 404

        async def submit_and_wait():
            async with diracx_server.client() as dx:
                (job_id,) = await dx.submit_jdl([BUSY_JDL])
                for _ in range(240):
                    st = (await dx.statuses([job_id]))[job_id]
                    if st.status in FINAL_STATES:
                        break
                    await asyncio.sleep(0.5)
                return job_id, st, (await dx.job_accounting([job_id]))[job_id]

        t0 = time.monotonic()
        job_id, st, params = asyncio.run(submit_and_wait())
        wall = time.monotonic() - t0
        assert st.status == "Failed" and st.minor_status == "exit code 3", (st, site.log())
        assert params["ExitStatus"] == 3
        assert params["AccountingSite"] == METRICS_SITE
        cpu = params["CPUTime(ms)"] / 1000
        # the shell loop's CPU, measured by the site (wait4), within the job's wall time
        assert 0.2 < cpu <= params["WallClockTime(s)"] + 0.05 < wall, (params, wall)
        assert params["TotalCPUTime(s)"] == round(cpu)
        assert params["MemoryUsed(kb)"] > 0

        text = httpx.get(url).text
        site_label = f'site="{METRICS_SITE}"'
        assert f'gridhub_localsite_jobs_finished_total{{{site_label},status="Failed"}} 1' in text
        assert f'gridhub_localsite_jobs{{{site_label},state="Running"}} 0' in text
        assert f"gridhub_localsite_slots{{{site_label}}} 4" in text
        line = next(ln for ln in text.splitlines() if ln.startswith("gridhub_localsite_cpu"))
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(cpu, abs=0.01)
        assert f"Job {job_id}: used " in site.log()
    finally:
        site.stop()
