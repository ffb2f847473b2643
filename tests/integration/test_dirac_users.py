"""Per-user DIRAC identity in the embedded default (issue 16, first point),
and each user's DIRAC group from their hub groups (issue 16, groups).

Real parts: the embedded DiracX server, dask-gateway-server with the gridhub
DIRAC backend, Traefik, the local site (the one stand-in); for groups, a
masterclass-mode JupyterHub the gateway authenticates users with. Two hub
users each start a cluster; DiracX itself must record each user's jobs as
owned by that user, in the DIRAC group their hub groups map to (without
JobAdministrator), and each user's token must neither see nor kill the
other's jobs.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from gateway_fixtures import final_jobs, hub_dirac_facility, jobs_of  # noqa: F401 (a fixture)
from gridhub.dirac import FINAL_STATES, DiracXClient, DiracXError, DiracXForbidden
from gridhub.embedded import USER_GROUP
from hub_fixtures import *  # noqa: F403 (the hub's fixtures)
from hub_fixtures import login_form
from processes import wait_for

pytestmark = pytest.mark.timeout(300)

# a plain name, and one DIRAC does not allow as a user name (mapped)
ALICE, BOB = "alice", "Bob.Smith@example.org"


def user_search(
    diracx, hub_user: str, conditions: list[dict], group: str = USER_GROUP
) -> list[dict]:
    from gridhub.embedded import user_token_source

    async def go():
        tokens = user_token_source(diracx.state_dir, diracx.url, hub_user, group=group)
        async with DiracXClient(diracx.url, tokens) as c:
            return await c.search(conditions, ["JobID", "Owner", "OwnerGroup", "JobGroup"])

    return asyncio.run(go())


def user_kill(diracx, hub_user: str, job_id: int, group: str = USER_GROUP) -> None:
    from gridhub.embedded import user_token_source

    async def go():
        tokens = user_token_source(diracx.state_dir, diracx.url, hub_user, group=group)
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


def test_registration_refuses_privileged_properties_and_the_facility_group(diracx_server):
    """Whatever the request says, a hub user gets NormalUser alone: the
    facility's own request for more is refused, naming what it asked for."""
    diracx = diracx_server
    from gridhub.embedded import load_facility

    facility_group = load_facility(diracx.state_dir).group
    cs = diracx.state_dir / "cs" / "default.yml"
    before = cs.read_text()

    async def go():
        async with diracx.client() as c:  # the facility's own identity
            for body, why in [
                ({"hub_user": "mallory", "group": facility_group}, "facility's own DIRAC group"),
                ({"hub_user": "mallory", "properties": ["JobAdministrator"]}, "properties"),
                (
                    {"hub_user": "mallory", "group": "gridhub_x", "properties": ["Operator"]},
                    "properties",
                ),
                ({"hub_user": "mallory", "group": "two words"}, "not a DIRAC group name"),
            ]:
                with pytest.raises(DiracXError, match="answered 422") as err:
                    await c.call("POST", "/api/gridhub/users", json=body)
                assert why in str(err.value), (body, err.value)

    asyncio.run(go())
    assert cs.read_text() == before  # nothing registered, no group made
    assert "mallory" not in cs.read_text() and "gridhub_x" not in cs.read_text()


# masterclass mode: every student who logs in is in hub group "class"
ACCESS_CODE = "groups-test-code"
PHYSICIST, STUDENT = "maria", "eve"


