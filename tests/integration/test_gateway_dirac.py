"""Dask clusters whose workers are DIRAC jobs, end to end on loopback.

Real parts: the embedded DiracX server, dask-gateway-server with the gridhub
DIRAC backend, Traefik routing by SNI, the reverse path. The one stand-in is
the local site, which runs the facility's DIRAC jobs as processes.
"""

from __future__ import annotations

import asyncio
import time

import dask.array as da
import pytest
from gateway_fixtures import final_jobs, jobs_of, refused, running_cluster, wait_running
from gridhub.dirac import FINAL_STATES, DiracXClient
from processes import wait_for


@pytest.fixture(scope="module")
def facility(dirac_facility):
    return dirac_facility


def kill_job(diracx, job_id: int) -> None:
    async def go():
        async with DiracXClient(diracx.url, diracx.token_source()) as c:
            await c.kill([job_id])

    asyncio.run(go())


def matmul_sum(client) -> float:
    x = da.random.RandomState(42).random((2000, 2000), chunks=(500, 500))
    return float(client.compute((x @ x.T).sum()).result(timeout=120))


def expected_matmul_sum() -> float:

    x = da.random.RandomState(42).random((2000, 2000), chunks=(500, 500)).compute(scheduler="sync")
    return float((x @ x.T).sum())


def test_three_workers_are_dirac_jobs_and_stop_with_the_cluster(facility):
    gateway = facility.client("alice")
    with running_cluster(gateway, 3, timeout=120) as (cluster, client):
        name = cluster.name
        # A computation with worker-to-worker transfers, and a gather of MBs.
        assert matmul_sum(client) == pytest.approx(expected_matmul_sum(), rel=1e-9)
        big = client.submit(lambda: b"x" * (8 * 2**20))
        assert len(big.result(timeout=60)) == 8 * 2**20

        jobs = jobs_of(facility.diracx, name)
        running = [j for j in jobs if j["Status"] == "Running"]
        assert len(running) == 3, jobs
        for j in running:
            assert j["JobGroup"] == name
            assert "alice" in j["JobName"]
            assert j["Owner"]  # the facility's DIRAC identity submitted it
        client.close()
    final = final_jobs(facility.diracx, name, facility.logs)
    assert {j["Status"] for j in final} <= {"Killed", "Done"}, final


def test_a_job_killed_in_dirac_is_replaced_and_the_result_is_right(facility):
    gateway = facility.client("bob")
    with running_cluster(gateway, 2, timeout=120) as (cluster, client):
        x = da.random.RandomState(42).random((2000, 2000), chunks=(500, 500))
        future = client.compute((x @ x.T).sum())
        victim = jobs_of(facility.diracx, cluster.name)[0]["JobID"]
        kill_job(facility.diracx, victim)
        assert float(future.result(timeout=180)) == pytest.approx(expected_matmul_sum(), rel=1e-9)
        # The killed job is gone and another job took its place.
        wait_running(facility.diracx, cluster.name, 2, facility.logs)
        statuses = {j["JobID"]: j["Status"] for j in jobs_of(facility.diracx, cluster.name)}
        assert statuses[victim] == "Killed"
        assert list(statuses.values()).count("Running") == 2
        client.close()


def test_gateway_restart_finds_its_cluster_and_jobs(facility):
    with facility.client("carol") as gateway:
        cluster = gateway.new_cluster(shutdown_on_close=False)
        name = cluster.name
        cluster.scale(1)
        with cluster.get_client() as client:
            client.wait_for_workers(1, timeout=120)
        before = {j["JobID"] for j in jobs_of(facility.diracx, name)}
        cluster.close()

    facility.gateway.stop()
    facility.gateway = facility.start_gateway()

    with facility.client("carol") as gateway:
        assert name in [c.name for c in gateway.list_clusters()]
        cluster = gateway.connect(name, shutdown_on_close=True)
        try:
            with cluster.get_client() as client:
                client.wait_for_workers(1, timeout=60)
                assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
            after = {j["JobID"] for j in jobs_of(facility.diracx, name)}
            assert after == before, "the restarted gateway replaced or lost jobs"
        finally:
            cluster.shutdown()
    wait_for(
        lambda: all(j["Status"] in FINAL_STATES for j in jobs_of(facility.diracx, name)),
        60,
        "no orphaned job",
        facility.logs,
        interval=0.5,
        retry=(),
    )


def test_dirac_down_fails_fast_and_leaves_nothing(facility):
    gateway = facility.client("dave")
    facility.diracx.stop()
    try:
        start = time.monotonic()
        with refused("DIRAC is unreachable") as err:
            gateway.new_cluster()
        assert time.monotonic() - start < 30
        assert isinstance(err.value, ValueError), repr(err.value)
        assert facility.diracx.url.split("//")[1] in str(err.value)
        assert gateway.list_clusters() == []
    finally:
        facility.diracx.start()
    with running_cluster(gateway, 1, timeout=120) as (_, client):
        assert client.submit(lambda: 1 + 1).result(timeout=60) == 2
        client.close()


def test_adaptive_cluster_grows_with_work_and_shrinks_to_zero(facility):
    with facility.client("erin") as gateway:
        cluster = gateway.new_cluster()
        try:
            cluster.adapt(minimum=0, maximum=2)
            with cluster.get_client() as client:
                # Work arrives: the scheduler asks for workers, DIRAC jobs appear.
                futures = client.map(lambda i: __import__("time").sleep(3) or i, range(8))
                assert sum(client.gather(futures, errors="raise")) == sum(range(8))
                assert jobs_of(facility.diracx, cluster.name), "no DIRAC job was submitted"
                del futures  # workers holding results are not retired
                # No work: adaptive scales down to zero and the jobs end.
                wait_for(
                    lambda: not client.scheduler_info()["workers"],
                    120,
                    "scale down",
                    facility.logs,
                    interval=0.5,
                    retry=(),
                )
            wait_for(
                lambda: all(
                    j["Status"] in FINAL_STATES for j in jobs_of(facility.diracx, cluster.name)
                ),
                60,
                "idle workers' jobs ended",
                facility.logs,
                interval=0.5,
                retry=(),
            )
        finally:
            cluster.shutdown()
