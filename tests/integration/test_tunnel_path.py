"""The reverse path end to end: workers in namespaces reachable only via Traefik."""

from __future__ import annotations

import time

import numpy as np
import pytest
from processes import wait_for
from tunnel_fixtures import Facility, facility_fixture, kill_tunnel  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _matmul(n: int = 2000, chunk: int = 500):
    import dask.array as da

    x = da.ones((n, n), chunks=(chunk, chunk))
    return (x @ x.T).sum()


def _incoming_transfers(client) -> int:
    def count(dask_worker):
        return dask_worker.state.transfer_incoming_count_total

    return sum(client.run(count).values())


@pytest.mark.parametrize("ssh_client", ["asyncssh", "openssh"])
def test_workers_behind_nat_compute_and_gather(facility: Facility, ssh_client: str):
    """asyncssh: SSH inside TLS (SNI gridhub-tunnel); openssh: ``ssh -N``
    speaking plain SSH to the same Traefik port (non-TLS catch-all router)."""
    w1 = facility.start_worker("w1", client=ssh_client)
    w2 = facility.start_worker("w2", client=ssh_client)
    facility.wait_tunnel_routes(2)
    with facility.client() as client:
        client.wait_for_workers(2, timeout=30)
        addrs = sorted(client.scheduler_info()["workers"])
        assert all(a.startswith("gateway://") and "/alpha-w" in a for a in addrs), addrs
        # scheduler -> worker (broadcast) goes through the reverse path
        assert len(client.run(lambda: 1)) == 2
        n = 2000
        assert float(client.compute(_matmul(n)).result(timeout=60)) == float(n) ** 3
        assert _incoming_transfers(client) > 0, "no worker-to-worker transfer happened"
        big = client.submit(np.ones, 20 * 2**20 // 8, pure=False)
        arr = big.result(timeout=60)
        assert arr.nbytes == 20 * 2**20 and float(arr.sum()) == arr.size
    assert w1.alive() and w2.alive()
    # the tunnel service saw the workers' own addresses (PROXY protocol)
    assert f"peer={w1.node.ns_ip}:" in facility.tunnel.text()
    for w in (w1, w2):
        assert f"(route alpha-{w.name[len('worker-') :]}-" in w.text()
        assert f"client {ssh_client})" in w.text(), w.text()[-2000:]
        assert "trying asyncssh" not in w.text()


def test_without_reverse_path_it_fails(facility: Facility):
    """Same computation, workers advertising their namespace address: the
    isolation is real, so it cannot complete."""
    facility.start_worker("n1", reverse=False)
    facility.start_worker("n2", reverse=False)
    with facility.client() as client:
        # registering works: that is the worker's own outbound connection
        client.wait_for_workers(2, timeout=30)
        addrs = list(client.scheduler_info()["workers"])
        assert all(a.startswith("tls://10.") for a in addrs), addrs
        with pytest.raises(Exception):  # noqa: B017 - timeout or comm error
            client.compute(_matmul()).result(timeout=30)
        with pytest.raises(Exception):  # noqa: B017
            client.run(lambda: 1, timeout=5)


@pytest.mark.parametrize("ssh_client", ["asyncssh", "openssh"])
def test_killed_tunnel_mid_computation_reschedules(facility: Facility, ssh_client: str):
    w1 = facility.start_worker("k1", gridhub_args=("--keepalive", "2"), client=ssh_client)
    # k2's path is cut for good: no re-opening (a gateway restart is the
    # other case, where the path comes back; see test_gateway_dirac.py).
    w2 = facility.start_worker(
        "k2", gridhub_args=("--keepalive", "2", "--reconnect-for", "0"), client=ssh_client
    )
    facility.wait_tunnel_routes(2)
    with facility.client() as client:
        client.wait_for_workers(2, timeout=30)
        from dask import delayed

        def _slow(i: int) -> int:  # local: pickled by value (workers can't import tests)
            time.sleep(0.25)
            return i

        parts = [delayed(_slow)(i, dask_key_name=f"slow-{i}") for i in range(60)]
        total = client.compute(delayed(sum)(parts))

        def started_on_both():
            done = client.run(lambda dask_worker: dask_worker.state.executed_count)
            return len(done) == 2 and all(v >= 2 for v in done.values())

        wait_for(started_on_both, 30, "tasks running on both workers")
        assert kill_tunnel(w2.node.ns, w2.pid) >= 1
        assert total.result(timeout=90) == sum(range(60))
        # the worker behind the cut tunnel was stopped by gridhub-worker
        wait_for(lambda: not w2.alive(), 30, "k2 to exit")
        assert w2.popen.returncode == 75
        assert len(client.scheduler_info()["workers"]) == 1
    assert w1.alive()
    assert "reverse path closed, stopping the worker" in w2.text()
