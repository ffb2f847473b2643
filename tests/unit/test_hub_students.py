"""gridhub.hub.students.Roster (the hub's students map, written off the event loop) and
the seat choice, without a hub."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
from types import SimpleNamespace

import pytest
from gridhub.hub import students as mod
from gridhub.hub.students import MasterclassAuthenticator, Roster, locked_students


def on_disk(path) -> dict:
    return json.loads(path.read_text())


async def test_changes_are_in_the_file_once_saved(tmp_path):
    path = tmp_path / "students.json"
    roster = Roster(path)
    roster.put("alice", {"user": "seat-01", "key": "k1"})
    assert roster.students() == {"alice": {"user": "seat-01", "key": "k1"}}
    await roster.saved()
    assert on_disk(path) == {"alice": {"user": "seat-01", "key": "k1"}}
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    roster.drop("alice")
    await roster.saved()
    assert on_disk(path) == {}


async def test_a_class_logging_in_together_shares_writes(tmp_path, monkeypatch):
    path = tmp_path / "students.json"
    roster = Roster(path)
    writes = []
    real = mod.write_students

    def counting(p, students):
        writes.append(len(students))
        real(p, students)

    monkeypatch.setattr(mod, "write_students", counting)

    async def login(i: int) -> None:
        roster.put(f"s{i:02d}", {"user": f"seat-{i:02d}", "key": None})
        await roster.saved()

    await asyncio.gather(*(login(i) for i in range(50)))
    assert len(on_disk(path)) == 50
    assert len(writes) < 50  # (one, then one for all that came during it)


async def test_the_teachers_change_is_seen_and_kept(tmp_path):
    """The teacher's view writes the file too (release): the hub reads it again when it
    changed, and its own next write does not undo it."""
    path = tmp_path / "students.json"
    roster = Roster(path)
    roster.put("alice", {"user": "seat-01", "key": "k1"})
    roster.put("bob", {"user": "seat-02", "key": "k2"})
    await roster.saved()
    with locked_students(path) as students:  # as teacher.Class.release does
        students["alice"]["key"] = None
    assert roster.students()["alice"]["key"] is None
    # and between a login's change and its write
    roster.put("carol", {"user": "seat-03", "key": "k3"})
    with locked_students(path) as students:
        students["bob"]["key"] = None
    await roster.saved()
    assert on_disk(path)["alice"]["key"] is None
    assert on_disk(path)["bob"]["key"] is None
    assert roster.students()["bob"]["key"] is None
    assert set(on_disk(path)) == {"alice", "bob", "carol"}


async def test_the_event_loop_runs_while_the_files_lock_is_held(tmp_path):
    """A writer holding the lock (the teacher's view) holds up the write, not the loop."""
    path = tmp_path / "students.json"
    roster = Roster(path)
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    roster.put("alice", {"user": "seat-01", "key": "k1"})
    saving = asyncio.ensure_future(roster.saved())
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5 and not saving.done()
    threading.Timer(0.05, os.close, [fd]).start()  # (closing releases the lock)
    await asyncio.wait_for(saving, 10)
    assert on_disk(path)["alice"]["user"] == "seat-01"


async def test_a_failed_write_fails_its_logins_and_forgets_their_changes(tmp_path, monkeypatch):
    path = tmp_path / "students.json"
    roster = Roster(path)
    roster.put("alice", {"user": "seat-01", "key": "k1"})
    await roster.saved()

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod, "write_students", full)
    roster.put("bob", {"user": "seat-02", "key": "k2"})
    with pytest.raises(OSError):
        await roster.saved()
    # bob's login failed: his name is not bound to a key no browser holds
    assert set(roster.students()) == {"alice"}
    monkeypatch.undo()
    roster.put("carol", {"user": "seat-03", "key": "k3"})
    await roster.saved()
    assert set(on_disk(path)) == {"alice", "carol"}


def _user(name: str, ready: bool):
    return SimpleNamespace(name=name, spawner=SimpleNamespace(ready=ready))


def test_the_free_seat_is_the_lowest_numbered_ready_untaken_one():
    users = [
        _user("seat-100", True),
        _user("alice", True),
        _user("seat-02", True),
        _user("seat-01", False),  # still starting
        _user("seat-11", True),
        _user("seat-03", True),
    ]
    handler = SimpleNamespace(users={i: u for i, u in enumerate(users)})
    free = MasterclassAuthenticator._free_seat
    assert free(handler, set()).name == "seat-02"
    assert free(handler, {"seat-02"}).name == "seat-03"
    assert free(handler, {"seat-02", "seat-03"}).name == "seat-11"
    assert free(handler, {"seat-02", "seat-03", "seat-11"}).name == "seat-100"
    assert free(handler, {"seat-02", "seat-03", "seat-11", "seat-100"}) is None


async def test_a_teachers_write_during_the_hubs_write_hides_no_login(tmp_path, monkeypatch):
    """The file changes on disk while the hub's write waits for the lock: the names
    being written are still taken in memory (a second 'alice' is not new)."""
    path = tmp_path / "students.json"
    roster = Roster(path)
    roster.put("bob", {"user": "seat-02", "key": "k2"})
    await roster.saved()
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the teacher's view, writing
    roster.put("alice", {"user": "seat-01", "key": "k1"})
    saving = asyncio.ensure_future(roster.saved())
    try:
        await asyncio.sleep(0.05)  # the hub's write now waits for the lock
        data = on_disk(path)
        data["bob"]["key"] = None
        mod.write_students(path, data)
        assert roster.students().get("alice") == {"user": "seat-01", "key": "k1"}
        assert roster.students()["bob"]["key"] is None
    finally:
        os.close(fd)  # (releases the lock: the write's thread ends)
    await asyncio.wait_for(saving, 10)
    assert on_disk(path) == {
        "alice": {"user": "seat-01", "key": "k1"},
        "bob": {"user": "seat-02", "key": None},
    }
