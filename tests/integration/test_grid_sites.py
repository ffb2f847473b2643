"""Two stand-in sites sharing one DiracX (issue 16: requirements and sites).

Real processes: the embedded DiracX and two local-site processes given the same
site catalogue, one offering the GPU tag. The jobs name only these two sites,
so the session's own local site (LCG.Local.gridhub) leaves them alone.
"""

from __future__ import annotations

import json
import re

import pytest
from gridhub.gateway.jdl import WorkerJob
from processes import LocalSiteProcess
from test_dirac_embedded import run, wait_status

pytestmark = pytest.mark.timeout(300)

PLAIN, GPU = "LCG.Plain.test", "LCG.GPU.test"
CATALOGUE = {PLAIN: [], GPU: ["GPU"]}


def jdl(**requirements) -> str:
    """A worker-shaped JDL as the gateway writes it, running `echo` instead."""
    text = WorkerJob(
        cluster_name="sites-test",
        worker_name="w",
        username="alice",
        sandbox_pfn="unused",
        sites=(PLAIN, GPU),
        **requirements,
    ).jdl()
    text = re.sub(r'Executable = "[^"]*"', 'Executable = "/bin/echo"', text)
    text = re.sub(r'Arguments = "[^"]*"', 'Arguments = "ran"', text)
    return re.sub(r"\s*InputSandbox = \{[^}]*\};", "", text)


@pytest.fixture(scope="module")
def two_sites(diracx_server, tmp_path_factory):
    catalogue = json.dumps(CATALOGUE)
    sites = {
        name: LocalSiteProcess(
            diracx_server,
            tmp_path_factory.mktemp(name) / "jobs",
            "--site",
            name,
            "--site-catalogue",
            catalogue,
            "--job-memory",
            "1G",
        ).start()
        for name in CATALOGUE
    }
    yield sites
    for site in sites.values():
        site.stop()


async def submit_all(diracx, jdls: list[str]) -> list[int]:
    async with diracx.client() as dx:
        return [job_id for text in jdls for job_id in await dx.submit_jdl([text])]


async def jobs_of(diracx, ids: list[int]) -> dict[int, dict]:
    async with diracx.client() as dx:
        found = await dx.search(
            [{"parameter": "JobID", "operator": "in", "values": ids}],
            ["JobID", "Status", "Site"],
        )
    return {int(j["JobID"]): j for j in found}


def started_at(sites: dict[str, LocalSiteProcess], job_id: int) -> list[str]:
    """The sites whose log says they started the job (each must be one)."""
    return [
        name
        for name, site in sites.items()
        if re.search(rf"Job {job_id}: \w+ -> Running at ", site.log())
    ]


def test_jobs_go_to_the_one_site_that_fits(diracx_server, two_sites):
    plain = run(submit_all(diracx_server, [jdl() for _ in range(6)]))
    gpu = run(submit_all(diracx_server, [jdl(tags=["GPU"]) for _ in range(3)]))
    for job_id in plain + gpu:
        run(wait_status(diracx_server, job_id, {"Done"}, timeout=120))
    jobs = run(jobs_of(diracx_server, plain + gpu))
    for job_id in gpu:
        assert jobs[job_id]["Site"] == GPU, jobs[job_id]
    # plain jobs spread over both sites; each job was started by one site only
    assert {jobs[j]["Site"] for j in plain} == {PLAIN, GPU}
    for job_id in plain + gpu:
        assert started_at(two_sites, job_id) == [jobs[job_id]["Site"]], job_id


def test_a_job_no_site_fits_waits_untouched(diracx_server, two_sites):
    waiting = run(submit_all(diracx_server, [jdl(tags=["TPU"]), jdl(tags=["GPU"], memory_mb=2048)]))
    # a job that fits, submitted after them, runs: the sites have looked at them
    (later,) = run(submit_all(diracx_server, [jdl(tags=["GPU"])]))
    run(wait_status(diracx_server, later, {"Done"}, timeout=120))
    jobs = run(jobs_of(diracx_server, waiting))
    for job_id in waiting:
        assert jobs[job_id]["Status"] in ("Received", "Waiting"), jobs[job_id]
        assert started_at(two_sites, job_id) == []
    assert "needs 2048 MB, this site's slots have 1024 MB" in two_sites[GPU].log()

    async def kill() -> None:
        async with diracx_server.client() as dx:
            await dx.kill(waiting)

    run(kill())
