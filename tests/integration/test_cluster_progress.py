"""gridhub.cluster.get_cluster while the grid holds worker jobs back.

Real parts: DiracX, dask-gateway with the DIRAC backend, Traefik. The clusters
of this module's gateway send their jobs to a site no stand-in serves at
first (DiracClusterConfig.sites), so they stay queued in DIRAC; then a local
site stand-in for that site starts and runs them. What get_cluster reports is
checked against DiracX's own job records.
"""

from __future__ import annotations

import dask
import pytest
from gateway_fixtures import PASSWORD, HeldFacility, jobs_of
from gridhub.cluster import get_cluster, worker_jobs
from processes import LocalSiteProcess

HELD_SITE = HeldFacility.HELD_SITE
USER = "pat"


@pytest.fixture
def notebook_config(held_facility):
    """Dask config as a notebook server in the facility has it (DASK_GATEWAY__*)."""
    held_facility.client(USER).close()  # the facility stops this user's clusters at the end
    with dask.config.set(
        {
            "gateway.address": held_facility.public_url,
            "gateway.proxy-address": held_facility.proxy_address,
            "gateway.auth.type": "basic",
            "gateway.auth.kwargs": {"username": USER, "password": PASSWORD},
        }
    ):
        yield


def test_get_cluster_reports_held_jobs_with_their_dirac_status(
    held_facility, notebook_config, diracx_server, tmp_path
):
    lines: list[str] = []
    with pytest.raises(TimeoutError) as err:
        get_cluster(workers=1, wait=10, progress=lines.append, poll=1)
    with held_facility.client(USER) as gateway:
        (report,) = gateway.list_clusters()
    name = report.name
    (job,) = jobs_of(diracx_server, name)  # DiracX's own record of the worker job
    assert job["Status"] in ("Received", "Checking", "Waiting"), job
    shown = f"job {job['JobID']} (" in "\n".join(lines)
    assert shown, f"the held job is not in the progress:\n{lines}"
    assert any("1 queued, 0 matched, 0 running; 0 worker(s) connected" in s for s in lines), lines
    assert f"{job['Status']}, {job['MinorStatus'] or '-'}" in lines[-1], (job, lines)
    assert f"job {job['JobID']}" in str(err.value)
    assert "no worker connected within 10 s" in str(err.value)
    assert f"get_cluster(name={name!r})" in str(err.value)

    # Several clusters and no name: get_cluster asks which, naming them.
    with held_facility.client(USER) as gateway:
        other = gateway.new_cluster()
    try:
        with pytest.raises(ValueError) as err:
            get_cluster(workers=1, wait=5, progress=None)
        assert "you have 2 clusters" in str(err.value)
        assert name in str(err.value) and other.name in str(err.value)
        with pytest.raises(ValueError, match=r"no cluster named 'gridhub\.nope'"):
            get_cluster(name="gridhub.nope", progress=None)
    finally:
        other.shutdown()

    # The site comes: the held job runs and the named cluster gets its worker.
    site = LocalSiteProcess(diracx_server, tmp_path / "held-site", "--site", HELD_SITE).start()
    try:
        lines = []
        cluster, client, created = get_cluster(
            workers=1, name=name, wait=180, progress=lines.append, poll=1
        )
        try:
            assert not created and cluster.name == name
            assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
            assert lines[-1] == f"{name}: 1 worker(s) connected", lines
            now = worker_jobs(cluster)
            assert (now.queued, now.matched, now.running) == (0, 0, 1), str(now)
            (job,) = jobs_of(diracx_server, name)
            assert job["Status"] == "Running", job
            assert now.jobs[0]["job_id"] == job["JobID"]
        finally:
            client.close()
            cluster.shutdown()
    finally:
        site.stop()
