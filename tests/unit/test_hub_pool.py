"""gridhub.hub.pool.Pool against a fake hub API: what it starts, and that it leaves the
hub alone while a class logs in onto seats it already knows are running."""

from __future__ import annotations

import json

import httpx
from gridhub.hub.pool import Pool
from gridhub.hub.students import write_students


class FakeHub:
    def __init__(self):
        self.users: dict[str, dict] = {}
        self.listings = 0
        self.started: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/hub/api")
        if request.method == "GET" and path == "/users":
            self.listings += 1
            return httpx.Response(200, json=list(self.users.values()))
        if request.method == "POST" and path.endswith("/server"):
            name = path.split("/")[2]
            self.users[name]["servers"] = {"": {"ready": True, "pending": None}}
            self.started.append(name)
            return httpx.Response(201)
        if request.method == "POST" and path.startswith("/users/"):
            name = path.split("/")[2]
            self.users[name] = {"name": name, "servers": {}}
            return httpx.Response(201, json=self.users[name])
        return httpx.Response(404)


def make(tmp_path, size, class_size=0, recheck=60.0):
    hub = FakeHub()
    api = httpx.Client(base_url="http://hub/hub/api", transport=httpx.MockTransport(hub.handle))
    students = tmp_path / "students.json"
    write_students(students, {})
    return hub, Pool(api, str(students), size, 10, class_size, recheck=recheck), students


def take(students, n):
    data = json.loads(students.read_text())
    for i in range(1, n + 1):
        data[f"student{i}"] = {"user": f"seat-{i:02d}", "key": None}
    write_students(students, data)


def test_starts_the_free_seats_then_only_what_logins_took(tmp_path):
    hub, pool, students = make(tmp_path, size=3)
    assert pool.refill() == 3
    assert hub.started == ["seat-01", "seat-02", "seat-03"]
    take(students, 1)
    assert pool.refill() == 1
    assert hub.started[-1] == "seat-04"


def test_no_listing_while_a_class_logs_in_onto_known_seats(tmp_path):
    hub, pool, students = make(tmp_path, size=5, class_size=5)
    pool.refill()
    listings = hub.listings
    for n in range(1, 6):  # five students take the five seats, a round after each
        take(students, n)
        assert pool.refill() == 0
    assert hub.listings == listings


def test_lists_again_after_recheck_seconds(tmp_path):
    hub, pool, _ = make(tmp_path, size=2, recheck=0)
    pool.refill()
    listings = hub.listings
    assert pool.refill() == 0
    assert hub.listings == listings + 1
