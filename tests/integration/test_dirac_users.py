"""Per-user DIRAC identity in the embedded default (issue 16, first point).

Real parts: the embedded DiracX server, dask-gateway-server with the gridhub
DIRAC backend, Traefik, the local site (the one stand-in). Two hub users
each start a cluster; DiracX itself must record each user's jobs as owned by
that user, in a group without JobAdministrator, and each user's token must
neither see nor kill the other's jobs.
"""

from __future__ import annotations

import asyncio

import pytest
from gateway_fixtures import final_jobs, jobs_of
from gridhub.dirac import FINAL_STATES, DiracXClient, DiracXForbidden
from processes import wait_for

pytestmark = pytest.mark.timeout(300)

# a plain name, and one DIRAC does not allow as a user name (mapped)
ALICE, BOB = "alice", "Bob.Smith@example.org"


def user_search(diracx, hub_user: str, conditions: list[dict]) -> list[dict]:
    from gridhub.embedded import user_token_source

    async def go():
        tokens = user_token_source(diracx.state_dir, diracx.url, hub_user)
        async with DiracXClient(diracx.url, tokens) as c:
            return await c.search(conditions, ["JobID", "Owner", "OwnerGroup", "JobGroup"])

    return asyncio.run(go())


def user_kill(diracx, hub_user: str, job_id: int) -> None:
    from gridhub.embedded import user_token_source

    async def go():
        tokens = user_token_source(diracx.state_dir, diracx.url, hub_user)
        async with DiracXClient(diracx.url, tokens) as c:
            await c.kill([job_id])

    asyncio.run(go())


@pytest.fixture(scope="module")
def clusters(dirac_facility):
    """One cluster of one worker for each user, with its DIRAC job submitted."""
    facility = dirac_facility
    made = {}
    try:
        for user in (ALICE, BOB):
            cluster = facility.client(user).new_cluster()
            made[user] = cluster
            cluster.scale(1)
        for user, cluster in made.items():
            wait_for(
                lambda c=cluster: jobs_of(facility.diracx, c.name),
                60,
                f"{user}'s cluster's job submitted",
                facility.logs,
                interval=0.5,
                retry=(),
            )
        yield made
    finally:
        for cluster in made.values():
            cluster.shutdown()
    for cluster in made.values():
        final = final_jobs(facility.diracx, cluster.name, facility.logs)
        assert {j["Status"] for j in final} <= {"Killed", "Done"}, final
    # the gateway holds a user's DIRAC token only while their clusters live
    for user in (ALICE, BOB):
        wait_for(
            lambda u=user: f"Dropped the DIRAC token of user {u} " in facility.gateway.log(),
            30,
            f"the gateway dropped {user}'s token",
            facility.logs,
            interval=0.5,
            retry=(),
        )


def owners(diracx, cluster_name: str) -> set[tuple[str, str]]:
    async def go():
        async with diracx.client() as c:  # the facility: sees every job
            return await c.search(
                [{"parameter": "JobGroup", "operator": "eq", "value": cluster_name}],
                ["JobID", "Owner", "OwnerGroup"],
            )

    return {(j["Owner"], j["OwnerGroup"]) for j in asyncio.run(go())}


def test_each_users_jobs_are_owned_by_that_user_in_dirac(dirac_facility, clusters):
    diracx = dirac_facility.diracx
    alice_owners = owners(diracx, clusters[ALICE].name)
    # a DIRAC-safe hub name is the DIRAC user name; the group has no
    # JobAdministrator property
    assert alice_owners == {("alice", "gridhub_analysis")}, alice_owners

    from gridhub.embedded import USER_GROUP, dirac_user_name, load_facility

    bob = dirac_user_name(BOB)
    assert bob != BOB and bob.startswith("bob_smith_example_org-"), bob
    assert owners(diracx, clusters[BOB].name) == {(bob, USER_GROUP)}
    assert load_facility(diracx.state_dir).user not in {"alice", bob}


def test_a_users_token_sees_only_that_users_jobs(dirac_facility, clusters):
    diracx = dirac_facility.diracx
    both = [clusters[ALICE].name, clusters[BOB].name]
    in_both = [{"parameter": "JobGroup", "operator": "in", "values": both}]
    everything = {j["JobID"] for j in jobs_of(diracx, both[0]) + jobs_of(diracx, both[1])}
    from gridhub.embedded import dirac_user_name

    for user, other in ((ALICE, BOB), (BOB, ALICE)):
        seen = user_search(diracx, user, in_both)
        assert seen, f"{user} sees none of their own jobs"
        assert {j["Owner"] for j in seen} == {dirac_user_name(user)}, seen
        assert {j["JobGroup"] for j in seen} == {clusters[user].name}, seen
        others = {j["JobID"] for j in jobs_of(diracx, clusters[other].name)}
        assert others and others <= everything
        assert not others & {j["JobID"] for j in seen}
        # and with no condition at all
        assert not others & {j["JobID"] for j in user_search(diracx, user, [])}


def test_a_users_token_cannot_kill_another_users_job(dirac_facility, clusters):
    diracx = dirac_facility.diracx
    victim = jobs_of(diracx, clusters[BOB].name)[0]
    assert victim["Status"] not in FINAL_STATES, victim
    with pytest.raises(DiracXForbidden):
        user_kill(diracx, ALICE, victim["JobID"])
    after = {j["JobID"]: j["Status"] for j in jobs_of(diracx, clusters[BOB].name)}
    assert after[victim["JobID"]] != "Killed", after


def test_only_the_facility_registers_users(dirac_facility, clusters):
    from gridhub.embedded import user_token_source

    diracx = dirac_facility.diracx

    async def go():
        tokens = user_token_source(diracx.state_dir, diracx.url, ALICE)
        async with DiracXClient(diracx.url, tokens) as c:
            with pytest.raises(DiracXForbidden, match="only the facility registers users"):
                await c.call("POST", "/api/gridhub/users", json={"hub_user": "mallory"})
        async with diracx.client() as c:  # the facility: a clear refusal of a bad name
            with pytest.raises(Exception, match="hub user name is empty"):
                await c.call("POST", "/api/gridhub/users", json={"hub_user": ""})

    asyncio.run(go())
    cs = (diracx.state_dir / "cs" / "default.yml").read_text()
    assert "mallory" not in cs
