"""The reverse path end to end: workers in namespaces reachable only via Traefik."""

from __future__ import annotations

import numpy as np
import pytest
from tunnel_fixtures import Facility, facility, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _matmul_sum(client, n: int = 2000, chunk: int = 500) -> float:
    import dask.array as da

    x = da.ones((n, n), chunks=(chunk, chunk))
    return float(client.compute((x @ x.T).sum()).result(timeout=60))


def _incoming_transfers(client) -> int:
    def count(dask_worker):
        return dask_worker.state.transfer_incoming_count_total

    return sum(client.run(count).values())


def test_workers_behind_nat_compute_and_gather(facility: Facility):
    w1 = facility.start_worker("w1")
    w2 = facility.start_worker("w2")
    facility.wait_tunnel_routes(2)
    with facility.client() as client:
        client.wait_for_workers(2, timeout=30)
        addrs = sorted(client.scheduler_info()["workers"])
        assert all(a.startswith("gateway://") and "/alpha-w" in a for a in addrs), addrs
        # scheduler -> worker (broadcast) goes through the reverse path
        assert len(client.run(lambda: 1)) == 2
        n = 2000
        assert _matmul_sum(client, n) == float(n) ** 3
        assert _incoming_transfers(client) > 0, "no worker-to-worker transfer happened"
        big = client.submit(np.ones, 20 * 2**20 // 8, pure=False)
        arr = big.result(timeout=60)
        assert arr.nbytes == 20 * 2**20 and float(arr.sum()) == arr.size
    assert w1.alive() and w2.alive()
