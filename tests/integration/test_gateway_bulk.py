"""scale(25) goes to DiracX in bulk, and stopping leaves no job behind (issue 16).

Real parts: DiracX, dask-gateway with the DIRAC backend, Traefik. The jobs are
bound to a site no stand-in serves, so they stay queued: what is measured is
the submission, not the workers.
"""

from __future__ import annotations

import re

import pytest
from gateway_fixtures import Facility, jobs_of
from processes import wait_for

pytestmark = pytest.mark.timeout(300)

USER = "bulk"
N = 25


def submission_calls(facility: Facility) -> list[int]:
    """The size of each submission call the gateway logged for USER."""
    log = facility.gateway.logfile.read_text(errors="replace")
    return [int(n) for n in re.findall(rf"Submitted (\d+) worker job\(s\) of user {USER}\b", log)]


def test_scale_25_is_two_submission_calls_and_stop_kills_all(held_facility, diracx_server):
    with held_facility.client(USER) as gateway:
        cluster = gateway.new_cluster()
        cluster.scale(N)
        wait_for(
            lambda: sum(submission_calls(held_facility)) >= N,
            120,
            f"{N} worker jobs submitted",
            held_facility.gateway.logfile,
            interval=1,
            retry=(),
        )
        calls = submission_calls(held_facility)
        assert sum(calls) == N, calls
        assert len(calls) <= 2, calls  # DiracX takes at most 20 per call
        jobs = jobs_of(diracx_server, cluster.name)
        assert len(jobs) == N, jobs
        assert {j["Status"] for j in jobs} <= {"Received", "Checking", "Waiting"}, jobs
        name = cluster.name
        cluster.shutdown()

    def all_killed() -> list[dict] | None:
        jobs = jobs_of(diracx_server, name)
        return jobs if all(j["Status"] == "Killed" for j in jobs) else None

    jobs = wait_for(
        all_killed,
        120,
        f"every job of {name} Killed",
        held_facility.gateway.logfile,
        interval=1,
        retry=(),
    )
    assert len(jobs) == N and all(j["Status"] == "Killed" for j in jobs), jobs