def hub_user_token(hub, name: str) -> str:
    with hub.admin() as admin:
        r = admin.post(f"/users/{name}/tokens", json={"note": "groups test", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return r.json()["token"]


def owner_groups(diracx, cluster_name: str) -> set[tuple[str, str]]:
    jobs = wait_for(
        lambda: jobs_of(diracx, cluster_name),
        90,
        f"the jobs of {cluster_name} in DiracX",
        interval=0.5,
        retry=(),
    )
    assert jobs
    return owners(diracx, cluster_name)


@pytest.mark.timeout(600)  # a hub to start, three clusters on a shared machine
def test_each_users_jobs_go_under_the_dirac_group_of_their_hub_groups(
    hub_factory,
    hub_dirac_facility,  # noqa: F811 (the imported fixture)
):
    """No GRIDHUB_DIRACX_GROUPS: the embedded default. A masterclass student
    (hub group class) submits in gridhub_class, a physicist (hub group
    physics) in gridhub_analysis; when the physicist joins class, her next
    cluster goes under gridhub_class while her first keeps its group."""
    facility = hub_dirac_facility
    diracx = facility.diracx
    hub = hub_factory(
        {
            "GRIDHUB_MASTERCLASS_ACCESS_CODE": ACCESS_CODE,
            "GRIDHUB_MASTERCLASS_TEACHER_CODE": "teacher-" + "y" * 40,
            "GRIDHUB_CULL_IDLE_TIMEOUT": "0",
            **facility.hub_env(),
        },
        name="dirac-groups",
    )
    (hub.extra / "60-test-facility.py").write_text(facility.hub_config())
    # the test's admin service may also put users in groups
    (hub.extra / "61-test-groups.py").write_text(
        "c = get_config()  # noqa\n"
        "c.JupyterHub.load_roles.append({'name': 'test-groups', 'scopes': ['admin:groups'],"
        " 'services': ['test-admin']})\n"
    )
    hub.start(timeout=180)
    with httpx.Client(base_url=hub.public_url, timeout=30) as browser:
        r = login_form(browser, STUDENT, ACCESS_CODE)  # a student: in "class"
        assert r.status_code == 302, r.text[-500:]
    with hub.admin() as admin:
        for r in (
            admin.post(f"/users/{PHYSICIST}"),
            admin.post("/groups/physics"),
            admin.post("/groups/physics/users", json={"users": [PHYSICIST]}),
        ):
            assert r.status_code in (200, 201), r.text
        groups = {u: set(admin.get(f"/users/{u}").json()["groups"]) for u in (PHYSICIST, STUDENT)}
    assert groups == {PHYSICIST: {"physics"}, STUDENT: {"class"}}, groups

    gateways = {u: facility.client(u, hub_token=hub_user_token(hub, u)) for u in groups}
    clusters = {}
    try:
        for user, gateway in gateways.items():
            clusters[user] = gateway.new_cluster()
            clusters[user].scale(1)
        assert owner_groups(diracx, clusters[PHYSICIST].name) == {(PHYSICIST, "gridhub_analysis")}
        assert owner_groups(diracx, clusters[STUDENT].name) == {(STUDENT, "gridhub_class")}

        # each user's token (of their group) sees only their own jobs, kills none of the other's
        both = [clusters[PHYSICIST].name, clusters[STUDENT].name]
        in_both = [{"parameter": "JobGroup", "operator": "in", "values": both}]
        for user, group, other in (
            (PHYSICIST, "gridhub_analysis", STUDENT),
            (STUDENT, "gridhub_class", PHYSICIST),
        ):
            seen = user_search(diracx, user, in_both, group=group)
            assert seen and {j["Owner"] for j in seen} == {user}, seen
            assert {j["JobGroup"] for j in seen} == {clusters[user].name}, seen
            victim = jobs_of(diracx, clusters[other].name)[0]
            assert victim["Status"] not in FINAL_STATES, victim
            with pytest.raises(DiracXForbidden):
                user_kill(diracx, user, victim["JobID"], group=group)
            after = {j["JobID"]: j["Status"] for j in jobs_of(diracx, clusters[other].name)}
            assert after[victim["JobID"]] != "Killed", after

        # the physicist joins the class: her next cluster goes under its group,
        # her first keeps the group it was made with
        with hub.admin() as admin:
            r = admin.post("/groups/class/users", json={"users": [PHYSICIST]})
            assert r.status_code == 200, r.text
        with facility.client(PHYSICIST, hub_token=hub_user_token(hub, PHYSICIST)) as gateway:
            second = gateway.new_cluster()
            clusters["second"] = second
            second.scale(1)
            assert owner_groups(diracx, second.name) == {(PHYSICIST, "gridhub_class")}
        assert owners(diracx, clusters[PHYSICIST].name) == {(PHYSICIST, "gridhub_analysis")}
    finally:
        for cluster in clusters.values():
            cluster.shutdown()
        for gateway in gateways.values():
            gateway.close()
    for cluster in clusters.values():
        final = final_jobs(diracx, cluster.name, facility.logs)
        assert {j["Status"] for j in final} <= {"Killed", "Done"}, final
    # the gateway held one token per user and group, each dropped with the
    # last cluster of that user in that group
    for user, group in (
        (PHYSICIST, "gridhub_analysis"),
        (PHYSICIST, "gridhub_class"),
        (STUDENT, "gridhub_class"),
    ):
        wait_for(
            lambda u=user, g=group: (
                f"Dropped the DIRAC token of user {u} in group {g} " in facility.gateway.log()
            ),
            30,
            f"the gateway dropped {user}'s token of {group}",
            facility.logs,
            interval=0.5,
            retry=(),
        )
    # the CS: each group NormalUser alone, the users where their clusters put them
    cs = json.loads((diracx.state_dir / "cs" / "default.yml").read_text())["Registry"]["gridhub"]
    by_name = {u["PreferedUsername"]: sub for sub, u in cs["Users"].items()}
    assert cs["Groups"]["gridhub_class"]["Properties"] == ["NormalUser"]
    assert by_name[STUDENT] in cs["Groups"]["gridhub_class"]["Users"]
    assert by_name[STUDENT] not in cs["Groups"]["gridhub_analysis"]["Users"]
    assert by_name[PHYSICIST] in cs["Groups"]["gridhub_analysis"]["Users"]
    assert by_name[PHYSICIST] in cs["Groups"]["gridhub_class"]["Users"]
