"""A user's limits at the gateway: refused with the limit named (issue 16).

Real parts: DiracX, dask-gateway with the DIRAC backend, Traefik. The jobs are
bound to a site no stand-in serves (nothing runs); the user is in no group,
so the "default" limits apply.
"""

from __future__ import annotations

import pytest
from gateway_fixtures import HeldFacility
from processes import wait_for

pytestmark = pytest.mark.timeout(300)

LIMITS = {"default": {"clusters": 1, "workers": 2}}


class LimitedFacility(HeldFacility):
    def config(self, **overrides: object) -> str:
        return super().config(DiracBackend__group_limits=LIMITS, **overrides)


@pytest.fixture(scope="module")
def limited(tmp_path_factory, diracx_server, diracx_local_site):
    f = LimitedFacility(tmp_path_factory.mktemp("limits"), diracx_server, diracx_local_site)
    yield f
    f.stop()


def test_limits_refuse_a_second_cluster_and_too_many_workers(limited):
    with limited.client("lim") as gateway:
        cluster = gateway.new_cluster()
        try:
            with pytest.raises(Exception) as err:
                gateway.new_cluster()
            assert "the limit for default is 1 cluster(s) at a time and you have 1" in str(
                err.value
            )
            assert cluster.name in str(err.value)
            with pytest.raises(Exception) as err:
                cluster.scale(3)
            assert "limit for default is 2 workers at a time" in str(err.value)
            assert "Cannot scale" in str(err.value) and "At most 2 for this cluster" in str(
                err.value
            ), err.value
            cluster.scale(2)  # within the limit
        finally:
            cluster.shutdown()


class IdleFacility(HeldFacility):
    def config(self, **overrides: object) -> str:
        return super().config(
            DiracBackend__group_limits={"default": {"idle_timeout": 5}},
            DiracClusterConfig__idle_timeout=1800.0,
            **overrides,
        )


@pytest.fixture(scope="module")
def idle_limited(tmp_path_factory, diracx_server, diracx_local_site):
    f = IdleFacility(tmp_path_factory.mktemp("idle"), diracx_server, diracx_local_site)
    yield f
    f.stop()


def test_a_groups_idle_timeout_stops_an_idle_cluster(idle_limited):
    with idle_limited.client("idler") as gateway:
        cluster = gateway.new_cluster()
        name = cluster.name
        wait_for(
            lambda: not [c for c in gateway.list_clusters() if c.name == name],
            90,
            "the idle cluster stopped by its owner's group idle timeout (5 s)",
            idle_limited.logs,
        )
