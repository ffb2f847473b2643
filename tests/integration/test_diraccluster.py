"""gridhub.DiracCluster runs the SWIFT-HEP AGC snippet's pattern (issue 16):
DiracCluster(cores, memory), scale(jobs=...), Client(cluster), compute,
gather, close, and every DIRAC job of the cluster ends.

Real parts: DiracX, dask-gateway with the DIRAC backend and its cluster
options, Traefik, the stand-in local site running the worker jobs.
"""

from __future__ import annotations

import dask
import pytest
from dask.distributed import Client
from gateway_fixtures import PASSWORD, Facility, final_jobs
from gridhub import DiracCluster

pytestmark = pytest.mark.timeout(420)


class OptionsFacility(Facility):
    """The facility with the deployed gateway's cluster options."""

    def config(self, **overrides: object) -> str:
        return super().config(**overrides) + (
            "from gridhub.gateway.backend import default_cluster_options\n"
            "c.DiracBackend.cluster_options = default_cluster_options(max_memory_gib=2)\n"
        )


@pytest.fixture(scope="module")
def facility(tmp_path_factory, diracx_server, diracx_local_site):
    f = OptionsFacility(tmp_path_factory.mktemp("diraccluster"), diracx_server, diracx_local_site)
    yield f
    f.stop()


def test_the_seed_snippet_pattern_runs_and_leaves_every_job_final(facility, diracx_server):
    with dask.config.set(
        {
            "gateway.address": facility.public_url,
            "gateway.proxy-address": facility.proxy_address,
            "gateway.auth.type": "basic",
            "gateway.auth.kwargs": {"username": "seed", "password": PASSWORD},
        }
    ):
        cluster = DiracCluster(cores=1, memory="1GB", scheduler_options={"port": 8786})
        cluster.scale(jobs=2)
        client = Client(cluster)
        client.wait_for_workers(2, timeout=240)
        futures = client.map(lambda x: x * x, range(10))
        assert sum(client.gather(futures)) == 285
        name = cluster.name
        client.close()
        cluster.close()
    jobs = final_jobs(diracx_server, name, facility.logs, timeout=120)
    assert len(jobs) >= 2, jobs
