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
"""

from __future__ import annotations

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

    @property
    def failures(self) -> FailedLogins:
        if self._failures is None:
            self._failures = FailedLogins(self.failed_login_limit, self.failed_login_window)
        return self._failures

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
        return {**self.seat_student(handler, model, address), "groups": [self.class_group]}

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
        with locked_students(self.students_file) as students:
            return self._seat(handler, model, address, student, students)

    def _seat(self, handler, model: dict, address: str, student: str, students: dict) -> dict:
        entry = students.get(student)
        if entry is not None and handler.find_user(entry["user"]) is None:
            entry = None  # its hub user was deleted (by the teacher): the name is free
            del students[student]
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
                    # idle time starts now (its server reports activity only every 5 min)
                    spawner = handler.find_user(user).spawner.orm_spawner
                    spawner.last_activity = utcnow(with_tz=False)
                    handler.db.commit()
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
        entry["key"] = _digest(key)
        students[student] = entry  # (written back by locked_students)
        handler._set_cookie(
            cookie, key, encrypted=True, path=handler.hub.base_url, expires_days=COOKIE_DAYS
        )
        return {**model, "name": entry["user"]}

    def _free_seat(self, handler, taken: set[str]) -> str | None:
        i = 1
        while (user := handler.find_user(seat_name(i))) is not None:
            if user.name not in taken and user.spawner.ready:
                return user.name
            i += 1
        return None
