"""Masterclass warm pool: students land on seats whose servers were already running."""

from __future__ import annotations

import json

import httpx

try:
    from .hub_fixtures import *  # noqa: F403
    from .hub_fixtures import login_form
    from .test_hub_masterclass import CODE, browser, masterclass_hub
except ImportError:
    from hub_fixtures import *  # noqa: F403
    from hub_fixtures import login_form
    from test_hub_masterclass import CODE, browser, masterclass_hub


from processes import wait_for


def seats(hub) -> dict[str, dict]:
    """Seat users and their default server model (None when stopped)."""
    with hub.admin() as admin:
        users = admin.get("/users").json()
    return {u["name"]: u["servers"].get("") for u in users if u["name"].startswith("seat-")}


def ready_seats(hub) -> set[str]:
    return {n for n, s in seats(hub).items() if s and s["ready"]}


def lands_on(hub, name: str) -> tuple[str, httpx.Client]:
    """Log ``name`` in with the code; the hub user it became, and its browser."""
    client = browser(hub)
    r = login_form(client, name, CODE)
    assert r.status_code == 302, r.text[-500:]
    r = client.get(
        "/hub/api/user", headers={"X-XSRFToken": client.cookies.get("_xsrf", path="/hub/")}
    )
    r.raise_for_status()
    who = r.json()["name"]
    return who, client


def test_pool_seats_students_on_running_servers(hub_factory):
    hub = masterclass_hub(
        hub_factory,
        "pool",
        GRIDHUB_MASTERCLASS_POOL_SIZE="2",
        GRIDHUB_MASTERCLASS_POOL_CONCURRENCY="2",
    )
    seats_file = hub.state / "masterclass-seats.json"

    # before any seat is ready, a student gets a user of her own name, started on click
    assert not ready_seats(hub)
    who, carol = lands_on(hub, "carol")
    assert who == "carol"
    assert carol.get("/hub/spawn").status_code == 200
    hub.wait_server_ready("carol")
    assert carol.get("/user/carol/lab").status_code == 200
    carol.close()

    # the pool service starts two seats ahead
    wait_for(lambda: len(ready_seats(hub)) == 2, 120, interval=1, what="two ready seats")
    free = ready_seats(hub)
    before = {n: seats(hub)[n]["started"] for n in free}

    # alice lands on one of them: JupyterLab at once, nothing spawned on her click
    who, alice = lands_on(hub, "alice")
    assert who in free
    lab = alice.get("/hub/")  # follows the redirects to her server
    assert lab.status_code == 200, lab.text[-500:]
    assert str(lab.url).startswith(f"{hub.public_url}/user/{who}/lab"), lab.url
    assert seats(hub)[who]["started"] == before[who]
    students = json.loads(seats_file.read_text())
    assert {k: v["user"] for k, v in students.items()} == {"alice": who, "carol": "carol"}

    # the same student again (her browser, logged out): the same seat, whatever the
    # pool holds by now; someone else typing her name: refused
    alice.get("/hub/logout")
    assert login_form(alice, "alice", CODE).status_code == 302
    r = alice.get(
        "/hub/api/user", headers={"X-XSRFToken": alice.cookies.get("_xsrf", path="/hub/")}
    )
    assert r.json()["name"] == who
    with browser(hub) as mallory:
        assert login_form(mallory, "alice", CODE).status_code == 403
    alice.close()

    # a student cannot take a seat by its name
    with browser(hub) as eve:
        assert login_form(eve, sorted(free - {who})[0], CODE).status_code == 403

    # the pool refills: two free seats start again besides alice's
    def refilled():
        taken = {who}
        return len([n for n, s in seats(hub).items() if s and n not in taken]) >= 2

    wait_for(refilled, 60, interval=1, what="the pool to refill")
