"""A warm pool for masterclasses: seats whose servers run before the students come.

A Jupyter server cannot change owner (its OAuth client, token and JUPYTERHUB_USER are
fixed at start), so the pool is of *seats*: hub users ``seat-01``, ``seat-02``... whose
servers the ``gridhub-pool`` service (``python -m gridhub.hub.pool``) starts ahead, a few
at a time, keeping ``pool_size`` free ones running. ``SeatAuthenticator`` hands a student
with the access code a free seat with a running server and remembers the choice in a JSON
file (``{student name: seat}``), so the same name gets the same seat again; with no free
seat the student gets a hub user of their own name, whose server starts on click.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets import Integer, Unicode

SEAT_PREFIX = "seat-"
log = logging.getLogger("gridhub.pool")


def seat_name(i: int) -> str:
    return f"{SEAT_PREFIX}{i:02d}"


def read_seats(path: str | Path) -> dict[str, str]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def write_seats(path: str | Path, seats: dict[str, str]) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(seats, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # readers see the old or the new map, never half


class SeatAuthenticator(SharedPasswordAuthenticator):
    """SharedPasswordAuthenticator that seats students in the warm pool."""

    pool_size = Integer(0, config=True, help="Free seats kept running (0: no pool).")
    seats_file = Unicode(config=True, help="JSON map of student name to hub user.")

    async def authenticate(self, handler, data):
        model = await super().authenticate(handler, data)
        if model is None or model.get("admin") or not self.pool_size:
            return model
        student = model["name"]
        if student.startswith(SEAT_PREFIX):
            handler.log.warning("Refused student name %r: seat names are the pool's", student)
            return None
        # no await from here to the write: two logins cannot take the same seat
        seats = read_seats(self.seats_file)
        if student not in seats:
            seats[student] = self._free_seat(handler, set(seats.values())) or student
            write_seats(self.seats_file, seats)
            self.log.info("Student %r is hub user %r", student, seats[student])
        return {**model, "name": seats[student]}

    def _free_seat(self, handler, taken: set[str]) -> str | None:
        i = 1
        while (user := handler.find_user(seat_name(i))) is not None:
            if user.name not in taken and user.spawner.ready:
                return user.name
            i += 1
        return None


def refill_once(api: httpx.Client, seats_file: str, size: int, concurrency: int) -> int:
    """Start servers so that ``size`` untaken seats run or start; at most ``concurrency``
    starting at once. Returns how many it started."""
    taken = set(read_seats(seats_file).values())
    users = {}
    r = api.get("/users", params={"name_filter": SEAT_PREFIX, "limit": 1000})
    r.raise_for_status()
    for u in r.json():  # with their running or starting servers
        if u["name"].startswith(SEAT_PREFIX):
            users[u["name"]] = u
    pending = sum(1 for u in users.values() if (u["servers"].get("") or {}).get("pending"))
    free = [n for n, u in users.items() if n not in taken and u["servers"].get("")]
    stopped = sorted(n for n, u in users.items() if n not in taken and not u["servers"].get(""))
    want = min(size - len(free), concurrency - pending)
    names: list[str] = []
    i = len(users)
    while len(names) < want:
        if stopped:
            names.append(stopped.pop(0))
            continue
        i += 1
        if seat_name(i) not in users:
            api.post(f"/users/{seat_name(i)}").raise_for_status()
            names.append(seat_name(i))

    def start(name: str) -> bool:
        # the hub answers when the server is up or after its slow_spawn_timeout (10 s):
        # in parallel, so the batch starts together
        r = api.post(f"/users/{name}/server")
        if r.status_code not in (201, 202):
            log.warning("starting %s: %s %s", name, r.status_code, r.text[:200])
        return r.status_code in (201, 202)

    with ThreadPoolExecutor(max(1, len(names))) as pool:
        return sum(pool.map(start, names))


def main() -> None:
    p = argparse.ArgumentParser(description="Keep the masterclass pool's free seats running.")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--seats-file", required=True)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[gridhub-pool %(asctime)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    api = httpx.Client(
        base_url=os.environ["JUPYTERHUB_API_URL"],
        headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
        timeout=30,
    )
    hub = os.getppid()
    while os.getppid() == hub:  # the hub died without stopping us (SIGKILL): stop too
        try:
            n = refill_once(api, args.seats_file, args.size, args.concurrency)
            if n:
                log.info("started %d seat server(s)", n)
        except httpx.HTTPError as exc:  # the hub restarting: try again next round
            log.warning("hub API: %s", exc)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
