"""Workers of one site talk directly; across sites, through a firewall or
with direct peers switched off, they use the relay (issue 19).

Each site is a LAN of network namespaces behind a router namespace whose
uplink to the host is the only way out (tunnel_fixtures.Network.add_site):
bytes on that uplink are bytes the relay carried for the site. At most two
sites and four workers per test (6 namespaces). The last test takes the
deployed path (gateway, DIRAC jobs, the stand-in site) without namespaces.
"""

from __future__ import annotations

import operator
import socket

import numpy as np
import pytest
from distributed import wait
from gateway_fixtures import final_jobs
from gridhub.tunnel.direct_peers import summary
from tunnel_fixtures import Facility, facility_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(240)

MB = 2**20
ALPHA, BETA = "LCG.Alpha.test", "LCG.Beta.test"


def _workers(client, n: int) -> dict[str, str]:
    """Worker name -> address, once ``n`` workers are connected."""
    client.wait_for_workers(n, timeout=90)
    workers = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
    # the scheduler and the client know only the reverse paths
    assert all(a.startswith("gateway://") for a in workers.values()), workers
    return workers


def _route(address: str) -> str:
    return address.rsplit("/", 1)[1]


def _transfer(client, src: str, dst: str, mb: int) -> int:
    """``mb`` MB made on worker ``src`` and needed by a task on ``dst``: one
    worker-to-worker transfer. Returns the bytes ``dst`` received."""
    big = client.submit(np.ones, mb * MB // 8, workers=[src], pure=False)
    wait(big)
    got = client.submit(operator.attrgetter("nbytes"), big, workers=[dst], pure=False)
    return got.result(timeout=90)


def _alpha_pair(facility: Facility, env: dict[str, str] | None = None):
    """Workers a1 and a2 at site ALPHA, both routed; (the site, a1's process)."""
    site = facility.network.add_site(ALPHA)
    a1 = facility.start_worker("a1", site=site, client="openssh", env=env)
    facility.start_worker("a2", site=site, client="openssh", env=env)
    facility.wait_tunnel_routes(2)
    return site, a1


def _uplink_bytes_of_transfer(client, site, src: str, dst: str, mb: int) -> int:
    """The bytes that crossed ``site``'s uplink while ``mb`` MB went from ``src`` to ``dst``."""
    before = site.uplink_bytes()
    assert _transfer(client, src, dst, mb) == mb * MB
    return site.uplink_bytes() - before


def _summary(client, address: str) -> dict:
    return client.run(summary, workers=[address])[address]


def _matmul(n: int = 1500, chunk: int = 300):
    import dask.array as da

    x = da.ones((n, n), chunks=(chunk, chunk))
    return (x @ x.T).sum()


def test_same_site_workers_transfer_directly(facility: Facility):
    site, w1 = _alpha_pair(facility)
    with facility.client() as client:
        w = _workers(client, 2)
        relayed = _uplink_bytes_of_transfer(client, site, w["a1"], w["a2"], 40)
        # through the relay the 40 MB would cross the uplink twice
        assert relayed < 4 * MB, f"{relayed / MB:.1f} MB crossed the site's uplink"
        peer = _summary(client, w["a2"])["peers"][_route(w["a1"])]
        assert peer["path"] == "direct" and peer["direct_connects"] >= 1, peer
        assert peer["failed_direct"] == 0, peer
        assert float(client.compute(_matmul()).result(timeout=90)) == 1500.0**3
        # nothing outside the site reaches the site listener
        direct = _summary(client, w["a1"])["address"]
        host, port = direct.removeprefix("tls://").rsplit(":", 1)
        assert host == w1.node.ns_ip, direct
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=3).close()
    assert "direct peers: on at site LCG.Alpha.test" in w1.text()


def test_two_sites_direct_inside_relay_between(facility: Facility):
    """Two sites of two workers: same-site transfers stay in the site,
    cross-site ones take the relay without trying the other site."""
    x, y = facility.network.add_site(ALPHA), facility.network.add_site(BETA)
    procs = {
        name: facility.start_worker(name, site=site, client="openssh")
        for name, site in (("x1", x), ("x2", x), ("y1", y), ("y2", y))
    }
    facility.wait_tunnel_routes(4)
    with facility.client() as client:
        w = _workers(client, 4)
        assert float(client.compute(_matmul()).result(timeout=120)) == 1500.0**3

        bx, by = x.uplink_bytes(), y.uplink_bytes()
        assert _transfer(client, w["x1"], w["x2"], 20) == 20 * MB
        assert _transfer(client, w["y2"], w["y1"], 20) == 20 * MB
        dx, dy = x.uplink_bytes() - bx, y.uplink_bytes() - by
        assert dx < 3 * MB and dy < 3 * MB, f"relayed {dx / MB:.1f} / {dy / MB:.1f} MB"

        bx, by = x.uplink_bytes(), y.uplink_bytes()
        assert _transfer(client, w["x1"], w["y1"], 20) == 20 * MB
        dx, dy = x.uplink_bytes() - bx, y.uplink_bytes() - by
        assert dx >= 20 * MB and dy >= 20 * MB, f"relayed {dx / MB:.1f} / {dy / MB:.1f} MB"

        cross = _summary(client, w["y1"])["peers"][_route(w["x1"])]
        assert cross["path"] == "relay" and cross["why"] == f"other site ({ALPHA})", cross
        assert cross["failed_direct"] == 0, cross
        same = _summary(client, w["x2"])["peers"][_route(w["x1"])]
        assert same["path"] == "direct", same
    assert f"peer {_route(w['x1'])}: relay (other site ({ALPHA}))" in procs["y1"].text()


