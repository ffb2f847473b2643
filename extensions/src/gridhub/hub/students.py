"""Masterclass login: who may take a name, how many may join, how fast one may guess.

Students have no accounts: they type a name and the class's access code. On its own
that lets anyone with the code log in under a classmate's name and get their files,
server and clusters (SharedPasswordAuthenticator: "anyone with the password can login
as any user"), and lets one person create users without end. ``MasterclassAuthenticator``
adds three things on top of the library's shared-code check:

- **The name is the first student's.** The first login under a name sets a secret
  cookie (``gridhub-student-<name>``, 256 random bits, signed with the hub's cookie
  secret, HttpOnly); the students file keeps only its SHA-256. A later login under
  that name must come from a browser holding it: a second person typing the name is
  told the name is taken. Nothing to remember or type for the student, who comes back
  from the same browser as often as they like (also after logging out). From another
  computer the teacher lets them in again ("release": the next login under the name
  gets a new cookie and the same server), or deletes the user to free the name.
  Why not a PIN: school students forget it, a 4-digit PIN is guessable, and a teacher
  would reset PINs as often as they release names.
- **A class size per access code** (``class_size`` names): the next new name is refused
  with a message saying the class is full; students who joined still come back.
- **Failed logins limited per client address**: more than ``failed_login_limit``
  failures within ``failed_login_window`` seconds and every login from that address
  (right or wrong) is refused with 429 until the oldest failure leaves the window.
  JupyterHub has no such limit of its own (its 429s are for spawns and active users).
  The count is in the hub's memory: a restart clears it. A class behind one school
  NAT shares the budget, so the default is generous (30 per 10 minutes): guessing an
  8+ character code at that rate takes years.

With a warm pool, a new student is seated on a free running seat (``seat-NN``), as
before (gridhub.hub.pool); the students file maps names to hub users in both cases.

A class logs in within the same minute, and every login passes through the hub's one
event loop: a login decides on the students map the hub keeps in memory (``Roster``)
and the seats the hub already has in memory, without a database query or a disk write
in the loop; the file is written by a thread, one write for all the logins that came
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections import deque
from hmac import compare_digest
from pathlib import Path

from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from jupyterhub.utils import utcnow
from tornado import web
from traitlets import Integer, Unicode

from ..files import write_private

SEAT_PREFIX = "seat-"
COOKIE_PREFIX = "gridhub-student-"
COOKIE_DAYS = 30  # longer than any masterclass; the hub's own login cookie is shorter


def seat_name(i: int) -> str:
    return f"{SEAT_PREFIX}{i:02d}"


def read_students(path: str | Path) -> dict[str, dict]:
    """{student name: {"user": hub user, "key": sha256 of the cookie or None, "joined": t}}."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    # a file of an older GridHub maps name -> hub user: the next login claims the name
    return {k: ({"user": v, "key": None} if isinstance(v, str) else v) for k, v in data.items()}


def write_students(path: str | Path, students: dict[str, dict]) -> None:
    # readers see the old or the new map, never half
    write_private(path, json.dumps(students, indent=1, sort_keys=True))


@contextlib.contextmanager
def locked_students(path: str | Path):
    """The students map, written back on exit; one writer at a time across processes
    (the hub's login and the teacher's view), by a lock file next to it."""
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        students = read_students(path)
        yield students
        write_students(path, students)
    finally:
        os.close(fd)  # (releases the lock)


