"""A user's limits at the gateway: refused with the limit named (issue 16).

Real parts: DiracX, dask-gateway with the DIRAC backend, Traefik. The jobs are
bound to a site no stand-in serves (nothing runs); the user is in no group,
so the "default" limits apply.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from gateway_fixtures import PASSWORD, HeldFacility, refused
from processes import wait_for

pytestmark = pytest.mark.timeout(300)


class LimitedFacility(HeldFacility):
    LIMITS: dict = {"default": {"clusters": 1, "workers": 2}}

    def config(self, **overrides: object) -> str:
        return super().config(
            DiracBackend__group_limits=self.LIMITS,
            DiracClusterConfig__idle_timeout=1800.0,  # the deployer's
            **overrides,
        )


class IdleFacility(LimitedFacility):
    LIMITS = {"default": {"idle_timeout": 5}}


@pytest.fixture(scope="module")
def facility(tmp_path_factory, diracx_server, diracx_local_site):
    """facility(cls): a started facility of that class, stopped after the module."""
    made: dict[type, LimitedFacility] = {}

    def get(cls: type[LimitedFacility]) -> LimitedFacility:
        if cls not in made:
            made[cls] = cls(tmp_path_factory.mktemp(cls.__name__), diracx_server, diracx_local_site)
        return made[cls]

    yield get
    for f in made.values():
        f.stop()


def test_limits_refuse_a_second_cluster_and_too_many_workers(facility):
    limited = facility(LimitedFacility)
    with limited.client("lim") as gateway:
        cluster = gateway.new_cluster()
        try:
            with refused(
                r"the limit for default is 1 cluster\(s\) at a time and you have 1"
            ) as err:
                gateway.new_cluster()
            assert cluster.name in str(err.value)
            with refused() as err:
                cluster.scale(3)
            assert "limit for default is 2 workers at a time" in str(err.value)
            assert "Cannot scale" in str(err.value) and "At most 2 for this cluster" in str(
                err.value
            ), err.value
            cluster.scale(2)  # within the limit
        finally:
            cluster.shutdown()


def test_a_groups_idle_timeout_stops_an_idle_cluster(facility):
    idle_limited = facility(IdleFacility)
    with idle_limited.client("idler") as gateway:
        cluster = gateway.new_cluster()
        name = cluster.name
        wait_for(
            lambda: not [c for c in gateway.list_clusters() if c.name == name],
            90,
            "the idle cluster stopped by its owner's group idle timeout (5 s)",
            idle_limited.logs,
        )


RELEASE = """
import asyncio, gc, os, sys
from dask_gateway import BasicAuth, Gateway
from gridhub.refusals import release
address, proxy, user, password = sys.argv[1:5]
gc.disable()  # the one collection is the one below, on the IO loop's thread
gateway = Gateway(address=address, proxy_address=proxy, auth=BasicAuth(user, password))
first = gateway.new_cluster()
try:
    gateway.new_cluster()
except Exception as exc:
    print("REFUSED", type(exc).__name__)
    if "--no-release" not in sys.argv:
        release(exc)
async def collect():
    gc.collect()
done = asyncio.run_coroutine_threadsafe(collect(), gateway.loop.asyncio_loop)
try:
    done.result(timeout=30)
except TimeoutError:
    print("DEADLOCK", flush=True)
    os._exit(3)
first.shutdown()
print("RELEASED")
"""


def test_a_refused_cluster_cannot_deadlock_the_clients_loop(facility, tmp_path):
    """gridhub.refusals: after a refused new_cluster, a collection on the
    client's IO-loop thread (where the cyclic collector may run at any time)
    finds nothing of the failed cluster (its Gateway.__del__ would wait on
    that loop: seen deadlocked with --no-release). In a process of its own:
    a deadlocked loop stays behind."""
    limited = facility(LimitedFacility)
    limited.client("rel").close()  # (registers the user)
    script = tmp_path / "release.py"
    script.write_text(RELEASE)
    p = subprocess.run(
        [sys.executable, str(script), limited.public_url, limited.proxy_address, "rel", PASSWORD],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert "REFUSED" in p.stdout, p.stdout + p.stderr[-3000:]
    assert p.returncode == 0 and "RELEASED" in p.stdout, p.stdout + p.stderr[-3000:]
