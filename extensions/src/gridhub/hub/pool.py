"""A warm pool for masterclasses: seats whose servers run before the students come.

A Jupyter server cannot change owner (its OAuth client, token and JUPYTERHUB_USER are
fixed at start), so the pool is of *seats*: hub users ``seat-01``, ``seat-02``... whose
servers the ``gridhub-pool`` service (``python -m gridhub.hub.pool``) starts ahead, a few
at a time, keeping ``pool_size`` free ones running, and no more than the class can still
take (``class_size`` less the students who joined). The authenticator
(gridhub.hub.students) hands a new student with the access code a free seat with a
running server and records it in the students file; with no free seat the student gets
a hub user of their own name, whose server starts on click.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from .students import SEAT_PREFIX, read_students, seat_name

log = logging.getLogger("gridhub.pool")


class Pool:
    """Keeps ``size`` untaken seats running or starting (no more than the ``class_size``
    less the students who joined, when set); at most ``concurrency`` starting at once.

    Listing the seats costs the hub a user model each, in its one event loop, which the
    class's logins need. Between listings seats only go from free to taken, so while
    enough of the seats seen with a server last time are still free (the students file
    says which are taken) a round asks the hub nothing; it lists again every
    ``recheck`` seconds all the same (a seat's server may have stopped)."""

    def __init__(
        self,
        api: httpx.Client,
        students_file: str,
        size: int,
        concurrency: int,
        class_size: int = 0,
        recheck: float = 60.0,
    ):
        self.api, self.students_file = api, students_file
        self.size, self.concurrency, self.class_size = size, concurrency, class_size
        self.recheck = recheck
        self._seen: set[str] = set()  # seats with a server at the last listing
        self._listed = float("-inf")

    def refill(self) -> int:
        """One round; returns how many servers it started."""
        students = read_students(self.students_file)
        taken = {entry["user"] for entry in students.values()}
        size = self.size
        if self.class_size:
            size = min(size, max(0, self.class_size - len(students)))
        if len(self._seen - taken) >= size and time.monotonic() - self._listed < self.recheck:
            return 0
        r = self.api.get("/users", params={"name_filter": SEAT_PREFIX, "limit": 1000})
        r.raise_for_status()
        self._listed = time.monotonic()
        # with their running or starting servers
        users = {u["name"]: u for u in r.json() if u["name"].startswith(SEAT_PREFIX)}
        self._seen = {n for n, u in users.items() if u["servers"].get("")}
        pending = sum(1 for u in users.values() if (u["servers"].get("") or {}).get("pending"))
        free = [n for n in self._seen if n not in taken]
        stopped = sorted(n for n in users if n not in taken and n not in self._seen)
        want = min(size - len(free), self.concurrency - pending)
        names: list[str] = []
        i = len(users)
        while len(names) < want:
            if stopped:
                names.append(stopped.pop(0))
                continue
            i += 1
            if seat_name(i) not in users:
                self.api.post(f"/users/{seat_name(i)}").raise_for_status()
                names.append(seat_name(i))
        with ThreadPoolExecutor(max(1, len(names))) as pool:
            started = [n for n, ok in zip(names, pool.map(self._start, names), strict=True) if ok]
        self._seen.update(started)
        return len(started)

    def _start(self, name: str) -> bool:
        # the hub answers when the server is up or after its slow_spawn_timeout (10 s):
        # in parallel, so the batch starts together
        r = self.api.post(f"/users/{name}/server")
        if r.status_code not in (201, 202):
            log.warning("starting %s: %s %s", name, r.status_code, r.text[:200])
        return r.status_code in (201, 202)


def main() -> None:
    p = argparse.ArgumentParser(description="Keep the masterclass pool's free seats running.")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--students-file", required=True)
    p.add_argument("--class-size", type=int, default=0, help="most students (0: no limit)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[gridhub-pool %(asctime)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    api = httpx.Client(
        base_url=os.environ["JUPYTERHUB_API_URL"],
        headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
        timeout=30,
    )
    pool = Pool(api, args.students_file, args.size, args.concurrency, args.class_size)
    try:  # the hub compiles its login page's templates now, not when the class arrives
        httpx.get(str(api.base_url.join("../login")), timeout=30)  # (as a browser: no token)
    except httpx.HTTPError:
        pass
    hub = os.getppid()
    while os.getppid() == hub:  # the hub died without stopping us (SIGKILL): stop too
        try:
            n = pool.refill()
            if n:
                log.info("started %d seat server(s)", n)
        except httpx.HTTPError as exc:  # the hub restarting: try again next round
            log.warning("hub API: %s", exc)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
