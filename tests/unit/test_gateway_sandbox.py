"""DiracBackend uploads a cluster's sandbox while its scheduler starts: once,
kept in the cluster's state whatever order the two finish in."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from dask_gateway_server.backends.local import UnsafeLocalBackend
from gridhub.gateway.backend import DiracBackend


@pytest.mark.parametrize("scheduler_seconds", [0.0, 0.2])
def test_sandbox_uploaded_once_and_kept_in_state(monkeypatch, scheduler_seconds) -> None:
    async def scheduler_start(self, cluster):  # LocalBackend's two state steps
        yield {"workdir": "/w"}
        await asyncio.sleep(scheduler_seconds)
        yield {"workdir": "/w", "pid": 1}

    monkeypatch.setattr(UnsafeLocalBackend, "do_start_cluster", scheduler_start)
    uploads = []

    async def upload_sandbox(files):
        uploads.append(files)
        await asyncio.sleep(0.1)
        return "SB:store|/s.tar.bz2"

    b = DiracBackend()
    b.dirac = SimpleNamespace(upload_sandbox=upload_sandbox)
    b._facility_ca = None
    b.public_dask_address = "facility:8786"
    b.worker_env = lambda cluster: {}
    b.job_worker_command = lambda cluster: ["gridhub-worker"]
    cluster = SimpleNamespace(
        name="c1", username="alice", state={}, tls_cert=b"cert", tls_key=b"key"
    )

    def update_cluster(c, state):  # what dask-gateway's DB does with each yield
        c.state = state

    b.db = SimpleNamespace(update_cluster=update_cluster)

    async def main() -> str:
        async for state in b.do_start_cluster(cluster):
            update_cluster(cluster, state)  # as _cluster_to_submitted does
        return await b.cluster_sandbox(cluster)  # the first worker

    assert asyncio.run(main()) == "SB:store|/s.tar.bz2"
    assert len(uploads) == 1
    assert cluster.state == {"workdir": "/w", "pid": 1, "sandbox": "SB:store|/s.tar.bz2"}
