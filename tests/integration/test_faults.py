"""Faults at the process level: Traefik restarts, DIRAC jobs failing at the
site, DiracX restarting under a running cluster.

Complements test_gateway_dirac.py (gateway restart, DiracX down at creation,
a job killed in DIRAC, zero orphans at stop), which these tests do not repeat.
Real parts: the deployed Traefik configuration, JupyterHub, dask-gateway with
the DIRAC backend, DiracX; the grid site is the local-site stand-in.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from dask_gateway.client import ClusterStatus
from gateway_fixtures import jobs_of, running_cluster, wait_running
from gridhub.dirac import FINAL_STATES
from processes import CONNECTION_ERRORS, kill_processes_in, wait_for
from stack import stack_fixture  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(300)


def total(client, n: int = 40) -> int:
    """Tasks spread over the workers, gathered through the scheduler."""
    futures = client.map(lambda i: i * i, range(n), pure=False)
    return sum(client.gather(futures))


def test_traefik_restart_brings_every_route_back(stack):
    hub_login = stack.hub_url + "/hub/login"
    assert httpx.get(hub_login, timeout=10).status_code == 200
    with stack.client("trudy") as gateway:
        with running_cluster(gateway, 2, timeout=120) as (cluster, client):
            assert total(client) == sum(i * i for i in range(40))

            stack.restart_traefik()

            # no operator action from here on: each route comes back by itself
            wait_for(
                lambda: httpx.get(hub_login, timeout=5).status_code == 200,
                30,
                "the hub's route (file provider)",
                stack.logs,
                interval=0.5,
                retry=CONNECTION_ERRORS,
            )
            wait_for(
                lambda: httpx.get(stack.public_url + "/api/health", timeout=5).status_code == 200,
                30,
                "the gateway API's route (HTTP provider)",
                stack.logs,
                interval=0.5,
                retry=CONNECTION_ERRORS,
            )
            assert cluster.name in [c.name for c in gateway.list_clusters()]
            # the scheduler's SNI route and the workers' reverse-path routes:
            # the same client computes again, on two workers
            client.wait_for_workers(2, timeout=120)
            assert total(client) == sum(i * i for i in range(40))
            client.close()
    wait_for(
        lambda: all(j["Status"] in FINAL_STATES for j in jobs_of(stack.diracx, cluster.name)),
        60,
        "no orphaned job",
        stack.logs,
        interval=0.5,
        retry=CONNECTION_ERRORS,
    )


def job_dir_of(stack, job_id: int) -> Path:
    return stack.site.jobs_dir / str(job_id)


def fail_at_site(stack, job_id: int) -> None:
    """The job's processes die (SIGKILL): the site reports it Failed, exit code -9."""
    wait_for(
        lambda: kill_processes_in(job_dir_of(stack, job_id)),
        60,
        f"processes of job {job_id} to kill",
        stack.logs,
        interval=0.5,
        retry=CONNECTION_ERRORS,
    )


class FailEveryJobOf(threading.Thread):
    """A site where the cluster's workers die as soon as they start."""

    def __init__(self, stack, cluster_name: str) -> None:
        super().__init__(daemon=True)
        self.jobs_dir, self.marker = stack.site.jobs_dir, f"GRIDHUB_CLUSTER_NAME={cluster_name}"
        self.killed: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for env in self.jobs_dir.glob("*/worker.env"):
                try:
                    ours = self.marker in env.read_text()
                except OSError:
                    continue
                if ours and kill_processes_in(env.parent):
                    self.killed.add(env.parent.name)
            time.sleep(0.1)


