"""Masterclass load: N students log in with the access code in the same
moment, start their servers and run a cell; failures, p50/p95 seconds from
the login POST to the cell's result, hub / Traefik / servers CPU and memory.

    .venv/bin/python bench/masterclass_load.py --users 25 [--prestart] [--cell CODE] [--timeout 600]

Real processes: GridHub (hub_config/jupyterhub_config.py, masterclass mode,
the shipped start timeout unless --start-timeout) with the Traefik it starts
terminating HTTPS; servers started on click by the SharedAccountSpawner as an
unprivileged account. Each student is an httpx client (a thread): login form,
/hub/spawn, the spawn-pending progress stream, /user/<name>/lab, then the class
notebook's kernel as JupyterLab gets it when the student opens the notebook (a
session on its path: the server starts a kernel unless the notebook has one;
--notebook '' starts a bare kernel) and one execute_request on its websocket.
CPU seconds and peak RSS come from psutil samples every 0.5 s: the hub
process, its Traefik, and every process working in the run's homes (servers
and kernels). With --prestart the servers are started through the admin API
before the clock starts, as a warm pool sized by the teacher would have them.
Writes bench/results/masterclass_load-<time>.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import common
from processes import kill_processes_in

# the class notebook the student opens (notebooks/masterclass, copied into each home)
NOTEBOOK = "01-dimuon.ipynb"
CELL = "import numpy as np\nint((np.arange(1000) ** 2).sum())"
EXPECTED = "332833500"


def variant(args: argparse.Namespace) -> str:
    parts = [
        "servers prestarted" if args.prestart else "",
        "GridHub's warm pool" if args.pool else "",
        "no warm kernels" if args.no_warm else "",
        f"http_timeout {args.http_timeout} s" if args.http_timeout else "",
        "kernels over ipc" if args.kernel_ipc else "",
        f"servers at nice {args.server_nice}" if args.server_nice else "",
    ]
    return " (" + ", ".join(p for p in parts if p) + ")" if any(parts) else ""


def whatif(hub: common.HttpsHub, args: argparse.Namespace, runtime: Path) -> None:
    """Deployer-level config (the hub's extra config dir), not hub code."""
    lines = ["c = get_config()  # noqa"]
    if args.http_timeout:
        lines.append(f"c.Spawner.http_timeout = {args.http_timeout}")
    if args.kernel_ipc:
        # a unix socket path has at most 107 bytes: the kernels' sockets go in
        # a short runtime dir per user, not under the (long) bench home
        lines.append("c.Spawner.args = ['--KernelManager.transport=ipc']")
        lines.append(
            "c.Spawner.environment.update("
            f"{{'JUPYTER_RUNTIME_DIR': lambda spawner: '{runtime}/' + spawner.user.name}})"
        )
    (hub.extra / "70-bench-whatif.py").write_text("\n".join(lines) + "\n")


def wait_warm(hub: common.HttpsHub, notebook: str, n: int, timeout: float) -> float:
    """Seconds until ``n`` seats have a session on ``notebook`` (or ``timeout``)."""
    t0 = time.monotonic()
    with hub.admin() as admin:
        seats = [u["name"] for u in admin.get("/users").json() if u["name"].startswith("seat-")]
        tokens = {}
        for seat in seats:
            r = admin.post(f"/users/{seat}/tokens", json={"expires_in": 3600})
            tokens[seat] = r.json()["token"]
    warm: set[str] = set()
    while len(warm) < n and time.monotonic() - t0 < timeout:
        for seat in set(seats) - warm:
            r = common.httpx.get(
                f"{hub.public_url}/user/{seat}/api/sessions",
                headers={"Authorization": f"token {tokens[seat]}"},
                verify=str(common.TLS.cert),
                timeout=30,
            )
            if r.status_code == 200 and any(x["path"] == notebook for x in r.json()):
                warm.add(seat)
        time.sleep(1)
    print(f"{len(warm)} of {n} seats warm after {time.monotonic() - t0:.0f} s")
    return time.monotonic() - t0


def main() -> None:
    common.on_sigterm_unwind()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=25, help="students at once")
    ap.add_argument("--timeout", type=float, default=600, help="per student, seconds")
    ap.add_argument(
        "--start-timeout", type=int, default=120, help="GRIDHUB_START_TIMEOUT (shipped: 120)"
    )
    ap.add_argument(
        "--prestart",
        action="store_true",
        help="start the servers before the students log in (a warm pool's effect)",
    )
    ap.add_argument(
        "--pool",
        action="store_true",
        help="GridHub's warm pool of --users seats, filled before the students log in",
    )
    ap.add_argument(
        "--no-warm",
        action="store_true",
        help="no warm kernels (GRIDHUB_MASTERCLASS_WARM_NOTEBOOK=none): the cell's kernel"
        " starts when the student opens the notebook",
    )
    ap.add_argument(
        "--warm-timeout",
        type=float,
        default=300,
        help="--pool: wait this long at most for the seats' warm kernels (0: do not wait)",
    )
    ap.add_argument(
        "--http-timeout",
        type=int,
        help="what-if: Spawner.http_timeout (GridHub's default is 60 s)",
    )
    ap.add_argument(
        "--kernel-ipc",
        action="store_true",
        help="what-if: kernels talk over unix sockets, not loopback TCP ports",
    )
    ap.add_argument(
        "--server-nice",
        help="GRIDHUB_SERVER_NICE: servers' and kernels' CPU priority below the hub's"
        " (shipped: 10; 0 as before issue 22's priority)",
    )
    ap.add_argument(
        "--cell", default=CELL, help="code to run (the default cell's result is checked)"
    )
    ap.add_argument(
        "--notebook",
        default=NOTEBOOK,
        help="run the cell in this notebook's kernel, opened as JupyterLab opens it"
        " (a session on the path); '' starts a bare kernel instead",
    )
    args = ap.parse_args()
    if args.users < 1:
        ap.error("--users must be at least 1")
    expected = EXPECTED if args.cell == CELL else None

    common.bench_account()  # the servers run as it
    work = common.workdir("gridhub-bench-masterclass-")
    runtime = Path(tempfile.mkdtemp(prefix="jr"))  # short: kernels' ipc sockets (--kernel-ipc)
    runtime.chmod(0o1777)
    hub = None
    names = [f"student{i:02d}" for i in range(args.users)]
    load_before = common.loadavg()
    try:
        with common.server_python(None) as python:
            hub = common.gridhub(
                work / "hub",
                python,
                f"bench-masterclass-{args.users}",
                GRIDHUB_START_TIMEOUT=str(args.start_timeout),
                # the class is the bench's students: the pool stops at it
                GRIDHUB_MASTERCLASS_CLASS_SIZE=str(args.users),
                **({"GRIDHUB_MASTERCLASS_POOL_SIZE": str(args.users)} if args.pool else {}),
                **({"GRIDHUB_MASTERCLASS_WARM_NOTEBOOK": "none"} if args.no_warm else {}),
                **({"GRIDHUB_SERVER_NICE": args.server_nice} if args.server_nice else {}),
            )
            whatif(hub, args, runtime)
            hub.start(timeout=120)
            prestart = hub.prestart(names, args.timeout) if args.prestart else None
            if args.pool:
                prestart = hub.wait_ready(args.users, args.timeout * 2)
                if args.notebook and not args.no_warm:
                    # and their class notebook's kernel warm (a session on it: see
                    # gridhub.hub.warmkernel); none appears where warm kernels are off
                    prestart += wait_warm(hub, args.notebook, args.users, args.warm_timeout)
            groups = {
                "hub": hub.hub_only,
                "traefik": hub.traefik,
                "servers+kernels": lambda: common.working_in(work),
                "students (httpx)": lambda: common.tree(common.os.getpid())[:1],
            }
            t0 = time.monotonic()
            with common.Usage(groups) as usage:
                students = common.crowd(
                    hub, names, args.timeout, cell=args.cell, notebook=args.notebook or None
                )
            wall = time.monotonic() - t0
            load_during = common.loadavg()
            hub.stop_servers([s.get("seat", s["user"]) for s in students])
    finally:
        if hub is not None:
            hub.stop()
        kill_processes_in(work)  # this run's only: not the whole account's
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)

    for s in students:
        if expected and s.get("result") not in (None, expected):
            s["error"] = f"wrong result {s['result']!r}"
    failures = [s["error"] for s in students if "error" in s]
    # each step over the students who got that far (n says how many)
    steps = {
        k: common.summary(s[k] for s in students if k in s)
        for k in ("login", "server_ready", "cell_result")
    }
    resources = usage.report()
    common.print_table(
        f"{args.users} students at once{variant(args)}:"
        f" login to a cell's result ({len(failures)} failed, all done in {wall:.0f} s)",
        ["step (s after login POST)", "n", "p50", "p95", "max"],
        [[k, v["n"], v["p50"], v["p95"], v["max"]] for k, v in steps.items()],
    )
    # where a student's time goes: each kind of request, seconds to its response's headers
    kinds: dict[tuple[str, str], list[float]] = {}
    for s in students:
        for method, path, took in s.get("requests", []):
            kinds.setdefault((method, path), []).append(took)
    requests = {f"{m} {p}": common.summary(v) for (m, p), v in kinds.items()}
    common.print_table(
        "requests of the students (seconds to the response)",
        ["request", "n", "p50", "p95", "max"],
        [
            [k, v["n"], v["p50"], v["p95"], v["max"]]
            for k, v in sorted(requests.items(), key=lambda kv: -kv[1]["p50"] * kv[1]["n"])
        ],
    )
    common.print_resources_and_failures(resources, failures)
    each = {g: r["cpu_seconds"] / args.users for g, r in resources.items()}
    print(
        f"CPU-seconds per student after login: servers+kernels {each['servers+kernels']:.2f},"
        f" hub {each['hub']:.3f}, Traefik {each['traefik']:.3f}"
    )
    print(f"load average before {load_before}, at the end {load_during}")
    common.write_result(
        "masterclass_load",
        {
            "benchmark": "masterclass load: N students log in, start servers, run a cell",
            "args": vars(args),
            "variant": variant(args).strip(" ()") or "as shipped",
            "users": args.users,
            "failures": len(failures),
            "errors": failures,
            "wall_seconds": wall,
            "prestart_seconds": prestart,
            "seconds_after_login": steps,
            "resources": resources,
            "server_cpu_seconds_each": round(
                resources["servers+kernels"]["cpu_seconds"] / args.users, 2
            ),
            "hub_cpu_seconds_each": round(resources["hub"]["cpu_seconds"] / args.users, 3),
            "requests": requests,
            "load_average": {"before": load_before, "end": load_during},
            "machine": common.machine(),
            "versions": common.versions(
                "jupyterhub", "jupyter_server", "jupyterlab", "ipykernel", "httpx"
            ),
            "students": students,
        },
    )


if __name__ == "__main__":
    main()
