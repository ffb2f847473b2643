"""gridhub.cluster.get_cluster while the grid holds worker jobs back.

Real parts: DiracX, dask-gateway with the DIRAC backend, Traefik. The clusters
of this module's gateway send their jobs to a site no stand-in serves at
first (DiracClusterConfig.sites), so they stay queued in DIRAC; then a local
site stand-in for that site starts and runs them. What get_cluster reports is
checked against DiracX's own job records, and so is what the Dask sidebar's
card shows (dask-labextension's server side with gridhub.hub.sidebar, in a
real Jupyter server configured as the hub configures users' servers).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import dask
import httpx
import pytest
from gateway_fixtures import PASSWORD, HeldFacility, jobs_of
from gridhub.cluster import get_cluster, worker_jobs
from processes import LocalSiteProcess, free_port, wait_for

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


@pytest.fixture
def jupyter_server(held_facility, tmp_path):
    """A Jupyter server with the Dask sidebar's server side, configured as the hub
    configures a user's server (gridhub.hub.config), acting as USER."""
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(
        DASK_LABEXTENSION__FACTORY__MODULE="dask_gateway",
        DASK_LABEXTENSION__FACTORY__CLASS="GatewayCluster",
        DASK_GATEWAY__ADDRESS=held_facility.public_url,
        DASK_GATEWAY__PUBLIC_ADDRESS="/services/dask-gateway",
        DASK_GATEWAY__PROXY_ADDRESS=held_facility.proxy_address,
        DASK_GATEWAY__AUTH__TYPE="basic",
        DASK_GATEWAY__AUTH__KWARGS__USERNAME=USER,
        DASK_GATEWAY__AUTH__KWARGS__PASSWORD=PASSWORD,
    )
    log = tmp_path / "jupyter-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                f"--port={port}",
                "--ip=127.0.0.1",
                "--no-browser",
                "--allow-root",
                f"--ServerApp.root_dir={tmp_path}",
                f"--IdentityProvider.token={token}",
                "--ServerApp.jpserver_extensions=gridhub.hub.sidebar=True",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"token {token}"}
    )
    try:
        wait_for(lambda: api.get("/api/status").status_code == 200, 60, "jupyter server", log)
        yield api
    finally:
        api.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_sidebar_card_shows_held_jobs_and_opens_the_dashboard(
    held_facility, jupyter_server, diracx_server
):
    """The Dask sidebar's server side (dask-labextension + gridhub.hub.sidebar): NEW
    makes a gateway cluster; its card then names the worker job DIRAC holds back and
    why, and the card's dashboard route sends the browser to the cluster's dashboard."""
    api = jupyter_server
    held_facility.client(USER).close()
    card = api.put("/dask/clusters", json={"workers": 1}, timeout=120)  # NEW
    assert card.status_code == 200, card.text
    card = card.json()
    name = card["scheduler_address"].rsplit("/", 1)[-1]
    try:
        prefix = f"/services/dask-gateway/clusters/{name}/"
        assert card["dashboard_link"] == prefix + "status"
        scaled = api.patch(f"/dask/clusters/{card['id']}", json={"workers": 1}, timeout=60)
        assert scaled.status_code == 200, scaled.text  # SCALE on the card

        seen: list = []

        def card_matches_dirac():
            (job,) = jobs_of(diracx_server, name)  # DiracX's own record
            expected = "DIRAC: 1 queued"
            if job["MinorStatus"] and job["MinorStatus"] != "Unknown":
                expected += f" ({job['Status']}: {job['MinorStatus']})"
            (listed,) = api.get("/dask/clusters").json()
            seen[:] = [job, listed["name"]]
            return listed["name"] == f"GatewayCluster 1 · {expected}" and listed

        try:
            listed = wait_for(card_matches_dirac, 90, "the held job on the card")
        except TimeoutError as exc:
            raise AssertionError(f"card and DiracX differ: {seen}\n{exc}") from None
        one = api.get(f"/dask/clusters/{card['id']}").json()
        assert one["name"] == listed["name"] and one["workers"] == 0
        # the card's dashboard: dask/dashboard/<id>/<path> -> the dashboard's path
        plots = api.get(f"/dask/dashboard/{card['id']}/individual-plots.json?x=1")
        assert plots.status_code == 302, plots.text
        assert plots.headers["Location"] == prefix + "individual-plots.json?x=1"
    finally:
        assert api.delete(f"/dask/clusters/{card['id']}", timeout=60).status_code == 204