def test_a_worker_failing_at_the_site_is_replaced_and_the_result_is_right(stack):
    with stack.client("frank") as gateway:
        with running_cluster(gateway, 2, timeout=120) as (cluster, client):
            # Fail a job the gateway knows is running (it learns from the next
            # scheduler heartbeat; earlier is docs/faults.md's heartbeat race).
            names = [w["name"] for w in client.scheduler_info()["workers"].values()]
            wait_for(
                lambda: all(
                    f"Worker {n} is running" in stack.gateway.logfile.read_text() for n in names
                ),
                30,
                "the gateway sees both workers running",
                stack.logs,
                interval=0.5,
                retry=CONNECTION_ERRORS,
            )
            futures = client.map(lambda i: __import__("time").sleep(0.5) or i, range(30))
            (victim, *_) = [j["JobID"] for j in jobs_of(stack.diracx, cluster.name)]
            fail_at_site(stack, victim)
            assert sum(client.gather(futures)) == sum(range(30))
            # a replacement job running
            wait_running(stack.diracx, cluster.name, 2, stack.logs, retry=CONNECTION_ERRORS)
            jobs = {j["JobID"]: j for j in jobs_of(stack.diracx, cluster.name)}
            # The site reports Failed with the exit code. The gateway, seeing the
            # worker gone, kills its job: on a loaded machine that kill can land
            # first, while the site is still uploading the job's output.
            assert jobs[victim]["Status"] in ("Failed", "Killed"), jobs[victim]
            if jobs[victim]["Status"] == "Failed":
                assert "exit code -9" in jobs[victim]["ApplicationStatus"], jobs[victim]
            assert len(jobs) == 3, f"not exactly one replacement: {jobs}\n{stack.logs()}"
            client.close()


def test_workers_that_keep_failing_at_start_fail_the_cluster(stack):
    """dask-gateway's worker_start_failure_limit (3 in a row): then the
    cluster fails, and none of its jobs is left alive."""
    with stack.client("grace") as gateway:
        cluster = gateway.new_cluster()
        site = FailEveryJobOf(stack, cluster.name)
        site.start()
        try:
            cluster.scale(1)
            wait_for(
                lambda: gateway.get_cluster(cluster.name).status == ClusterStatus.FAILED,
                180,
                "the cluster failed",
                stack.logs,
                interval=0.5,
                retry=CONNECTION_ERRORS,
            )
            jobs = jobs_of(stack.diracx, cluster.name)
            assert len(jobs) >= 3, jobs
            assert all(j["Status"] in FINAL_STATES for j in jobs), jobs
            assert {j["ApplicationStatus"] for j in jobs} == {"Failed with exit code -9"}, jobs
            assert "consecutive workers fail to start, failing the cluster" in stack.gateway.log()
            # What the user is told when they act on the cluster.
            with pytest.raises(Exception) as err:
                cluster.scale(1)
            assert "failed at the site" in str(err.value), err.value
            assert "Failed with exit code -9" in str(err.value), err.value
        finally:
            site.done.set()
            cluster.shutdown()


def test_a_replacement_worker_starts_after_diracx_restarts(stack):
    """The cluster's sandbox was uploaded before DiracX restarted: the
    replacement job still gets it (the embedded sandbox store persists)."""
    with stack.client("heidi") as gateway:
        with running_cluster(gateway, 1, timeout=120) as (cluster, client):
            (old,) = [w["name"] for w in client.scheduler_info()["workers"].values()]
            (victim,) = [j["JobID"] for j in jobs_of(stack.diracx, cluster.name)]
            stack.diracx.stop()
            stack.diracx.start()
            fail_at_site(stack, victim)

            def replaced() -> bool:
                jobs = [j for j in jobs_of(stack.diracx, cluster.name) if j["JobID"] != victim]
                failed = [j for j in jobs if j["Status"] == "Failed"]
                assert not failed, f"replacement jobs failed: {failed}\n{stack.site.log()}"
                names = [w["name"] for w in client.scheduler_info()["workers"].values()]
                return any(j["Status"] == "Running" for j in jobs) and names and old not in names

            wait_for(
                replaced,
                120,
                "a replacement worker in the cluster",
                stack.logs,
                interval=0.5,
                retry=CONNECTION_ERRORS,
            )
            assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
            client.close()


def test_a_new_facilitys_first_sandbox_uploads_at_once_all_succeed(tmp_path):
    """A fresh DiracX registers the sandbox owner at the first upload; a new
    cluster's workers upload at once. (Without the client's retry, 3 of 4
    failed with a 500, three worker start failures: the cluster's limit.)"""
    from processes import EmbeddedDiracX

    fresh = EmbeddedDiracX(tmp_path / "state").start()
    try:

        async def uploads():
            async with fresh.client() as c:
                return await asyncio.gather(
                    *[c.upload_sandbox({"f": bytes([i])}) for i in range(4)],
                    return_exceptions=True,
                )

        results = asyncio.run(uploads())
        assert all(isinstance(r, str) and r.startswith("SB:") for r in results), results
    finally:
        fresh.stop()
