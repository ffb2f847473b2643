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