def test_firewalled_node_costs_one_timeout(facility: Facility):
    """A node that drops connections from its own site: the first direct
    attempt times out, the relay takes over and stays the choice for it."""
    site = facility.network.add_site(ALPHA)
    env = {"GRIDHUB_DIRECT_TIMEOUT": "2"}
    a = facility.start_worker("a", site=site, client="openssh", env=env)
    f = facility.start_worker("f", site=site, client="openssh", env=env)
    f.node.refuse_site_peers()
    facility.wait_tunnel_routes(2)
    with facility.client() as client:
        w = _workers(client, 2)

        def forget_connections(peer: str, dask_worker) -> None:
            dask_worker.rpc.remove(peer)  # the next transfer connects anew

        for _ in range(3):
            assert _transfer(client, w["f"], w["a"], 5) == 5 * MB
            client.run(forget_connections, w["f"], workers=[w["a"]])
        peer = _summary(client, w["a"])["peers"][_route(w["f"])]
        assert peer["path"] == "relay" and peer["failed_direct"] == 1, peer
        assert "timed out" in peer["why"].lower(), peer
        assert peer["relay_connects"] >= 3 and peer["direct_connects"] == 0, peer
        # f's own connections pass its firewall: f reaches a directly
        assert _transfer(client, w["a"], w["f"], 5) == 5 * MB
        back = _summary(client, w["f"])["peers"][_route(w["a"])]
        assert back["path"] == "direct", back
    fell_back = [line for line in a.text().splitlines() if "from now on" in line]
    assert len(fell_back) == 1, fell_back
    assert f"peer {_route(w['f'])}: direct " in fell_back[0], fell_back
    assert "timed out" in fell_back[0].lower(), fell_back


def test_direct_peers_off_for_a_site_use_the_relay(facility: Facility):
    env = {"GRIDHUB_DIRECT_PEERS_OFF": f"LCG.Other.test, {ALPHA}"}
    site, a1 = _alpha_pair(facility, env)
    with facility.client() as client:
        w = _workers(client, 2)
        relayed = _uplink_bytes_of_transfer(client, site, w["a1"], w["a2"], 20)
        assert relayed >= 40 * MB, f"only {relayed / MB:.1f} MB crossed the uplink"
        s = _summary(client, w["a2"])
        assert s["address"] is None, s
        assert s["off"] == f"switched off for {ALPHA} (GRIDHUB_DIRECT_PEERS_OFF)", s

        def listening(dask_worker) -> list[str]:
            return [lst.listen_address for lst in dask_worker.listeners]

        for addrs in client.run(listening).values():
            assert len(addrs) == 1 and addrs[0].startswith("tls://127.0.0.1:"), addrs
    assert f"direct peers: off (switched off for {ALPHA}" in a1.text()


def test_dirac_job_workers_of_one_site_transfer_directly(dirac_facility):
    """The deployed path: the gateway submits DIRAC jobs, the stand-in site
    runs them with DIRACSITE, gridhub-worker preloads direct peers. Both
    jobs run at the one stand-in site (on this host), so one worker fetches
    from the other directly; the scheduler still knows only reverse paths."""
    with dirac_facility.client("peers") as gateway:
        cluster = gateway.new_cluster()
        try:
            cluster.scale(2)
            client = cluster.get_client()
            a, b = sorted(_workers(client, 2).values())
            assert _transfer(client, a, b, 5) == 5 * MB
            s = _summary(client, b)
            assert s["site"] and s["address"], s
            peer = s["peers"][_route(a)]
            assert peer["path"] == "direct" and peer["why"] == f"same site {s['site']}", peer
            client.close()
        finally:
            cluster.shutdown()
    final_jobs(dirac_facility.diracx, cluster.name, dirac_facility.logs, timeout=120)