def _signature(path: str | Path) -> tuple[int, int, int] | None:
    """What changes whenever the file is replaced (each write makes a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Roster:
    """The students file as the hub keeps it: read again only when it changed on disk
    (the teacher's view writes it too), changed in memory at once, written by a thread.

    A login checks and takes a name (and a seat) in memory with no await in between, so
    two logins cannot interleave there. ``saved()`` returns once the changes made so far
    are in the file; changes made while a write runs go in the next one, so a class
    logging in together shares a few writes (each synced, under the file's lock) rather
    than queueing fifty in the hub's event loop. A failed write loses every change not yet
    written (their logins fail) and the file is read again."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._map: dict[str, dict] = {}
        self._sig: object = ()  # never a file's: the first look reads it
        self._pending: dict[str, dict | None] = {}  # name -> entry, or None: removed
        self._inflight: dict[str, dict | None] = {}  # the changes being written now
        self._changes = self._written = 0
        self._writing: asyncio.Future | None = None

    def students(self) -> dict[str, dict]:
        """{name: entry} now (read-only: change it with put and drop)."""
        sig = _signature(self.path)
        if sig != self._sig:
            on_disk = read_students(self.path)
            self._map = self._apply(self._apply(on_disk, self._inflight), self._pending)
            self._sig = sig
        return self._map

    def put(self, name: str, entry: dict) -> None:
        self._change(name, entry)

    def drop(self, name: str) -> None:
        self._change(name, None)

    def _change(self, name: str, entry: dict | None) -> None:
        self.students()  # (a change on disk first)
        self._pending[name] = entry
        self._apply(self._map, {name: entry})
        self._changes += 1

    @staticmethod
    def _apply(students: dict, changes: dict) -> dict:
        for name, entry in changes.items():
            if entry is None:
                students.pop(name, None)
            else:
                students[name] = entry
        return students

    async def saved(self) -> None:
        target = self._changes
        while self._written < target:
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write_pending())
            await asyncio.shield(self._writing)  # (a cancelled login: the write goes on)

    async def _write_pending(self) -> None:
        upto, self._inflight, self._pending = self._changes, self._pending, {}
        try:
            students, sig = await asyncio.to_thread(self._write, self._inflight)
        except BaseException:
            # what the waiting logins took is not on disk: they fail, and so do those
            # whose changes wait for the next write; the file is read again
            self._pending, self._sig, self._written = {}, (), self._changes
            raise
        finally:
            self._writing, self._inflight = None, {}
        self._map = self._apply(students, self._pending)  # (made during the write)
        self._sig, self._written = sig, upto

    def _write(self, changes: dict) -> tuple[dict, object]:
        """The file's entries with ``changes`` applied, written under the lock; and the
        written file's signature (taken under the lock: nobody wrote in between)."""
        fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            students = self._apply(read_students(self.path), changes)
            write_students(self.path, students)
            return students, _signature(self.path)
        finally:
            os.close(fd)  # (releases the lock)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class FailedLogins:
    """Failure times per client address in a sliding window."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._times: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._times.get(address, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            self._times.pop(address, None)  # keep only addresses with recent failures
        return times

    def wait(self, address: str) -> int:
        """Seconds until ``address`` may try again (0: now)."""
        if self.limit <= 0:
            return 0
        now = time.monotonic()
        times = self._recent(address, now)
        if len(times) < self.limit:
            return 0
        return max(1, int(times[-self.limit] + self.window - now + 0.999))

    def record(self, address: str) -> None:
        self._times.setdefault(address, deque()).append(time.monotonic())


class MasterclassAuthenticator(SharedPasswordAuthenticator):
    """The shared access code, plus names kept for their first student, a class size
    and a failed-login limit (see the module's docstring)."""

    students_file = Unicode(config=True, help="JSON file of the students who joined.")
    class_size = Integer(60, config=True, help="Most student names per access code.")
    failed_login_limit = Integer(
        30, config=True, help="Failed logins per client address within the window (0: no limit)."
    )
    failed_login_window = Integer(600, config=True, help="Seconds failed logins are counted.")
    pool_size = Integer(0, config=True, help="Free warm seats kept running (0: no pool).")
    class_group = Unicode("class", config=True, help="Group of everyone who logged in.")

    _failures: FailedLogins | None = None
    _roster: Roster | None = None

    @property
    def failures(self) -> FailedLogins:
        if self._failures is None:
            self._failures = FailedLogins(self.failed_login_limit, self.failed_login_window)
        return self._failures

    @property
    def roster(self) -> Roster:
        if self._roster is None:
            self._roster = Roster(self.students_file)
        return self._roster

    async def authenticate(self, handler, data):
        address = handler.request.remote_ip or "unknown"
        wait = self.failures.wait(address)
        if wait:
            self.log.warning("Refused a login from %s: too many failed logins", address)
            raise web.HTTPError(
                429, f"Too many failed logins from your network. Try again in {wait} s."
            )
        model = await super().authenticate(handler, data)
        if model is None:
            self.failures.record(address)
            return None
        if model.get("admin"):
            return {**model, "groups": [self.class_group]}
        model = self.seat_student(handler, model, address)
        await self.roster.saved()  # the name (and its key) on disk before the cookie goes
        return {**model, "groups": [self.class_group]}

    def seat_student(self, handler, model: dict, address: str) -> dict:
        """The hub user for the student ``model["name"]``; raises 403 for a taken name
        or a full class. No await in here: two logins cannot interleave."""
        student = model["name"]
        if student.startswith(SEAT_PREFIX):
            raise web.HTTPError(403, f"Names starting with {SEAT_PREFIX!r} are reserved.")
        if not self.validate_username(student):  # checked here: a user may be created below
            raise web.HTTPError(
                403,
                "A name has 1 to 32 characters: lower-case letters, digits, '.', '_', '-'"
                " (starting with a letter or digit).",
            )
        students = self.roster.students()
        entry = students.get(student)
        if entry is not None and handler.find_user(entry["user"]) is None:
            entry = None  # its hub user was deleted (by the teacher): the name is free
            self.roster.drop(student)
        cookie = COOKIE_PREFIX + student
        if entry is None:
            if len(students) >= self.class_size:
                self.log.warning("Refused student %r: the class is full", student)
                raise web.HTTPError(
                    403,
                    f"This class is full: {len(students)} students have joined with this"
                    " access code. Ask your teacher.",
                )
            user = None
            if self.pool_size:
                user = self._free_seat(handler, {e["user"] for e in students.values()})
                if user is not None:
                    # a seat may have waited longer than the idle-culler's timeout: its
                    # idle time starts now (its server reports activity only every 5
                    # min; JupyterHub commits it with the login)
                    user.spawner.orm_spawner.last_activity = utcnow(with_tz=False)
                    user = user.name
            if user is None:
                # the hub user now, not after we return: the entry never names a user
                # that does not exist (which would read as "deleted, name free")
                user = handler.user_from_username(student).name
            entry = {"user": user, "key": None, "joined": time.time()}
            self.log.info("Student %r joined as hub user %r", student, user)
        elif entry.get("key"):
            key = handler.get_secure_cookie(cookie, max_age_days=COOKIE_DAYS)
            if key is None or not compare_digest(_digest(key.decode()), entry["key"]):
                self.failures.record(address)
                self.log.warning("Refused a second login under the student name %r", student)
                raise web.HTTPError(
                    403,
                    f"The name {student!r} is already taken in this class: choose another"
                    " name. If it is yours, log in from the browser you first used, or ask"
                    " your teacher to let you in from this one.",
                )
            handler._set_cookie(  # the same key, its expiry renewed
                cookie, key, encrypted=True, path=handler.hub.base_url, expires_days=COOKIE_DAYS
            )
            return {**model, "name": entry["user"]}
        key = secrets.token_urlsafe(32)
        self.roster.put(student, {**entry, "key": _digest(key)})
        handler._set_cookie(
            cookie, key, encrypted=True, path=handler.hub.base_url, expires_days=COOKIE_DAYS
        )
        return {**model, "name": entry["user"]}

    @staticmethod
    def _free_seat(handler, taken: set[str]):
        """The lowest-numbered seat with a ready server no student has, or None: from
        the users the hub holds in memory (every user with a server), no database."""
        free = [
            u
            for u in list(handler.users.values())
            if u.name.startswith(SEAT_PREFIX) and u.name not in taken and u.spawner.ready
        ]
        return min(free, key=lambda u: (len(u.name), u.name), default=None)
