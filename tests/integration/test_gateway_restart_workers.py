"""client.restart() on a cluster of DIRAC-job workers (issue 19).

Grid workers run without a nanny (the reverse path carries one port), so
distributed's restart closes them and waits for the deployment to bring
workers back: the gateway sees them gone and submits replacement jobs. After
the restart the same number of workers computes right and every DIRAC job
of the cluster is either running a worker or final.

Real parts: DiracX, dask-gateway with the DIRAC backend, Traefik, the local
site running the jobs, the reverse path.
"""

from __future__ import annotations

import pytest
from gateway_fixtures import final_jobs, jobs_of, running_cluster
from gridhub.dirac import FINAL_STATES

pytestmark = pytest.mark.timeout(420)


def test_client_restart_brings_the_workers_back_and_orphans_nothing(dirac_facility):
    facility = dirac_facility
    with facility.client("restarter") as gateway:
        with running_cluster(gateway, 2, timeout=180) as (cluster, client):
            before = set(client.scheduler_info()["workers"])
            assert client.submit(lambda: 41 + 1).result(timeout=60) == 42
            client.restart(timeout=300)
            after = client.scheduler_info()["workers"]
            assert len(after) == 2 and not before & set(after), (before, after)
            assert sum(client.gather(client.map(lambda x: x * x, range(10)))) == 285
            jobs = jobs_of(facility.diracx, cluster.name)
            running = [j for j in jobs if j["Status"] == "Running"]
            assert len(running) == 2, jobs
            assert all(j["Status"] in FINAL_STATES for j in jobs if j not in running), jobs
            client.close()
    final_jobs(facility.diracx, cluster.name, facility.logs, timeout=120)
